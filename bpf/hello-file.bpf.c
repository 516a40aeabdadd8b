// hello-file: the openat tracepoint, attached automatically by its name.
// The command is read here, at the event: the name the trace pipe shows is
// looked up later and can be stale (the shell before it exec'd cat). Two %s in
// one bpf_trace_printk need kernel 5.13+; BCC warns about them but they work.
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    char command[16];
    char filename[64];
    bpf_get_current_comm(&command, sizeof(command));
    bpf_probe_read_user_str(&filename, sizeof(filename), args->filename);
    bpf_trace_printk("%s opened %s", command, filename);
    return 0;
}
