#!/usr/bin/env python3
"""hello-buffer-odd-even (exercise 1): hello-buffer with one message for even PIDs, another for odd."""

from bcc import BPF

import labkit


def main():
    b = BPF(src_file=labkit.source("hello-buffer-odd-even"))
    b.attach_kprobe(event=b.get_syscall_fnname("execve"), fn_name="hello")

    def print_event(cpu, data, size):
        event = b["output"].event(data)
        print(
            f"{event.pid:>7} {event.uid:>6} {event.command.decode(errors='replace'):<16} "
            f"{event.message.decode(errors='replace')}",
            flush=True,
        )

    b["output"].open_perf_buffer(print_event)
    labkit.attached("execve (kprobe), perf buffer")
    print(f"{'PID':>7} {'UID':>6} {'COMMAND':<16} MESSAGE", flush=True)
    with labkit.until_stopped():
        while not labkit.stop_requested():
            b.perf_buffer_poll(timeout=labkit.POLL_MS)


if __name__ == "__main__":
    main()
