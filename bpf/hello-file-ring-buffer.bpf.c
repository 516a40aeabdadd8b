// hello-file-ring-buffer: openat events through a ring buffer (kernel >= 5.8).
BPF_RINGBUF_OUTPUT(events, 8);

struct event_t {
    u32 pid;
    char command[16];
    char filename[128];
};

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct event_t event = {};
    event.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&event.command, sizeof(event.command));
    bpf_probe_read_user_str(&event.filename, sizeof(event.filename), args->filename);
    events.ringbuf_output(&event, sizeof(event), 0);
    return 0;
}
