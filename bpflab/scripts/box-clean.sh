# Make a provisioned lab VM fit to be copied to every seat, then power it off:
# record what it is ($DESCRIPTION), drop what is this machine's own or can be
# fetched again (apt lists and archives, logs, host keys, machine-id), free the
# deleted blocks in the disk image (fstrim), and stop writing.
set -eu
mkdir -p /etc/bpflab
printf '%s\n' "$DESCRIPTION" > /etc/bpflab/box.json
apt-get clean
rm -rf /var/lib/apt/lists/*
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -not -path '/var/log/journal/*' -exec truncate -s 0 {} +
find /tmp /var/tmp -mindepth 1 -maxdepth 1 -not -name 'systemd-private-*' -exec rm -rf {} +
rm -f /root/.bash_history /home/vagrant/.bash_history
rm -f /etc/ssh/ssh_host_* /var/lib/dbus/machine-id
: > /etc/machine-id
fstrim --all >/dev/null 2>&1 || true
sync
systemctl poweroff --no-block
