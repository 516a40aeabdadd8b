"""Shared helpers for the lab programs. Runs inside the VM, next to BCC.

Kept out of each lab so the labs read like the book's: the C file to load, the
"attached" line the runner waits for, a clean exit on Ctrl-C or SIGTERM, and
syscall numbers resolved for the VM's own architecture.
"""

import contextlib
import glob
import os
import re
import signal
import sys

HERE = os.path.dirname(os.path.abspath(sys.argv[0] or __file__))
READY = "Tracing... Hit Ctrl-C to end."


def source(name):
    """Path of the kernel side: beside the program (a learner's copy), else ../bpf/."""
    for candidate in (os.path.join(HERE, f"{name}.bpf.c"), os.path.join(HERE, "..", "bpf", f"{name}.bpf.c")):
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    sys.exit(f"{name}.bpf.c not found beside {HERE} or in ../bpf/")


def attached(what):
    """Tell the learner (and bpflab's runner, which then fires the trigger) that probes are live."""
    print(f"Attached to {what}. {READY}", flush=True)


@contextlib.contextmanager
def until_stopped():
    """Run the body until Ctrl-C or SIGTERM; exit 0 without a traceback either way."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        print("Detaching.", flush=True)


NR_DEFINE = re.compile(r"#define\s+__NR(?:3264)?_(\w+)\s+(\d+)\b")
HEADER_GLOBS = [
    "/usr/include/asm/unistd_64.h", "/usr/include/*-linux-gnu/asm/unistd_64.h",
    "/lib/modules/{release}/build/arch/x86/include/generated/uapi/asm/unistd_64.h",
    "/usr/include/asm-generic/unistd.h", "/lib/modules/{release}/build/include/uapi/asm-generic/unistd.h",
]


def syscall_numbers():
    """{name: number} for this machine's architecture, read from its kernel headers.

    x86_64 has its own table (execve 59); arm64 uses the generic one (execve 221).
    """
    release = os.uname().release
    generic = os.uname().machine not in ("x86_64",)
    for pattern in HEADER_GLOBS:
        if ("asm-generic" in pattern) != generic:
            continue
        for path in glob.glob(pattern.format(release=release)):
            with open(path) as header:
                table = {name: int(number) for name, number in NR_DEFINE.findall(header.read())}
            if "execve" in table:
                return table
    sys.exit("No syscall table found: install the kernel headers (invoke lab.provision).")


def syscall_names():
    return {number: name for name, number in syscall_numbers().items()}
