"""The keeper's client: where a keeper of one endpoint listens, a connection through it, its start
and its stop (`keeper.py` is the keeper itself).

A command's first connection to a host leaves a keeper behind when it ends; later commands
connect through it and skip the SSH handshake with the machine, as OpenSSH's ControlPersist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection

from .commands import UNREACHABLE
from .config import digest_of
from .errors import LabError
from .vagrant import Endpoint

CONNECT_TIMEOUT = 15
# A connection that fails ends in a message of bpflab's; paramiko's thread would print its own too.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
HELD_ROOT = Path("~/.cache/bpflab/held").expanduser()
# How long a keeper holds a connection that no command uses (0: no keeper), as ControlPersist.
PERSIST_VARIABLE, PERSIST_DEFAULT = "BPFLAB_SSH_PERSIST", 600


def persist_seconds() -> int:
    value = os.environ.get(PERSIST_VARIABLE, str(PERSIST_DEFAULT))
    try:
        seconds = int(value)
        if seconds >= 0:
            return seconds
    except ValueError:
        pass
    raise LabError(
        f"{PERSIST_VARIABLE}: expected a whole number of seconds (0: no kept SSH connection), found {value!r}."
    )


# A keeper's connections never leave this machine: packets far larger than over a network cost
# less Python work per byte of a flood of output.
LOCAL_PACKET_BYTES, LOCAL_WINDOW_BYTES = 1 << 18, 1 << 23


def local_transport(sock, **options) -> paramiko.Transport:
    return paramiko.Transport(
        sock, default_max_packet_size=LOCAL_PACKET_BYTES, default_window_size=LOCAL_WINDOW_BYTES, **options
    )


@dataclass
class Held:
    """Where the keeper of one endpoint listens: its folder holds the socket, the key that both
    ends prove they hold (only the user can read it) and the keeper's pid."""

    folder: Path

    @classmethod
    def of(cls, endpoint: Endpoint, known_hosts: Path | None) -> Held:
        """One keeper per endpoint and way of checking it: a host reached under another key, or
        checked against a known_hosts that has changed since, never uses a keeper of before."""
        known = ""
        if known_hosts is not None:
            try:
                known = hashlib.sha256(known_hosts.read_bytes()).hexdigest()
            except OSError:
                known = "unreadable"
        checks = digest_of({"identity": endpoint.identity, "known_hosts": str(known_hosts), "recorded": known})
        return cls(HELD_ROOT / f"{endpoint.user}@{endpoint.host}-{endpoint.port}-{checks}")

    @property
    def socket(self) -> Path:
        return self.folder / "socket"

    def connect(self, endpoint: Endpoint) -> Connection | None:
        """A connection through the keeper, or None when there is none or it does not serve."""
        if not self.socket.exists():
            return None
        unix = socket.socket(socket.AF_UNIX)
        unix.settimeout(CONNECT_TIMEOUT)
        try:
            key = paramiko.ECDSAKey.from_private_key_file(str(self.folder / "key"))
            unix.connect(str(self.socket))
            connection = Connection(
                endpoint.host,
                user=endpoint.user,
                port=endpoint.port,
                connect_timeout=CONNECT_TIMEOUT,
                connect_kwargs={
                    "sock": unix,
                    "pkey": key,
                    "look_for_keys": False,
                    "allow_agent": False,
                    "transport_factory": local_transport,
                },
            )
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

    def start(self, spec: dict) -> None:
        """A keeper of its own session (`spec`: the host it keeps and for how long), its output in
        the folder's log: a command that ends, or a pipe that reads the command's output, never
        waits for it."""
        if self.pid() is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            with (self.folder / "keeper.log").open("a") as log:
                subprocess.Popen(
                    [sys.executable, "-m", "bpflab.keeper", json.dumps(spec)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=Path(__file__).parent.parent,
                )
        except OSError:  # the folder went with a keeper that just ended: the next command keeps one
            pass


def release_all() -> int:
    """Stop every keeper of this user's (`host.teardown`); how many there were."""
    helds = [Held(folder) for folder in sorted(HELD_ROOT.glob("*@*-*-*"))]
    running = [held for held in helds if held.pid() is not None]
    for held in running:
        held.release()
    return len(running)
