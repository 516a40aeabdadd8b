#!/usr/bin/python3
# Prints only when an event happens (a sync() call, rare on an idle VM): silent for minutes.
# Handles Ctrl-C and exits 0, as a well-behaved tool does.
from bcc import BPF

program = r"""
BPF_PERF_OUTPUT(events);

int on_sync(void *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    events.perf_submit(ctx, &pid, sizeof(pid));
    return 0;
}
"""

b = BPF(text=program)
b.attach_kprobe(event=b.get_syscall_fnname("sync"), fn_name="on_sync")


def show(cpu, data, size):
    print("sync called")


b["events"].open_perf_buffer(show)
try:
    while True:
        b.perf_buffer_poll()
except KeyboardInterrupt:
    pass
