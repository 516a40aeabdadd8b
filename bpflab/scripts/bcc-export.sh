#!/bin/bash
# Packs the BCC files listed in /var/lib/bpflab/bcc-files.txt into /tmp/bpflab-bcc.tar.gz
# and names the Debian packages that own the shared libraries they link against:
# what a fresh VM must install to run them. Runs as root in the VM.
set -euo pipefail
files=/var/lib/bpflab/bcc-files.txt
sed 's|^/||' "$files" > /tmp/bpflab-bcc.list
tar -C / --no-recursion -czf /tmp/bpflab-bcc.tar.gz -T /tmp/bpflab-bcc.list
chmod 644 /tmp/bpflab-bcc.tar.gz
libraries=$(while read -r f; do
  if [ -f "$f" ]; then ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' || true; fi
done < "$files" | sort -u)
owners=$(for l in $libraries; do
  grep -qxF "$l" "$files" && continue
  dpkg -S "$l" 2>/dev/null || dpkg -S "$(readlink -f "$l")" 2>/dev/null || dpkg -S "${l#/usr}" 2>/dev/null || true
done | sed 's/: .*//' | tr ',' '\n' | sed 's/^ *//; s/:.*//' | sort -u | tr '\n' ' ')
echo "runtime_packages=$owners"
echo "sha256=$(sha256sum /tmp/bpflab-bcc.tar.gz | cut -d' ' -f1)"
