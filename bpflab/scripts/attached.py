"""The watcher of a lab program that may never say it is attached (supervisor.sh's WATCH=kernel),
made to stay out of what that program traces.

The supervisor starts this just after the program, whose compile takes seconds, so that its own
start (which opens files) is over long before the program attaches, and writes the program's PID
to its stdin. It then asks the kernel about the
program's descriptors with readlink and bpf(BPF_TASK_FD_QUERY) alone: no file opened, no
process started. On a kprobe, tracepoint or uprobe perf event with a BPF program on it, or
on any BPF link (raw tracepoints, fentry, multi kprobes), it prints "@@bpflab-attached"
(SIGUSR1 tells it the same: the host saw the program's own line), then times --duration in
one sleep and sends the supervisor SIGUSR1. No attach within the allowance: it prints
"@@bpflab-never-attached" and sends SIGUSR2. The supervisor ends it with SIGTERM, which
leaves no exit path to trace. Run as root:
python3 -c "$ATTACHED" ALLOWANCE_SECONDS DURATION_SECONDS SUPERVISOR_PID
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
    """The program's descriptors as far as seen. A sweep reads again only the numbers that may
    have changed (free ones, and perf events without a program yet), every fifth sweep all."""

    def __init__(self, pid: int):
        self.pid = pid
        self.kinds: dict[int, str] = {}  # open descriptors: what they are
        self.attached: set[int] = set()  # those that hold a BPF program on a probe
        self.sweeps = 0

    def look(self, fd: int) -> None:
        found = kind(self.pid, fd)
        self.attached.discard(fd)
        if found is None:
            self.kinds.pop(fd, None)
            return
        self.kinds[fd] = found
        if "bpf_link" in found or "bpf-raw-tracepoint" in found or ("[perf_event]" in found and runs_bpf(self.pid, fd)):
            self.attached.add(fd)

    def unsettled(self, fd: int) -> bool:
        return fd not in self.kinds or ("[perf_event]" in self.kinds[fd] and fd not in self.attached)

    def sweep(self) -> int:
        """How many probes the program holds BPF programs on."""
        self.sweeps += 1
        everything, highest = self.sweeps % 5 == 1, max(self.kinds, default=2)
        fd = misses = 0
        while fd <= highest or misses < 3:
            if everything or self.unsettled(fd):
                self.look(fd)
            misses = 0 if fd in self.kinds else misses + 1
            fd += 1
        return len(self.attached)


class Told(Exception):
    """SIGUSR1: the program said itself that it is attached."""


def told(signum, frame):
    raise Told


def watch(program: int, allowance: float) -> bool:
    """Whether the program attached within the allowance (False also when it is gone)."""
    descriptors, deadline, before = Descriptors(program), time.monotonic() + allowance, 0
    try:
        while time.monotonic() < deadline:
            os.kill(program, 0)
            # Attached once a sweep finds the same probes as the one before: a program that
            # attaches several is attached when it has done so to all.
            if (probes := descriptors.sweep()) and probes == before:
                os.write(1, b"@@bpflab-attached\n")
                return True
            before = probes
            time.sleep(0.3 if probes else 0.2)
    except Told:
        return True
    except (ProcessLookupError, PermissionError):
        return False
    os.write(1, b"@@bpflab-never-attached\n")
    raise TimeoutError


def main() -> None:
    libc.prctl(15, b"bpflab-attach")  # PR_SET_NAME: should a call of it ever show in a trace, it is named
    allowance, duration, supervisor = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    signal.signal(signal.SIGUSR1, told)
    words = sys.stdin.readline().split()
    if len(words) != 1 or BPF_SYSCALL is None:
        return
    try:
        attached = watch(int(words[0]), allowance)
    except TimeoutError:
        os.kill(supervisor, signal.SIGUSR2)
        return
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if attached and duration:
        time.sleep(duration)  # one call, and nothing more of this process until it is over
        os.kill(supervisor, signal.SIGUSR1)
    signal.pause()


if __name__ == "__main__":
    main()
