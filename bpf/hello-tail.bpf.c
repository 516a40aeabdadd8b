// hello-tail: a dispatcher on raw tracepoint sys_enter tail-calls one program
// per syscall number. The numbers (NR_*) come from user space, resolved for
// this machine's architecture.
BPF_PROG_ARRAY(syscall, 500);

int hello(struct bpf_raw_tracepoint_args *ctx) {
    int opcode = ctx->args[1];
    syscall.call(ctx, opcode);
    // Only reached when no program is mapped for this syscall.
    bpf_trace_printk("Another syscall: %d", opcode);
    return 0;
}

int hello_exec(void *ctx) {
    bpf_trace_printk("Executing a program");
    return 0;
}

int hello_timer(struct bpf_raw_tracepoint_args *ctx) {
    int opcode = ctx->args[1];
    if (opcode == NR_timer_create)
        bpf_trace_printk("Creating a timer");
    else if (opcode == NR_timer_delete)
        bpf_trace_printk("Deleting a timer");
    else
        bpf_trace_printk("Some other timer operation");
    return 0;
}

int ignore_opcode(void *ctx) {
    return 0;
}
