#!/usr/bin/env python3
"""hello: a kprobe on execve prints "Hello World!" through the trace pipe.

Learning eBPF, chapter 2. Run it, then start any program in the VM.
"""

from bcc import BPF

import labkit


def main():
    b = BPF(src_file=labkit.source("hello"))
    b.attach_kprobe(event=b.get_syscall_fnname("execve"), fn_name="hello")
    labkit.attached("execve (kprobe)")
    with labkit.until_stopped():
        while True:
            task, pid, _cpu, _flags, _ts, message = b.trace_fields()
            print(f"{task.decode(errors='replace'):<16} {pid:>7}  {message.decode(errors='replace')}", flush=True)


if __name__ == "__main__":
    main()
