"""A Fabric connection to a lab VM, built from `vagrant ssh-config`.

The VM stage caches Vagrant's answer; when the cached endpoint stops answering
(the VM was restarted behind bpflab's back), Vagrant is asked once more.
"""

from __future__ import annotations

import collections
import shlex
import socket
import time
from pathlib import Path

import paramiko
from fabric import Config as FabricConfig
from fabric import Connection

from .console import TAIL_LINES, failure
from .errors import LabError
from .vm import LabVM

CONNECT_TIMEOUT = 15
UNREACHABLE = (OSError, EOFError, socket.timeout, paramiko.SSHException)


def parse_ssh_config(text: str, machine: str) -> dict:
    """The endpoint that `vagrant ssh-config` describes for one machine."""
    options = paramiko.SSHConfig.from_text(text).lookup(machine)
    if "hostname" not in options or options["hostname"] == machine:
        raise LabError(f"`vagrant ssh-config` did not describe the lab VM {machine} (no HostName). "
                       "Run `invoke lab.status`; if the VM is running, `invoke lab.up` refreshes it.")
    return {"host": options["hostname"], "port": int(options.get("port", 22)), "user": options.get("user", "vagrant"),
            "identity": (options.get("identityfile") or [None])[0]}


# A Vagrant VM gets a new host key each time it is created; fleet hosts are checked.
UNCHECKED_HOST_KEY = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


def ansible_inventory(vms: list[LabVM]) -> dict:
    """The lab VMs as an Ansible YAML inventory, named by machine: the endpoints Fabric
    uses, for `ansible-playbook -i` and `--inventory`."""
    hosts = {}
    for vm in vms:
        endpoint = parse_ssh_config(vm.ssh_config(), vm.machine)
        hosts[vm.machine] = {
            "ansible_host": endpoint["host"], "ansible_port": endpoint["port"], "ansible_user": endpoint["user"],
            "ansible_ssh_private_key_file": endpoint["identity"], "ansible_ssh_common_args": UNCHECKED_HOST_KEY}
    return {"all": {"hosts": hosts}}


def from_ssh_config(text: str, machine: str) -> Connection:
    config = FabricConfig(ssh_config=paramiko.SSHConfig.from_text(text))
    return Connection(machine, config=config, connect_timeout=CONNECT_TIMEOUT)


def connect(vm: LabVM) -> Connection:
    """An open connection to a running lab VM; asks Vagrant only when needed."""
    connection = from_ssh_config(vm.ssh_config(), vm.machine)
    try:
        connection.open()
        return connection
    except UNREACHABLE:
        text = vm.ssh_config(refresh=True)
    connection = from_ssh_config(text, vm.machine)
    try:
        connection.open()
    except UNREACHABLE as error:
        details = parse_ssh_config(text, vm.machine)
        raise LabError(f"{vm.subject} is running but does not answer SSH at {details['host']}:"
                       f"{details['port']} ({error or type(error).__name__}). Wait a minute and retry; if it "
                       "persists, `invoke lab.halt` then `invoke lab.up`.") from None
    return connection


class LineSink:
    """A Fabric out_stream that hands whole lines to a step and a log file."""

    def __init__(self, current=None, log=None, on_line=None):
        self.current, self.log, self.on_line = current, log, on_line
        self.pending = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def write(self, chunk: str) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.line(line)

    def line(self, line: str) -> None:
        line = line.rstrip("\r")
        self.tail.append(line)
        if self.log:
            self.log.write(line + "\n")
            self.log.flush()
        if self.current:
            self.current.update(line)
        if self.on_line:
            self.on_line(line)

    def flush(self) -> None:
        """Fabric flushes after every chunk; lines are only complete at a newline."""

    def finish(self) -> None:
        if self.pending:
            self.line(self.pending)
            self.pending = ""


def remote_run(connection: Connection, command: str, *, current=None, log: Path | None = None,
               sudo: bool = False, check: bool = True, what: str = "", fix: str = "", on_line=None):
    """Run a shell command in the VM, streaming its lines; on failure show the last ones.

    Output and errors share one stream (2>&1) so the log reads in order.
    """
    handle = log.open("a") if log else None
    sink = LineSink(current, handle, on_line)
    if handle:
        handle.write(f"$ {command}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    wrapped = f"sudo -n bash -c {shlex.quote(command)} 2>&1" if sudo else f"bash -c {shlex.quote(command)} 2>&1"
    try:
        result = connection.run(wrapped, hide=True, warn=True, out_stream=sink, in_stream=False)
    except UNREACHABLE as error:
        raise LabError(f"The SSH connection to the lab VM dropped during: {what or command} ({error}). "
                       "Run the same command again: it picks up where it stopped.") from None
    finally:
        sink.finish()
        if handle:
            handle.close()
    if check and result.exited != 0:
        raise failure(what or command, result.exited, sink.tail, log, fix, where=" in the VM")
    return result
