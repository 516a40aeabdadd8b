#!/usr/bin/env python3
"""hello-tail: tail calls by syscall number from a raw tracepoint dispatcher.

The program array is filled before the dispatcher is attached, so the first
lines are real events, not noise from an array that is still empty.
"""

from bcc import BPF

import labkit


def main():
    b = BPF(src_file=labkit.source("hello-tail"), cflags=labkit.tail_call_cflags())
    labkit.tail_call_setup(b)
    b.attach_raw_tracepoint(tp="sys_enter", fn_name="hello")
    labkit.attached("raw tracepoint sys_enter, tail calls by syscall")
    with labkit.until_stopped():
        labkit.print_trace_lines(b, labkit.syscall_names())


if __name__ == "__main__":
    main()
