#!/usr/bin/env bash
# Create .venv with bpflab, Invoke, Fabric and the test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "bpflab needs Python 3.10 or newer as python3 (Debian 12 and Ubuntu 22.04 have it)." >&2
  exit 1
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "Installing python3-venv ..."
  as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "bpflab is installed in .venv: run tasks with .venv/bin/invoke (or activate .venv first)."
