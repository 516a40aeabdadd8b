#!/usr/bin/env python3
"""hello-map: counts execve calls per user ID in a BPF hash map, printed every 2 s."""

from time import sleep

from bcc import BPF

import labkit


def main():
    b = BPF(src_file=labkit.source("hello-map"))
    b.attach_kprobe(event=b.get_syscall_fnname("execve"), fn_name="hello")
    labkit.attached("execve (kprobe)")
    with labkit.until_stopped():
        while True:
            sleep(2)
            counts = b["counter_table"].items()
            if counts:
                print("   ".join(f"ID {key.value}: {value.value}" for key, value in counts), flush=True)


if __name__ == "__main__":
    main()
