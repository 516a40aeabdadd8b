// hello-file: the openat tracepoint, attached automatically by its name.
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    char command[16];
    char filename[64];
    bpf_get_current_comm(&command, sizeof(command));
    bpf_probe_read_user_str(&filename, sizeof(filename), args->filename);
    bpf_trace_printk("%s opened %s", command, filename);
    return 0;
}
