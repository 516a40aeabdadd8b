"""Keep one lab machine's SSH connection open between bpflab commands, as OpenSSH's ControlPersist does.

Under emulation, connecting (sshd's re-exec, key exchange, RSA auth in the VM) costs half a
second or more: most of what a short `lab.run` adds to plain ssh. A keeper holds one
authenticated connection and serves each later command as a small SSH server on a Unix socket
that only its user can reach (`hosts.Held`): a command's channels (exec, sftp) become channels
of the held connection, byte for byte, so every stage works through it unchanged.

It ends once no command has used it for `persist` seconds, when the machine stops answering
(then it closes every command's connection, as a dropped network would), or on SIGTERM
(`Held.release`). Started by `hosts` as `python -m bpflab.keeper HOST-JSON`.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import paramiko

from .commands import UNREACHABLE
from .hosts import CONNECT_TIMEOUT, Held, Host, local_transport
from .vagrant import Endpoint

BLOCK = 1 << 16
# As run.Supervisor does: after a small block, let the next one gather (fewer, larger packets).
COALESCE_BYTES, COALESCE_SECONDS = 1 << 15, 0.02
# How often the keeper asks the machine whether it is still there, and how long it waits.
LIVENESS_SECONDS = 10
ANSWER_SECONDS = 5


class Keeper:
    """The held connection (`upstream`) and the commands' connections it serves."""

    def __init__(self, host: Host, held: Held, persist: int):
        self.host, self.held, self.persist = host, held, persist
        self.upstream: paramiko.Transport | None = None
        self.key = paramiko.ECDSAKey.generate()
        self.commands: list[paramiko.Transport] = []
        self.used_at = time.monotonic()
        self.ending = threading.Event()

    def answers(self) -> bool:
        """Whether the machine replies to a keepalive in time; if not, everything ends."""
        replied = threading.Event()

        def ask():  # sshd refuses the request, and that is an answer
            try:
                self.upstream.global_request("keepalive@openssh.com", wait=True)
                replied.set()
            except UNREACHABLE:
                pass

        threading.Thread(target=ask, daemon=True).start()
        if replied.wait(ANSWER_SECONDS) and self.upstream.is_active():
            return True
        self.ending.set()
        return False

    def serve(self) -> None:
        self.upstream = self.host.open().client.get_transport()
        listener = self.held.listen(self.key)
        listener.settimeout(1)
        last_check = time.monotonic()
        while not self.ending.is_set():
            try:
                client, _ = listener.accept()
                self.used_at = time.monotonic()
                threading.Thread(target=self.attend, args=(client,), daemon=True).start()
            except TimeoutError:
                pass
            now = time.monotonic()
            self.commands = [command for command in self.commands if command.is_active()]
            if self.commands:
                self.used_at = now
            elif now - self.used_at > self.persist:
                break
            if now - last_check > LIVENESS_SECONDS:
                last_check = now
                threading.Thread(target=self.answers, daemon=True).start()
            if not self.upstream.is_active():
                break
        for command in self.commands:
            command.close()
        self.upstream.close()

    def attend(self, client: socket.socket) -> None:
        """One command's connection, once the machine has answered (so a dead one fails fast)."""
        if not self.answers():
            client.close()
            return
        transport = local_transport(client)
        transport.add_server_key(self.key)
        self.commands.append(transport)
        try:
            transport.start_server(server=Relay(self))
        except (paramiko.SSHException, EOFError, OSError):
            transport.close()


class Relay(paramiko.ServerInterface):
    """The server side of one command's connection: each channel it opens is one of the held
    connection's, started with the same request."""

    def __init__(self, keeper: Keeper):
        self.keeper = keeper

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        """Only a process that can read the keeper's key file (its user) may use it."""
        return paramiko.AUTH_SUCCESSFUL if key == self.keeper.key else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self.bridge(channel, lambda upstream: upstream.exec_command(command))

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        return self.bridge(channel, lambda upstream: upstream.invoke_subsystem(name))

    def check_global_request(self, kind: str, msg) -> bool:
        """A command's keepalive (`commands.responsive`) is answered only when the machine answers;
        when it does not, the command's connection ends as it would without a keeper."""
        if kind != "keepalive@openssh.com":
            return False
        if self.keeper.answers():
            return True
        time.sleep(ANSWER_SECONDS)  # the keeper closes this connection meanwhile
        return False

    def bridge(self, channel: paramiko.Channel, start) -> bool:
        try:
            upstream = self.keeper.upstream.open_session(timeout=CONNECT_TIMEOUT)
            start(upstream)
        except UNREACHABLE:
            return False
        threading.Thread(target=relay, args=(channel, upstream), daemon=True).start()
        return True


def relay(command: paramiko.Channel, upstream: paramiko.Channel) -> None:
    """Copy a channel's streams both ways until both ends are done, then its exit status."""

    def copy(receive, send, small_pause: bool):
        try:
            while data := receive(BLOCK):
                send(data)
                if small_pause and len(data) < COALESCE_BYTES:
                    time.sleep(COALESCE_SECONDS)
        except UNREACHABLE:
            pass

    def stdin():
        copy(command.recv, upstream.sendall, False)
        try:
            if command.closed:  # the command closed its channel: so does the machine's side
                upstream.close()
            else:
                upstream.shutdown_write()
        except UNREACHABLE:
            pass

    threading.Thread(target=stdin, daemon=True).start()
    errors = threading.Thread(target=copy, args=(upstream.recv_stderr, command.sendall_stderr, False), daemon=True)
    errors.start()
    copy(upstream.recv, command.sendall, True)
    errors.join()
    try:
        status = upstream.recv_exit_status()
        if status != -1:
            command.send_exit_status(status)
        command.shutdown_write()
        command.close()
    except UNREACHABLE:
        pass
    upstream.close()


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    host = Host(spec["name"], Endpoint(**spec["endpoint"]), spec["known_hosts"] and Path(spec["known_hosts"]),
                spec["title"])
    held = Held.of(host)
    held.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (held.folder / "lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # another keeper holds this machine
        keeper = Keeper(host, held, spec["persist"])
        signal.signal(signal.SIGTERM, lambda *_: keeper.ending.set())
        try:
            keeper.serve()
        except UNREACHABLE as error:
            print(f"keeper of {host.where}: {error or type(error).__name__}", file=sys.stderr)
            return 1
        finally:
            held.forget(os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
