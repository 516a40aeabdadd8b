// Exercise 3: every syscall, counted per user ID, from raw tracepoint sys_enter.
BPF_HASH(counter_table, u32, u64);

RAW_TRACEPOINT_PROBE(sys_enter) {
    u32 uid = bpf_get_current_uid_gid() & 0xFFFFFFFF;
    counter_table.increment(uid);
    return 0;
}
