#!/usr/bin/python3
# A learner's sys_enter tracer: every syscall in the VM counted by the command that made it.
from time import sleep

from bcc import BPF

program = r"""
struct key { char comm[16]; };
BPF_HASH(calls, struct key, u64);

RAW_TRACEPOINT_PROBE(sys_enter) {
    struct key key = {};
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    calls.increment(key);
    return 0;
}
"""

b = BPF(text=program)
try:
    while True:
        sleep(1)
        counts = sorted(b["calls"].items(), key=lambda item: -item[1].value)
        print("   ".join(f"{key.comm.decode()}: {value.value}" for key, value in counts), flush=True)
except KeyboardInterrupt:
    pass
