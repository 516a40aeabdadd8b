"""The machines bpflab works on, as SSH hosts: this checkout's lab VMs and an inventory's.

Both are the same Host: a name, an endpoint, a host-key policy and `connect()`.
A local Vagrant VM gets a new host key each time it is created, so its key is not
checked, and when its cached endpoint stops answering Vagrant is asked once more.
An inventory host is a real machine: its key must be the one known_hosts records.
Inventories are Ansible's YAML format, so one file describes a room for
`ansible-playbook` and for bpflab; they are read and written here.

A command's first connection to a host leaves a keeper behind when it ends (`keeper.py`);
later commands connect through it (`Held`) and skip the SSH handshake with the machine.
"""

from __future__ import annotations

import atexit
import getpass
import hashlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
import yaml
from fabric import Connection

from .commands import UNREACHABLE, remote_run
from .config import Config, load_yaml
from .console import Step
from .errors import LabError
from .vagrant import Endpoint
from .vm import LabVM, console_note, select, select_one

CONNECT_TIMEOUT = 15
# How long a machine of a room may take to come back from a reboot.
REBOOT_TIMEOUT = 600
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts").expanduser()
# What an inventory says for a host whose key is not checked (a local Vagrant VM).
UNCHECKED_HOST_KEY = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
# Ansible's SSH (a ControlPersist master) must notice a machine that went away, as in a reboot:
# otherwise its reboot module can wait forever on a dead connection (ansible/ansible#84573).
KEEPALIVE = "-o ServerAliveInterval=5 -o ServerAliveCountMax=6"
# A connection that fails ends in a message of bpflab's; paramiko's thread would print its own too.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
HELD_ROOT = Path("~/.cache/bpflab/held").expanduser()
# How long a keeper holds a connection that no command uses (0: no keeper), as ControlPersist.
PERSIST_VARIABLE, PERSIST_DEFAULT = "BPFLAB_SSH_PERSIST", 600


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
        return cls(vm.machine, vm.endpoint(), None, vm.title, refresh=lambda: vm.endpoint(refresh=True),
                   reload=vm.reload, console=vm.console_log)

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

    def open(self) -> Connection:
        endpoint = self.endpoint
        connection = Connection(endpoint.host, user=endpoint.user, port=endpoint.port,
                                connect_timeout=CONNECT_TIMEOUT,
                                connect_kwargs={"key_filename": [endpoint.identity]} if endpoint.identity else {})
        if self.known_hosts is not None:
            connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            if self.known_hosts.exists():
                connection.client.get_host_keys().load(str(self.known_hosts))
        connection.open()
        return connection

    def connect(self) -> Connection:
        """An open connection (through a keeper when one holds the machine), or a message that
        says why not and what to do."""
        if persist_seconds() and (held := Held.of(self).connect(self)) is not None:
            return held
        try:
            return keep_after_exit(self, self.open())
        except UNREACHABLE as error:
            if self.refresh is None:
                raise self.refused(error) from None
        self.endpoint = self.refresh()
        try:
            return keep_after_exit(self, self.open())
        except UNREACHABLE as error:
            raise LabError(f"{self.subject} is running but does not answer SSH at {self.endpoint.host}:"
                           f"{self.endpoint.port} ({error or type(error).__name__}). Wait a minute and retry; if "
                           "it persists, `invoke lab.halt` then `invoke lab.up`. " + self.console_note()) from None

    def refused(self, error: Exception) -> LabError:
        if isinstance(error, paramiko.BadHostKeyException):
            return LabError(f"{self.where}: its SSH host key is not the one recorded in {self.known_hosts}. If the "
                            "machine was re-created, replace the old key (`ssh-keygen -R` then `ssh-keyscan`); "
                            "otherwise do not connect: something may sit in between.")
        if isinstance(error, paramiko.AuthenticationException):
            return LabError(f"{self.where}: SSH login as {self.endpoint.user} was refused ({error}). Check "
                            "ansible_user and ansible_ssh_private_key_file in the inventory.")
        if isinstance(error, paramiko.SSHException) and "known_hosts" in str(error):
            return LabError(f"{self.where}: its SSH host key is not in {self.known_hosts}. Record it once after "
                            f"checking it: ssh-keyscan -p {self.endpoint.port} {self.endpoint.host} >> "
                            f"{self.known_hosts}")
        return LabError(f"{self.where} does not answer SSH ({error or type(error).__name__}).")

    def restart(self, connection: Connection, current: Step | None = None) -> None:
        """Restart the machine (into a new kernel) and wait until it answers SSH again;
        `connection` is closed."""
        if self.reload:
            connection.close()
            Held.of(self).release()
            self.endpoint = self.reload(current)
            return
        booted = remote_run(connection, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
        remote_run(connection, "nohup sh -c 'sleep 2; reboot' >/dev/null 2>&1 &", sudo=True)
        connection.close()
        Held.of(self).release()
        deadline = time.monotonic() + REBOOT_TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(5)
            try:
                with self.open() as again:
                    if remote_run(again, "cat /proc/sys/kernel/random/boot_id").stdout.strip() != booted:
                        return
            except UNREACHABLE:
                continue
        raise LabError(f"{self.subject} was restarted into a new kernel but does not answer SSH after "
                       f"{REBOOT_TIMEOUT} s. Look at its console; once it is up, run the same command again.")


def persist_seconds() -> int:
    value = os.environ.get(PERSIST_VARIABLE, str(PERSIST_DEFAULT))
    try:
        seconds = int(value)
        if seconds >= 0:
            return seconds
    except ValueError:
        pass
    raise LabError(f"{PERSIST_VARIABLE}: expected a whole number of seconds (0: no kept SSH connection), "
                   f"found {value!r}.")


# A keeper's connections never leave this machine: packets far larger than over a network cost
# less Python work per byte of a flood of output.
LOCAL_PACKET_BYTES, LOCAL_WINDOW_BYTES = 1 << 18, 1 << 23


def local_transport(sock, **options) -> paramiko.Transport:
    return paramiko.Transport(sock, default_max_packet_size=LOCAL_PACKET_BYTES,
                              default_window_size=LOCAL_WINDOW_BYTES, **options)


@dataclass
class Held:
    """Where the keeper of one endpoint listens: its folder holds the socket, the key that both
    ends prove they hold (only the user can read it) and the keeper's pid."""
    folder: Path

    @classmethod
    def of(cls, host: Host) -> Held:
        """One keeper per endpoint and way of checking it: a host reached under another key, or
        checked against a known_hosts that has changed since, never uses a keeper of before."""
        endpoint = host.endpoint
        known = b""
        if host.known_hosts is not None:
            try:
                known = host.known_hosts.read_bytes()
            except OSError:
                known = b"unreadable"
        checks = hashlib.sha256(json.dumps([endpoint.identity, str(host.known_hosts)]).encode() + known)
        return cls(HELD_ROOT / f"{endpoint.user}@{endpoint.host}-{endpoint.port}-{checks.hexdigest()[:12]}")

    @property
    def socket(self) -> Path:
        return self.folder / "socket"

    def connect(self, host: Host) -> Connection | None:
        """A connection through the keeper, or None when there is none or it does not serve."""
        if not self.socket.exists():
            return None
        endpoint = host.endpoint
        unix = socket.socket(socket.AF_UNIX)
        unix.settimeout(CONNECT_TIMEOUT)
        try:
            key = paramiko.ECDSAKey.from_private_key_file(str(self.folder / "key"))
            unix.connect(str(self.socket))
            connection = Connection(endpoint.host, user=endpoint.user, port=endpoint.port,
                                    connect_timeout=CONNECT_TIMEOUT,
                                    connect_kwargs={"sock": unix, "pkey": key, "look_for_keys": False,
                                                    "allow_agent": False, "transport_factory": local_transport})
            name = endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"
            connection.client.get_host_keys().add(name, key.get_name(), key)
            connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            connection.open()
            return connection
        except (*UNREACHABLE, ValueError):
            unix.close()
            return None

    def listen(self, key: paramiko.PKey) -> socket.socket:
        """The keeper's side: its key, then its socket (so a command never finds a socket
        without the key it needs)."""
        partial = self.folder / f"key.{os.getpid()}"
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            key.write_private_key(handle)
        partial.replace(self.folder / "key")
        listener = socket.socket(socket.AF_UNIX)
        bound = self.folder / f"socket.{os.getpid()}"
        bound.unlink(missing_ok=True)
        listener.bind(str(bound))
        listener.listen(16)
        bound.replace(self.socket)
        return listener

    def pid(self) -> int | None:
        """The keeper's pid while that process is still a keeper."""
        try:
            pid = int((self.folder / "pid").read_text())
            return pid if b"bpflab.keeper" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
        except (OSError, ValueError):
            return None

    def forget(self, pid: int) -> None:
        """The keeper's last act, while it holds the lock: its folder goes (one is left per past
        endpoint otherwise), but a log that says something stays to be read."""
        if self.pid() != pid:
            return
        for name in ("socket", "pid", "key"):
            (self.folder / name).unlink(missing_ok=True)
        log = self.folder / "keeper.log"
        try:
            if log.exists() and log.stat().st_size:
                return
            log.unlink(missing_ok=True)  # missing: an ending keeper before took it, with a new keeper's start
            (self.folder / "lock").unlink(missing_ok=True)
            self.folder.rmdir()
        except OSError:  # a new keeper's log meanwhile: the folder stays for it
            pass

    def release(self) -> None:
        """Stop the keeper (the machine restarts or goes away): later commands connect afresh."""
        if (pid := self.pid()) is None:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(30):
            if self.pid() is None:
                return
            time.sleep(0.1)

    def start(self, host: Host, persist: int) -> None:
        """A keeper of its own session, its output in the folder's log: a command that ends, or
        a pipe that reads the command's output, never waits for it."""
        if self.pid() is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        endpoint = host.endpoint
        spec = {"name": host.name, "title": host.title, "persist": persist,
                "known_hosts": str(host.known_hosts) if host.known_hosts else None,
                "endpoint": {"host": endpoint.host, "port": endpoint.port, "user": endpoint.user,
                             "identity": endpoint.identity}}
        try:
            with (self.folder / "keeper.log").open("a") as log:
                subprocess.Popen([sys.executable, "-m", "bpflab.keeper", json.dumps(spec)], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 cwd=Path(__file__).parent.parent)
        except OSError:  # the folder went with a keeper that just ended: the next command keeps one
            pass


KEPT: dict[Path, Host] = {}


def keep_after_exit(host: Host, connection: Connection) -> Connection:
    """Leave a keeper of this host when the command ends (not now: it would share the machine's
    cores with the command's own work)."""
    if persist_seconds():
        if not KEPT:
            atexit.register(start_keepers)
        KEPT[Held.of(host).folder] = host
    return connection


def start_keepers() -> None:
    for host in KEPT.values():
        Held.of(host).start(host, persist_seconds())


def release_all() -> int:
    """Stop every keeper of this user's (`host.teardown`); how many there were."""
    helds = [Held(folder) for folder in sorted(HELD_ROOT.glob("*@*-*-*"))]
    running = [held for held in helds if held.pid() is not None]
    for held in running:
        held.release()
    return len(running)


def choose(config: Config, inventory: str, choice: str, everything_by_default: bool = False) -> list[Host]:
    """The hosts of --inventory, or this checkout's lab VMs that --vm names."""
    if inventory and choice:
        raise LabError("Give --inventory (hosts of a room) or --vm (this checkout's lab VMs), not both.")
    if inventory:
        return read_inventory(inventory)
    return [Host.of_vm(vm) for vm in select(config, choice, everything_by_default)]


def choose_one(config: Config, choice: str, task: str, for_all: str = "") -> Host:
    """The one lab VM a single-VM task works on, as a host."""
    return Host.of_vm(select_one(config, choice, task, for_all))


def save_inventory(hosts: list[Host], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(write_inventory(hosts), sort_keys=False))
    return path


def write_inventory(hosts: list[Host]) -> dict:
    """Hosts as an Ansible YAML inventory: the endpoints bpflab uses, for `ansible-playbook -i`."""
    entries = {}
    for host in hosts:
        endpoint = host.endpoint
        entries[host.name] = {"ansible_host": endpoint.host, "ansible_port": endpoint.port,
                              "ansible_user": endpoint.user, "ansible_ssh_private_key_file": endpoint.identity}
        checks = UNCHECKED_HOST_KEY if host.known_hosts is None else f"-o UserKnownHostsFile={host.known_hosts}"
        entries[host.name]["ansible_ssh_common_args"] = f"{checks} {KEEPALIVE}"
    return {"all": {"hosts": entries}}


def ssh_options(arguments: str) -> dict[str, str]:
    """`-o Key=Value` pairs of ansible_ssh_common_args / ansible_ssh_extra_args, keys lowercased."""
    words, options = shlex.split(arguments), {}
    for index, word in enumerate(words):
        if word == "-o":
            value = words[index + 1] if index + 1 < len(words) else ""
        else:
            value = word[2:] if word.startswith("-o") else ""
        if "=" in value:
            key, _, setting = value.partition("=")
            options[key.strip().lower()] = setting.strip()
    return options


def host_variables(data: dict) -> dict[str, dict]:
    """Every host with its variables: group vars, then child groups', then the host's own."""
    hosts: dict[str, dict] = {}

    def walk(group, inherited):
        group = group or {}
        variables = {**inherited, **(group.get("vars") or {})}
        for name, own in (group.get("hosts") or {}).items():
            hosts[str(name)] = {**hosts.get(str(name), {}), **variables, **(own or {})}
        for child in (group.get("children") or {}).values():
            walk(child, variables)

    for group in data.values():
        walk(group, {})
    return hosts


def read_inventory(path: Path | str) -> list[Host]:
    """The hosts of an Ansible YAML inventory, or a message naming the file and the problem."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except OSError as error:
        raise LabError(f"Cannot read the inventory {path}: {error.strerror}. Give the path of an Ansible "
                       "YAML inventory (hosts with ansible_host, ansible_port, ansible_user).") from None
    except yaml.YAMLError as error:
        raise LabError(f"The inventory {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict) or not all(isinstance(group, (dict, type(None))) for group in data.values()):
        raise LabError(f"The inventory {path} is not in Ansible's YAML format: expected groups such as "
                       "`all: {hosts: {NAME: {ansible_host: ..., ansible_port: ...}}}`.")
    hosts = [inventory_host(name, variables, path) for name, variables in host_variables(data).items()]
    if not hosts:
        raise LabError(f"The inventory {path} lists no hosts.")
    return hosts


def inventory_host(name: str, variables: dict, path: Path) -> Host:
    """One inventory host; a relative key path starts at the inventory's folder."""
    port = variables.get("ansible_port", 22)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise LabError(f"{path}: host {name}: ansible_port: expected a port number, got {port!r}.")
    options = ssh_options(f"{variables.get('ansible_ssh_common_args', '')} "
                          f"{variables.get('ansible_ssh_extra_args', '')}")
    identity = variables.get("ansible_ssh_private_key_file")
    checked = options.get("stricthostkeychecking", "yes").lower() != "no"
    known_hosts = options.get("userknownhostsfile")
    endpoint = Endpoint(str(variables.get("ansible_host", name)), port,
                        str(variables.get("ansible_user", getpass.getuser())),
                        str(path.parent / Path(identity).expanduser()) if identity else None)
    return Host(name, endpoint, (Path(known_hosts).expanduser() if known_hosts else DEFAULT_KNOWN_HOSTS)
                if checked else None, f"the host {name}")
