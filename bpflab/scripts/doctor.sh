#!/bin/bash
# What the labs need, checked in the VM: one `check|ok or missing|detail` line each.
# Shared by `invoke lab.doctor` and the Ansible role.
read -r k < /proc/sys/kernel/osrelease; cfg=/boot/config-$k
check() { if eval "$2" >/dev/null 2>&1; then echo "$1|ok|$3"; else echo "$1|missing|$4"; fi; }
# Importing bcc and starting bpftrace take about a second each under emulation: at once.
# After answers.sh (bpflab's provisioning and lab.doctor) they are kept, and with REUSE=1 an
# answer kept before is given again; run alone (the Ansible role), it always asks.
declare -F remember > /dev/null || { remembered() { return 1; }; remember() { :; }; }
[ "$REUSE" = 1 ] && remembered bcc v || exec {bcc}< <(python3 -c 'import bcc; print(bcc.__version__)' 2>/dev/null)
echo "kernel|ok|$k $HOSTTYPE"
check "BPF syscall" "grep -q '^CONFIG_BPF_SYSCALL=y' $cfg" "CONFIG_BPF_SYSCALL=y" "kernel built without BPF"
check "kprobes" "grep -q '^CONFIG_KPROBES=y' $cfg && test -e /sys/kernel/tracing/kprobe_events -o -e /sys/kernel/debug/tracing/kprobe_events" "CONFIG_KPROBES=y, kprobe_events" "no kprobes"
check "BTF" "test -e /sys/kernel/btf/vmlinux" "/sys/kernel/btf/vmlinux" "no /sys/kernel/btf/vmlinux"
check "tracefs" "test -e /sys/kernel/tracing/trace_pipe -o -e /sys/kernel/debug/tracing/trace_pipe" "trace_pipe" "mount -t tracefs nodev /sys/kernel/tracing"
check "kernel headers" "test -e /lib/modules/$k/build" "/lib/modules/$k/build" "apt-get install linux-headers-$k"
[ "$REUSE" = 1 ] && remembered bpftrace b || { b=$(bpftrace --version 2>/dev/null); remember bpftrace "$b"; }
[ -n "$bcc" ] && read -r v <&$bcc && remember bcc "$v"
check "import bcc" "test -n '$v'" "BCC $v" "python3 cannot import bcc"
check "bpftrace" "test -n '$b'" "$b" "bpftrace not installed"
