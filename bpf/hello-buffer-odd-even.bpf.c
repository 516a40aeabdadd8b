// Exercise 1: hello-buffer, with a different message for odd and even PIDs.
BPF_PERF_OUTPUT(output);

struct data_t {
    int pid;
    int uid;
    char command[16];
    char message[12];
};

int hello(void *ctx) {
    struct data_t data = {};
    char even[12] = "Even: hi";
    char odd[12] = "Odd: hello";

    data.pid = bpf_get_current_pid_tgid() >> 32;
    data.uid = bpf_get_current_uid_gid() & 0xFFFFFFFF;
    bpf_get_current_comm(&data.command, sizeof(data.command));
    if (data.pid % 2 == 0)
        bpf_probe_read_kernel(&data.message, sizeof(data.message), even);
    else
        bpf_probe_read_kernel(&data.message, sizeof(data.message), odd);
    output.perf_submit(ctx, &data, sizeof(data));
    return 0;
}
