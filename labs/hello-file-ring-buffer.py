#!/usr/bin/env python3
"""hello-file-ring-buffer: openat events (command, file) through a BPF ring buffer."""

from bcc import BPF

import labkit


def main():
    b = BPF(src_file=labkit.source("hello-file-ring-buffer"))

    def print_event(ctx, data, size):
        event = b["events"].event(data)
        print(
            f"{event.pid:>7} {event.command.decode(errors='replace'):<16} {event.filename.decode(errors='replace')}",
            flush=True,
        )

    b["events"].open_ring_buffer(print_event)
    labkit.attached("syscalls:sys_enter_openat (tracepoint), ring buffer")
    print(f"{'PID':>7} {'COMMAND':<16} FILE", flush=True)
    with labkit.until_stopped():
        while not labkit.stop_requested():
            b.ring_buffer_poll(timeout=labkit.POLL_MS)


if __name__ == "__main__":
    main()
