// hello: runs on every execve and writes a line to the kernel's trace pipe.
int hello(void *ctx) {
    bpf_trace_printk("Hello World!");
    return 0;
}
