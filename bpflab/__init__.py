"""bpflab: the Learning eBPF labs in a disposable VM, driven from the host.

The package follows the data: config -> host tools and boxes (arch, libvirt, host,
vagrant, box) -> vm -> hosts -> provision -> sync -> run -> runs -> orchestrate.
Each module imports only the stages before it; console and commands serve them all.
"""
