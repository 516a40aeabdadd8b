// Exercise 4: hello-tail with RAW_TRACEPOINT_PROBE(sys_enter). The macro
// attaches the dispatcher when the program is loaded, before user space can
// fill the program array, so the dispatcher stays silent until user space sets
// `ready` once the array is complete.
BPF_PROG_ARRAY(syscall, 500);
BPF_ARRAY(ready, u32, 1);

RAW_TRACEPOINT_PROBE(sys_enter) {
    int zero = 0;
    u32 *filled = ready.lookup(&zero);
    if (!filled || !*filled)
        return 0;
    int opcode = ctx->args[1];
    syscall.call(ctx, opcode);
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
