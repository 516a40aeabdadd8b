#!/bin/bash
# BCC from source at a pinned tag, in phases so that a failure names its step.
# Shared by `invoke lab.provision` and the Ansible role; runs as root in the VM.
#   bcc-build.sh clone|build|record   with REPOSITORY, VERSION, LLVM_DIR, JOBS set
set -euo pipefail
source_dir=/opt/bpflab/bcc-$VERSION
case "$1" in
  clone)
    rm -rf "$source_dir.partial"
    git clone --quiet --depth 1 --branch "$VERSION" --recurse-submodules --shallow-submodules \
      "$REPOSITORY" "$source_dir.partial"
    rm -rf "$source_dir"
    mv "$source_dir.partial" "$source_dir" ;;
  build)
    mkdir -p "$source_dir/build"
    cd "$source_dir/build"
    cmake -DCMAKE_INSTALL_PREFIX=/usr -DPYTHON_CMD=python3 -DLLVM_DIR="$LLVM_DIR" ..
    make -j"$JOBS"
    make install
    ldconfig ;;
  record)
    # Every installed file, which an export packs. CMake lists its own; the
    # Python bindings go through setup.py, so they are found through python3.
    mkdir -p /var/lib/bpflab
    py=$(python3 -c 'import bcc, os; print(os.path.dirname(bcc.__file__))')
    { cat "$source_dir/build/install_manifest.txt"; echo
      find "$py" "$(dirname "$py")"/bcc-*info 2>/dev/null || true
    } | grep '^/' | sort -u > /var/lib/bpflab/bcc-files.txt ;;
  *)
    echo "usage: bcc-build.sh clone|build|record" >&2
    exit 2 ;;
esac
