#!/usr/bin/python3
# Written for bpflab's tests in the style of Learning eBPF, chapter 2: inline C, a kprobe
# attached by hand, the trace pipe read until Ctrl-C, and no "attached" line of its own.
from bcc import BPF

program = r"""
int say_hi(void *ctx) {
    bpf_trace_printk("quiet hello\n");
    return 0;
}
"""

b = BPF(text=program)
b.attach_kprobe(event=b.get_syscall_fnname("execve"), fn_name="say_hi")
b.trace_print()
