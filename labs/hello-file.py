#!/usr/bin/env python3
"""hello-file: which command opens which file (tracepoint syscalls:sys_enter_openat)."""

from bcc import BPF

import labkit


def main():
    b = BPF(src_file=labkit.source("hello-file"))  # TRACEPOINT_PROBE attaches itself
    labkit.attached("syscalls:sys_enter_openat (tracepoint)")
    print(f"{'PID':>7}  COMMAND opened FILE", flush=True)
    with labkit.until_stopped():
        while True:
            _task, pid, _cpu, _flags, _ts, message = b.trace_fields()
            print(f"{pid:>7}  {message.decode(errors='replace')}", flush=True)


if __name__ == "__main__":
    main()
