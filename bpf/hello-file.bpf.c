// hello-file: the openat tracepoint, attached automatically by its name.
// The trace pipe already records the command (task name) with every line, so
// the program only writes the file name.
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    char filename[64];
    bpf_probe_read_user_str(&filename, sizeof(filename), args->filename);
    bpf_trace_printk("opened %s", filename);
    return 0;
}
