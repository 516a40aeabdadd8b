// Exercise 2: hello-map triggered by several syscalls.
// Part 1: one program (count_any) attached to the execve, openat and write
// kprobes: a per-UID total that cannot tell the syscalls apart.
// Part 2: one program per syscall, all writing into one shared map keyed by
// (syscall, UID), so the counts show where they came from.
BPF_HASH(total, u32, u64);

struct key_t {
    u32 syscall;
    u32 uid;
};
BPF_HASH(by_syscall, struct key_t, u64);

int count_any(void *ctx) {
    u32 uid = bpf_get_current_uid_gid() & 0xFFFFFFFF;
    total.increment(uid);
    return 0;
}

static int count(u32 syscall) {
    struct key_t key = {.syscall = syscall, .uid = bpf_get_current_uid_gid() & 0xFFFFFFFF};
    by_syscall.increment(key);
    return 0;
}

int count_execve(void *ctx) { return count(0); }
int count_openat(void *ctx) { return count(1); }
int count_write(void *ctx) { return count(2); }
