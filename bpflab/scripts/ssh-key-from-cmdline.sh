#!/bin/sh
# Run by sshd's unit before it starts. bpflab's libvirt engine boots the VM with its SSH key on the
# kernel command line (bpflab.ssh_key=TYPE:BASE64); that key becomes the vagrant user's only
# authorized key, so no shared key ever opens the VM and no cloud-init is needed. Without the
# option (the Vagrant engine, which swaps the key itself) this does nothing.
set -e
key=
for word in $(cat /proc/cmdline); do
    case "$word" in bpflab.ssh_key=*) key=${word#bpflab.ssh_key=} ;; esac
done
[ -n "$key" ] || exit 0
umask 077
mkdir -p /home/vagrant/.ssh
printf '%s %s\n' "${key%%:*}" "${key#*:}" > /home/vagrant/.ssh/authorized_keys
chown -R vagrant:vagrant /home/vagrant/.ssh
