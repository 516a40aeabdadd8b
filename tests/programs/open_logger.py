#!/usr/bin/python3
# A learner's openat tracer: one line per file opened anywhere in the VM, with who opened it.
import os

from bcc import BPF

program = r"""
BPF_PERF_OUTPUT(events);

struct open_event { u32 pid; char comm[16]; char filename[64]; };

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct open_event event = {};
    event.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&event.comm, sizeof(event.comm));
    bpf_probe_read_user_str(&event.filename, sizeof(event.filename), args->filename);
    events.perf_submit(args, &event, sizeof(event));
    return 0;
}
"""

b = BPF(text=program)
print("tracing as pid", os.getpid(), flush=True)


def show(cpu, data, size):
    event = b["events"].event(data)
    print("open by", event.pid, event.comm.decode(), event.filename.decode(), flush=True)


b["events"].open_perf_buffer(show)
try:
    while True:
        b.perf_buffer_poll()
except KeyboardInterrupt:
    pass
