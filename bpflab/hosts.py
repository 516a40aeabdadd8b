"""The machines bpflab works on, as SSH hosts: this checkout's lab VMs and an inventory's.

Both are the same Host: a name, an endpoint, a host-key policy and `connect()`, the one way to
reach a machine. A local Vagrant VM gets a new host key each time it is created, so its key is
not checked, and when its cached endpoint stops answering Vagrant is asked once more. An
inventory host is a real machine: its key must be the one known_hosts records.
"""

from __future__ import annotations

import atexit
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection

from .commands import UNREACHABLE, remote_run
from .console import Step
from .errors import LabError
from .held import CONNECT_TIMEOUT, Held, persist_seconds
from .vagrant import Endpoint
from .vm import LabVM, console_note

# How long a machine of a room may take to come back from a reboot.
REBOOT_TIMEOUT = 600


@dataclass
class Host:
    """One machine to reach over SSH. `known_hosts` None: its host key is not checked;
    `refresh`: how to learn its endpoint again when the one known stops answering; `reload`: how
    to restart it other than by a reboot over SSH (a local VM: through Vagrant)."""

    name: str
    endpoint: Endpoint
    known_hosts: Path | None
    title: str
    refresh: Callable[[], Endpoint] | None = None
    reload: Callable[[Step | None], Endpoint] | None = None
    console: Path | None = None  # a local VM's serial console log

    @classmethod
    def of_vm(cls, vm: LabVM) -> Host:
        return cls(
            vm.machine,
            vm.endpoint(),
            None,
            vm.title,
            refresh=lambda: vm.endpoint(refresh=True),
            reload=vm.reload,
            console=vm.console_log,
        )

    @classmethod
    def of_spec(cls, spec: dict) -> Host:
        known_hosts = spec["known_hosts"]
        return cls(spec["name"], Endpoint(**spec["endpoint"]), known_hosts and Path(known_hosts), spec["title"])

    def spec(self) -> dict:
        """What a keeper of this host (another process) needs to know of it."""
        endpoint = self.endpoint
        return {
            "name": self.name,
            "title": self.title,
            "known_hosts": str(self.known_hosts) if self.known_hosts else None,
            "endpoint": {
                "host": endpoint.host,
                "port": endpoint.port,
                "user": endpoint.user,
                "identity": endpoint.identity,
            },
        }

    @property
    def held(self) -> Held:
        return Held.of(self.endpoint, self.known_hosts)

    def console_note(self) -> str:
        """What the machine's console says, for a message about it not answering ('' if unknown)."""
        return console_note(self.console) if self.console else ""

    @property
    def subject(self) -> str:
        """The title at the start of a sentence."""
        return self.title[0].upper() + self.title[1:]

    @property
    def where(self) -> str:
        return f"{self.name} ({self.endpoint.host}:{self.endpoint.port})"

    def connect(self, kept: bool = True) -> Connection:
        """An open connection, or a message that says why not and what to do. `kept`: through the
        keeper that holds the machine if one does, and one is left behind when the command ends;
        else a connection of its own (a keeper's own, a machine back from a reboot)."""
        if kept and persist_seconds() and (held := self.held.connect(self.endpoint)) is not None:
            return held
        try:
            connection = self.ssh()
        except UNREACHABLE as error:
            if self.refresh is None:
                raise self.refused(error) from None
            self.endpoint = self.refresh()
            try:
                connection = self.ssh()
            except UNREACHABLE as error:
                raise LabError(
                    f"{self.subject} is running but does not answer SSH at {self.endpoint.host}:"
                    f"{self.endpoint.port} ({error or type(error).__name__}). Wait a minute and retry; "
                    "if it persists, `invoke lab.halt` then `invoke lab.up`. " + self.console_note()
                ) from None
        return keep_after_exit(self, connection) if kept else connection

    def ssh(self) -> Connection:
        endpoint = self.endpoint
        connection = Connection(
            endpoint.host,
            user=endpoint.user,
            port=endpoint.port,
            connect_timeout=CONNECT_TIMEOUT,
            connect_kwargs={"key_filename": [endpoint.identity]} if endpoint.identity else {},
        )
        if self.known_hosts is not None:
            connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            if self.known_hosts.exists():
                connection.client.get_host_keys().load(str(self.known_hosts))
        connection.open()
        return connection

    def refused(self, error: Exception) -> LabError:
        if isinstance(error, paramiko.BadHostKeyException):
            return LabError(
                f"{self.where}: its SSH host key is not the one recorded in {self.known_hosts}. If the "
                "machine was re-created, replace the old key (`ssh-keygen -R` then `ssh-keyscan`); "
                "otherwise do not connect: something may sit in between."
            )
        if isinstance(error, paramiko.AuthenticationException):
            return LabError(
                f"{self.where}: SSH login as {self.endpoint.user} was refused ({error}). Check "
                "ansible_user and ansible_ssh_private_key_file in the inventory."
            )
        if isinstance(error, paramiko.SSHException) and "known_hosts" in str(error):
            return LabError(
                f"{self.where}: its SSH host key is not in {self.known_hosts}. Record it once after "
                f"checking it: ssh-keyscan -p {self.endpoint.port} {self.endpoint.host} >> "
                f"{self.known_hosts}"
            )
        return LabError(f"{self.where} does not answer SSH ({error or type(error).__name__}).")

    def restart(self, connection: Connection, current: Step | None = None) -> None:
        """Restart the machine (into a new kernel) and wait until it answers SSH again;
        `connection` is closed."""
        if self.reload:
            connection.close()
            self.held.release()
            self.endpoint = self.reload(current)
            return
        booted = remote_run(connection, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
        remote_run(connection, "nohup sh -c 'sleep 2; reboot' >/dev/null 2>&1 &", sudo=True)
        connection.close()
        self.held.release()
        deadline = time.monotonic() + REBOOT_TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(5)
            try:
                with self.connect(kept=False) as again:
                    if remote_run(again, "cat /proc/sys/kernel/random/boot_id").stdout.strip() != booted:
                        return
            except LabError:
                continue
        raise LabError(
            f"{self.subject} was restarted into a new kernel but does not answer SSH after "
            f"{REBOOT_TIMEOUT} s. Look at its console; once it is up, run the same command again."
        )


KEPT: dict[Path, Host] = {}


def keep_after_exit(host: Host, connection: Connection) -> Connection:
    """Leave a keeper of this host when the command ends (not now: it would share the machine's
    cores with the command's own work)."""
    if persist_seconds():
        if not KEPT:
            atexit.register(start_keepers)
        KEPT[host.held.folder] = host
    return connection


def start_keepers() -> None:
    for host in KEPT.values():
        host.held.start({**host.spec(), "persist": persist_seconds()})
