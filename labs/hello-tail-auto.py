#!/usr/bin/env python3
"""hello-tail-auto (exercise 4): hello-tail with RAW_TRACEPOINT_PROBE, no explicit attach.

The dispatcher is live as soon as BPF() loads it; it stays silent until the
program array is filled and the `ready` flag is set, so the start is clean.
"""

import ctypes

from bcc import BPF

import labkit


def main():
    b = BPF(src_file=labkit.source("hello-tail-auto"), cflags=labkit.tail_call_cflags())
    labkit.tail_call_setup(b)
    b["ready"][ctypes.c_int(0)] = ctypes.c_uint(1)
    labkit.attached("raw tracepoint sys_enter (RAW_TRACEPOINT_PROBE), tail calls by syscall")
    with labkit.until_stopped():
        labkit.print_trace_lines(b, labkit.syscall_names())


if __name__ == "__main__":
    main()
