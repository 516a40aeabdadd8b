#!/usr/bin/env python3
"""syscall-count-by-uid (exercise 3): all syscalls per user ID in the last 2 s."""

from time import sleep

from bcc import BPF

import labkit


def main():
    b = BPF(src_file=labkit.source("syscall-count-by-uid"))  # RAW_TRACEPOINT_PROBE attaches itself
    labkit.attached("raw tracepoint sys_enter")
    counts = b["counter_table"]
    with labkit.until_stopped():
        while True:
            sleep(2)
            busiest = sorted(counts.items(), key=lambda kv: -kv[1].value)
            line = "   ".join(f"ID {k.value}: {v.value}" for k, v in busiest)
            counts.clear()
            print(line, flush=True)


if __name__ == "__main__":
    main()
