#!/usr/bin/env python3
"""syscall-count (exercise 5): the busiest syscalls system-wide, by name, every 2 s."""

import argparse
from time import sleep

from bcc import BPF

import labkit


def main():
    parser = argparse.ArgumentParser(description=__doc__, epilog="example: syscall-count.py --top 5")
    parser.add_argument("--top", type=int, default=10, help="how many syscalls to show (default 10)")
    options = parser.parse_args()
    names = labkit.syscall_names()
    b = BPF(src_file=labkit.source("syscall-count"))
    labkit.attached("raw tracepoint sys_enter")
    counts = b["counts"]
    with labkit.until_stopped():
        while True:
            sleep(2)
            busiest = sorted(counts.items(), key=lambda kv: -kv[1].value)[: options.top]
            counts.clear()
            print("   ".join(f"{names.get(k.value, '?')} ({k.value}): {v.value}" for k, v in busiest), flush=True)


if __name__ == "__main__":
    main()
