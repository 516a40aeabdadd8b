#!/usr/bin/python3
# Writes trace-pipe lines on every execve but never reads them: they stay in the kernel's
# trace buffer after it stops, where the next reader would see them.
import time

from bcc import BPF

program = r"""
int leave_a_line(void *ctx) {
    bpf_trace_printk("stale line from an earlier run\n");
    return 0;
}
"""

b = BPF(text=program)
b.attach_kprobe(event=b.get_syscall_fnname("execve"), fn_name="leave_a_line")
while True:
    time.sleep(1)
