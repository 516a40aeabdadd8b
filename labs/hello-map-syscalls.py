#!/usr/bin/env python3
"""hello-map-syscalls (exercise 2): per-UID counts from execve, openat and write.

Prints both parts every 2 s: the total of one program on three kprobes, and
the per-syscall counts of three programs sharing one map.
"""

from time import sleep

from bcc import BPF

import labkit

SYSCALLS = ["execve", "openat", "write"]


def main():
    b = BPF(src_file=labkit.source("hello-map-syscalls"))
    for name in SYSCALLS:
        event = b.get_syscall_fnname(name)
        b.attach_kprobe(event=event, fn_name="count_any")
        b.attach_kprobe(event=event, fn_name=f"count_{name}")
    labkit.attached("execve, openat, write (kprobes)")
    with labkit.until_stopped():
        while True:
            sleep(2)
            total = sorted((k.value, v.value) for k, v in b["total"].items())
            print("all (one program): " + "   ".join(f"ID {uid}: {count}" for uid, count in total), flush=True)
            rows = {}
            for key, value in b["by_syscall"].items():
                rows.setdefault(SYSCALLS[key.syscall], []).append(f"ID {key.uid}: {value.value}")
            for name in SYSCALLS:
                if name in rows:
                    print(f"  {name:<7} " + "   ".join(sorted(rows[name])), flush=True)


if __name__ == "__main__":
    main()
