#!/bin/bash
# The running kernel's headers are gone from the package sources (a point release or a
# security update replaced the kernel, or it came from elsewhere, such as backports). Names
# the distribution's current kernel, the newest one whose headers the sources have, and the
# running kernel's package when it would still boot first (it is the newer one) and so must go.
# Shared by `invoke lab.provision` and the Ansible role; needs a fresh `apt-get update`.
#   prints target=KERNEL_RELEASE and retire=PACKAGE (empty: nothing to remove)
set -euo pipefail
running=$(uname -r)
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
target=""
# Each flavour's meta package depends on its kernel image; every version of it apt knows is looked at.
for meta in "linux-image-$(dpkg --print-architecture)" linux-image-virtual linux-image-generic; do
  { apt-cache show "$meta" 2>/dev/null || true; } | sed -n 's/^Depends: linux-image-\([^ ,]*\).*/\1/p'
done | sort -uV | while read -r kernel; do
  headers=$(candidate "linux-headers-$kernel")
  if [ -n "$headers" ] && [ "$headers" != "(none)" ]; then echo "$kernel"; fi
done > /tmp/bpflab-kernels
target=$(tail -n 1 /tmp/bpflab-kernels)
rm -f /tmp/bpflab-kernels
if [ -z "$target" ]; then
  echo "no kernel in this machine's package sources has its headers there" >&2
  exit 3
fi
retire=""
if [ "$target" != "$running" ] && [ "$(printf '%s\n' "$running" "$target" | sort -V | tail -n 1)" = "$running" ]; then
  retire=$(dpkg -S "/boot/vmlinuz-$running" 2>/dev/null | cut -d: -f1 || true)
fi
echo "target=$target"
echo "retire=$retire"
