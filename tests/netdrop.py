"""Drop one process's SSH connection to a lab VM with this host's firewall, as a network that
fails does: the connection stays open but no packet passes (needs root and iptables)."""

import re
import subprocess


def drop_ssh_connection(pid: int, address: str) -> list[list[str]]:
    """Insert the rules that drop the connection of process `pid` to address:22; return them."""
    sockets = subprocess.run(["ss", "-tnpH", "dst", address], capture_output=True, text=True).stdout
    # Every connection of the process, line by line: a keeper may hold one besides the one it serves with.
    ports = [
        found.group(1)
        for line in sockets.splitlines()
        if (found := re.search(rf"\S+:(\d+)\s+{re.escape(address)}:22\s.*pid={pid},", line))
    ]
    assert ports, f"no connection of process {pid} to {address}:22 in:\n{sockets}"
    rules = [
        rule
        for port in ports
        for rule in (
            ["OUTPUT", "-p", "tcp", "-d", address, "--dport", "22", "--sport", port, "-j", "DROP"],
            ["INPUT", "-p", "tcp", "-s", address, "--sport", "22", "--dport", port, "-j", "DROP"],
        )
    ]
    for rule in rules:
        subprocess.run(["iptables", "-I", *rule], check=True)
    return rules


def restore(rules: list[list[str]]) -> None:
    for rule in rules:
        subprocess.run(["iptables", "-D", *rule])
