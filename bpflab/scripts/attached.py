"""Says when a lab program has attached a BPF program, without showing up in what it traces.

The supervisor starts this before the program (so its own start, which opens files, is over
by then) and writes "PROGRAM_PID WATCHER_PID" to its stdin. It then asks the kernel about the
program's descriptors with readlink and bpf(BPF_TASK_FD_QUERY) alone: no file opened, no
process started, so openat and execve tracers see none of it. On a kprobe, tracepoint or
uprobe perf event with a BPF program, or on any BPF link (raw tracepoints, fentry, multi
kprobes), it prints "@@bpflab-attached", sends the watcher SIGUSR1 and kills itself, so no
exit path's system calls follow. Run as root: python3 -c "$ATTACHED" ALLOWANCE_SECONDS.
"""

import ctypes
import errno
import os
import signal
import sys
import time

BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
BPF_TASK_FD_QUERY = 20
libc = ctypes.CDLL(None, use_errno=True)


class TaskFdQuery(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("buf_len", ctypes.c_uint32),
        ("buf", ctypes.c_uint64),
        ("prog_id", ctypes.c_uint32),
        ("fd_type", ctypes.c_uint32),
        ("probe_offset", ctypes.c_uint64),
        ("probe_addr", ctypes.c_uint64),
    ]


def runs_bpf(pid: int, fd: int) -> bool:
    """A perf event with a BPF program on it (a perf buffer has none)."""
    query = TaskFdQuery(pid=pid, fd=fd)
    return libc.syscall(BPF_SYSCALL, BPF_TASK_FD_QUERY, ctypes.byref(query), ctypes.sizeof(query)) == 0


def kind(pid: int, fd: int) -> str | None:
    """What descriptor `fd` of `pid` is ("anon_inode:bpf_link", ...), None when it is not open."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError as error:
        if error.errno == errno.ENOENT:
            return None
        raise


class Descriptors:
    """The program's descriptors as far as seen: a sweep looks first where attaching happens
    (perf events seen without a program, then numbers above the highest seen), and at the
    holes below only every few sweeps, so that the sweep that finds it is a few calls."""

    def __init__(self, pid: int):
        self.pid = pid
        self.perf_events: set[int] = set()
        self.seen: dict[int, str] = {}
        self.sweeps = 0

    def attached(self, fd: int) -> bool:
        found = kind(self.pid, fd)
        if found is None:
            self.seen.pop(fd, None)
            return False
        self.seen[fd] = found
        if "bpf_link" in found or "bpf-raw-tracepoint" in found:
            return True
        if "[perf_event]" in found:
            self.perf_events.add(fd)
            return runs_bpf(self.pid, fd)
        return False

    def sweep(self) -> bool:
        self.sweeps += 1
        if any(runs_bpf(self.pid, fd) for fd in sorted(self.perf_events)):
            return True
        fd, missing = max(self.seen, default=2) + 1, 0
        while missing < 2:
            if self.attached(fd):
                return True
            missing = 0 if fd in self.seen else missing + 1
            fd += 1
        if self.sweeps % 5 == 1:
            highest = max(self.seen, default=0)
            return any(self.attached(fd) for fd in range(highest) if fd not in self.seen)
        return False


def main() -> None:
    allowance = float(sys.argv[1])
    words = sys.stdin.readline().split()
    if len(words) != 2 or BPF_SYSCALL is None:
        return
    program, watcher = map(int, words)
    descriptors = Descriptors(program)
    deadline = time.monotonic() + allowance
    while time.monotonic() < deadline:
        try:
            os.kill(program, 0)
            if descriptors.sweep():
                os.write(1, b"@@bpflab-attached\n")
                os.kill(watcher, signal.SIGUSR1)
                os.kill(os.getpid(), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return  # the program is gone
        time.sleep(0.2)


main()
