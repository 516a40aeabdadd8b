"""A Fabric connection to the lab VM, built from `vagrant ssh-config`.

The VM stage caches Vagrant's answer; when the cached endpoint stops answering
(the VM was restarted behind bpflab's back), Vagrant is asked once more.
"""

from __future__ import annotations

import socket

import paramiko
from fabric import Config as FabricConfig
from fabric import Connection

from .errors import LabError
from .vm import MACHINE, LabVM

CONNECT_TIMEOUT = 15
UNREACHABLE = (OSError, EOFError, socket.timeout, paramiko.SSHException)


def parse_ssh_config(text: str) -> dict:
    """The endpoint that `vagrant ssh-config` describes for the lab machine."""
    options = paramiko.SSHConfig.from_text(text).lookup(MACHINE)
    if "hostname" not in options or options["hostname"] == MACHINE:
        raise LabError("`vagrant ssh-config` did not describe the lab VM (no HostName). "
                       "Run `invoke lab.status`; if the VM is running, `invoke lab.up` refreshes it.")
    return {"host": options["hostname"], "port": int(options.get("port", 22)), "user": options.get("user", "vagrant"),
            "identity": (options.get("identityfile") or [None])[0]}


def from_ssh_config(text: str) -> Connection:
    config = FabricConfig(ssh_config=paramiko.SSHConfig.from_text(text))
    return Connection(MACHINE, config=config, connect_timeout=CONNECT_TIMEOUT)


def connect(vm: LabVM) -> Connection:
    """An open connection to the running lab VM; asks Vagrant only when needed."""
    connection = from_ssh_config(vm.ssh_config())
    try:
        connection.open()
        return connection
    except UNREACHABLE:
        text = vm.ssh_config(refresh=True)
    connection = from_ssh_config(text)
    try:
        connection.open()
    except UNREACHABLE as error:
        details = parse_ssh_config(text)
        raise LabError(f"The lab VM is running but does not answer SSH at {details['host']}:{details['port']} "
                       f"({error or type(error).__name__}). Wait a minute and retry; if it persists, "
                       "`invoke lab.halt` then `invoke lab.up`.") from None
    return connection
