"""bpflab: the Learning eBPF labs in a disposable VM, driven from the host.

The package follows the data: config -> vm -> connection -> provision -> sync
-> run -> runs. Each module imports only the stages before it.
"""
