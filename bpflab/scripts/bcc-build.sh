#!/bin/bash
# BCC from source at a pinned tag, in phases so that a failure names its step.
# Shared by `invoke lab.provision` and the Ansible role; runs as root in the VM.
#   bcc-build.sh clone|build|record   with REPOSITORY, VERSION, LLVM_DIR, JOBS set
# A build on the host clones outside its build root: SOURCE_DIR then names the folder.
set -euo pipefail
source_dir=${SOURCE_DIR:-/opt/bpflab/bcc-$VERSION}
files=/var/lib/bpflab/bcc-files.txt
case "$1" in
  clone)
    # A finished clone (moved into place only when whole) is kept, so a build that was
    # interrupted resumes where make stopped when provisioning runs again.
    if [ "$(git -C "$source_dir" config remote.origin.url 2>/dev/null)" = "$REPOSITORY" ]; then exit 0; fi
    rm -rf "$source_dir.partial"
    git clone --quiet --depth 1 --branch "$VERSION" --recurse-submodules --shallow-submodules \
      "$REPOSITORY" "$source_dir.partial"
    rm -rf "$source_dir"
    mv "$source_dir.partial" "$source_dir" ;;
  build)
    mkdir -p "$source_dir/build"
    cd "$source_dir/build"
    # What a lab machine needs: the library, the Python bindings and the tools (no tests, no examples).
    cmake -DCMAKE_INSTALL_PREFIX=/usr -DPYTHON_CMD=python3 -DLLVM_DIR="$LLVM_DIR" \
      -DENABLE_TESTS=OFF -DENABLE_EXAMPLES=OFF ..
    make -j"$JOBS"
    # An earlier build's files go first (folders once empty, deepest first), so a new
    # version leaves none of them behind.
    if [ -f "$files" ]; then
      sort -r "$files" | while read -r f; do
        if [ -d "$f" ]; then rmdir "$f" 2>/dev/null || true; else rm -f "$f"; fi
      done
    fi
    make install
    ldconfig ;;
  record)
    # Every installed file, which an export packs. CMake lists its own. BCC's setup.py
    # lists the Python bindings it installed (an egg, file or folder, which Python finds
    # through easy-install.pth); a project without that list is asked through python3.
    mkdir -p /var/lib/bpflab
    python_list=$source_dir/build/install_manifest_python_bcc.txt
    { cat "$source_dir/build/install_manifest.txt"; echo
      if [ -s "$python_list" ]; then
        while read -r f; do
          find "$f"
          if [ -f "$(dirname "$f")/easy-install.pth" ]; then echo "$(dirname "$f")/easy-install.pth"; fi
        done < "$python_list"
      else
        py=$(python3 -c 'import bcc, os; print(os.path.dirname(bcc.__file__))')
        find "$py" "$(dirname "$py")"/bcc-*info 2>/dev/null || true
      fi
    } | grep '^/' | sort -u > "$files" ;;
  *)
    echo "usage: bcc-build.sh clone|build|record" >&2
    exit 2 ;;
esac
