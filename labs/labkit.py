"""Shared helpers for the lab programs. Runs inside the VM, next to BCC.

Kept out of each lab so the labs read like the book's: the C file to load, the
"attached" line the runner waits for, a clean exit on Ctrl-C or SIGTERM, and
syscall numbers resolved for the VM's own architecture.
"""

import contextlib
import ctypes
import glob
import os
import re
import signal
import sys

HERE = os.path.dirname(os.path.abspath(sys.argv[0] or __file__))
READY = "Tracing... Hit Ctrl-C to end."
# Buffer polls return to Python this often, so Ctrl-C and SIGTERM are handled
# even when no event arrives (a poll without timeout blocks inside C).
POLL_MS = 200


def source(name):
    """Path of the kernel side: beside the program (a learner's copy), else ../bpf/."""
    for candidate in (os.path.join(HERE, f"{name}.bpf.c"), os.path.join(HERE, "..", "bpf", f"{name}.bpf.c")):
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    sys.exit(f"{name}.bpf.c not found beside {HERE} or in ../bpf/")


def attached(what):
    """Tell the learner (and bpflab's runner, which then fires the trigger) that probes are live."""
    print(f"Attached to {what}. {READY}", flush=True)


_stop_requested = False


def stop_requested():
    """True once Ctrl-C or SIGTERM arrived. Buffer loops check it: the
    KeyboardInterrupt is lost when the signal lands inside a ctypes callback
    (ctypes prints and ignores exceptions raised there)."""
    return _stop_requested


@contextlib.contextmanager
def until_stopped():
    """Run the body until Ctrl-C or SIGTERM; exit 0 without a traceback either way."""

    def interrupt(signum, frame):
        global _stop_requested
        _stop_requested = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        yield
    print("Detaching.", flush=True)


NR_DEFINE = re.compile(r"#define\s+__NR(?:3264)?_(\w+)\s+(\d+)\b")
# Where each architecture's syscall table is, first found first. arm64 has the generic table:
# linux-libc-dev's copy, or the kernel headers' (Debian keeps it in the -common package that the
# `source` link points to); kernels from 6.11 on also generate arm64's own unistd_64.h.
HEADER_GLOBS = {
    "x86_64": [
        "/usr/include/asm/unistd_64.h",
        "/usr/include/*-linux-gnu/asm/unistd_64.h",
        "/lib/modules/{release}/build/arch/x86/include/generated/uapi/asm/unistd_64.h",
    ],
    "aarch64": [
        "/usr/include/asm-generic/unistd.h",
        "/lib/modules/{release}/build/arch/arm64/include/generated/uapi/asm/unistd_64.h",
        "/lib/modules/{release}/build/include/uapi/asm-generic/unistd.h",
        "/lib/modules/{release}/source/include/uapi/asm-generic/unistd.h",
    ],
}


def syscall_numbers():
    """{name: number} for this machine's architecture, read from its kernel headers.

    x86_64 has its own table (execve 59); arm64 uses the generic one (execve 221).
    """
    uname = os.uname()
    for pattern in HEADER_GLOBS.get(uname.machine, []):
        for path in glob.glob(pattern.format(release=uname.release)):
            with open(path) as header:
                table = {name: int(number) for name, number in NR_DEFINE.findall(header.read())}
            if "execve" in table:
                return table
    sys.exit(f"No {uname.machine} syscall table found: install the kernel headers (invoke lab.provision).")


def syscall_names():
    return {number: name for name, number in syscall_numbers().items()}


# Syscalls that hello-tail maps to a program that does nothing: the ones every
# process makes all the time, which would drown the interesting lines.
QUIET_SYSCALLS = [
    "read",
    "write",
    "close",
    "fstat",
    "newfstatat",
    "fstatat",
    "lseek",
    "mmap",
    "mprotect",
    "munmap",
    "brk",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "ioctl",
    "pread64",
    "writev",
    "readv",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_wait",
    "epoll_pwait",
    "futex",
    "nanosleep",
    "clock_nanosleep",
    "getpid",
    "gettid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getppid",
    "getrandom",
    "openat",
    "fcntl",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "wait4",
    "clock_gettime",
    "sched_yield",
    "statx",
    "access",
    "faccessat",
    "faccessat2",
    "readlinkat",
    "getdents64",
    "prlimit64",
    "set_robust_list",
    "rseq",
    "arch_prctl",
    "set_tid_address",
    "dup2",
    "dup3",
    "pipe2",
    "exit_group",
    "kill",
    "tgkill",
    "timerfd_settime",
    "epoll_ctl",
    "madvise",
    "uname",
    "sysinfo",
    "getcwd",
    "chdir",
    "umask",
    "socket",
    "connect",
    "setsockopt",
    "getsockopt",
    "bind",
    "listen",
    "accept4",
    "shutdown",
    "fadvise64",
    "clone",
    "clone3",
    "vfork",
    "fork",
    "inotify_add_watch",
    "capget",
    "setresuid",
    "setresgid",
    "prctl",
]
TIMER_SYSCALLS = ["timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete"]


def tail_call_setup(b, program_array="syscall"):
    """Fill hello-tail's program array by syscall name, for this architecture."""
    numbers = syscall_numbers()
    table = b.get_table(program_array)
    kind = type(b).RAW_TRACEPOINT
    exec_fn = b.load_func("hello_exec", kind)
    timer_fn = b.load_func("hello_timer", kind)
    ignore_fn = b.load_func("ignore_opcode", kind)
    table[ctypes.c_int(numbers["execve"])] = ctypes.c_int(exec_fn.fd)
    for name in TIMER_SYSCALLS:
        table[ctypes.c_int(numbers[name])] = ctypes.c_int(timer_fn.fd)
    for name in QUIET_SYSCALLS:
        if name in numbers and numbers[name] < 500:
            table[ctypes.c_int(numbers[name])] = ctypes.c_int(ignore_fn.fd)


def tail_call_cflags():
    numbers = syscall_numbers()
    return [f"-DNR_{name}={numbers[name]}" for name in ("timer_create", "timer_delete")]


def readable(message, names):
    """'Another syscall: 39' -> 'Another syscall: 39 (getpid)'."""
    if message.startswith("Another syscall: "):
        number = int(message.rsplit(" ", 1)[1])
        return f"{message} ({names.get(number, '?')})"
    return message


def print_trace_lines(b, names):
    while True:
        task, pid, _cpu, _flags, _ts, message = b.trace_fields()
        text = readable(message.decode(errors="replace"), names)
        print(f"{task.decode(errors='replace'):<16} {pid:>7}  {text}", flush=True)
