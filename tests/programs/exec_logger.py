#!/usr/bin/python3
# One line per program started anywhere in the VM, with the command that started it.
from bcc import BPF

program = r"""
BPF_PERF_OUTPUT(events);

struct exec_event { char comm[16]; };

int on_exec(void *ctx) {
    struct exec_event event = {};
    bpf_get_current_comm(&event.comm, sizeof(event.comm));
    events.perf_submit(ctx, &event, sizeof(event));
    return 0;
}
"""

b = BPF(text=program)
b.attach_kprobe(event=b.get_syscall_fnname("execve"), fn_name="on_exec")


def show(cpu, data, size):
    print("exec by", b["events"].event(data).comm.decode())


b["events"].open_perf_buffer(show)
try:
    while True:
        b.perf_buffer_poll()
except KeyboardInterrupt:
    pass
