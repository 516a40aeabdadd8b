"""Keep one lab machine's SSH connection open between bpflab commands, as OpenSSH's ControlPersist does.

Under emulation, connecting (sshd's re-exec, key exchange, RSA auth in the VM) costs half a
second or more: most of what a short `lab.run` adds to plain ssh. A keeper holds one
authenticated connection and serves each later command as a small SSH server on a Unix socket
that only its user can reach (`hosts.Held`): a command's channels (exec, sftp) become channels
of the held connection, byte for byte, so every stage works through it unchanged.

It also keeps a shell ready in the machine, one as root and one as the user: a command then
skips sshd's new session, the login shell and, as root, sudo (together half a second under
emulation). A ready shell reads the command's length and text, then becomes it, so the
command's input, output and exit status are its own.

It ends once no command has used it for `persist` seconds, when the machine stops answering
(then it closes every command's connection, as a dropped network would), or on SIGTERM
(`Held.release`). Started by `hosts` as `python -m bpflab.keeper HOST-JSON`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time

import paramiko

from .commands import ANSWER_SECONDS, AS_ROOT, UNREACHABLE, answers
from .errors import LabError
from .held import CONNECT_TIMEOUT, Held, local_transport
from .hosts import Host

BLOCK = 1 << 16
# As run.Supervisor does: after a small block, let the next one gather (fewer, larger packets).
COALESCE_BYTES, COALESCE_SECONDS = 1 << 15, 0.02
# How often the keeper asks the machine whether it is still there.
LIVENESS_SECONDS = 10


# `read -N` counts bytes under LC_ALL=C; the first newline says the shell (and sudo) has started.
LOADER = 'echo; read -r length && LC_ALL=C IFS= read -r -N "$length" line && exec bash -c "$line"'
READY_SHELLS = {"root": f"exec {AS_ROOT}bash -c {shlex.quote(LOADER)}", "user": f"exec bash -c {shlex.quote(LOADER)}"}


class ReadyShells:
    """One shell of each kind waiting in the machine for the next command of that kind."""

    def __init__(self, upstream: paramiko.Transport):
        self.upstream = upstream
        self.ready: dict[str, paramiko.Channel] = {}
        self.refused: set[str] = set()  # sudo asks for a password there: no root shell kept
        self.preparing: set[str] = set()
        self.lock = threading.Lock()

    def take(self, kind: str) -> paramiko.Channel | None:
        """The ready shell of this kind, if one still waits."""
        with self.lock:
            shell = self.ready.pop(kind, None)
        return shell if shell is not None and not shell.closed and not shell.exit_status_ready() else None

    def prepare_later(self, kind: str) -> None:
        """Start a shell of this kind unless one waits or starts: called when a command ends, so
        that its sudo never shares the machine's CPUs with a command's start."""
        with self.lock:
            if kind in self.refused or kind in self.ready or kind in self.preparing:
                return
            self.preparing.add(kind)
        threading.Thread(target=self.prepare, args=(kind,), daemon=True).start()

    def prepare(self, kind: str) -> None:
        shell = None
        try:
            shell = self.upstream.open_session(timeout=CONNECT_TIMEOUT)
            shell.settimeout(CONNECT_TIMEOUT)
            shell.exec_command(READY_SHELLS[kind])
            if shell.recv(1) != b"\n":
                shell.close()
                self.refused.add(kind)
                shell = None
            else:
                shell.settimeout(None)
        except UNREACHABLE:
            shell = None
        with self.lock:
            self.preparing.discard(kind)
            if shell is not None:
                self.ready[kind] = shell

    def start(self, kind: str, line: bytes) -> paramiko.Channel | None:
        """A ready shell that runs `line`, or None (there is none, or it has gone)."""
        shell = self.take(kind)
        if shell is None:
            return None
        try:
            shell.sendall(b"%d\n%s" % (len(line), line))
        except UNREACHABLE:
            return None
        return shell


class Keeper:
    """The held connection (`upstream`) and the commands' connections it serves."""

    def __init__(self, host: Host, held: Held, persist: int):
        self.host, self.held, self.persist = host, held, persist
        self.upstream: paramiko.Transport | None = None
        self.shells: ReadyShells | None = None
        self.key = paramiko.ECDSAKey.generate()
        self.commands: list[paramiko.Transport] = []
        self.commands_lock = threading.Lock()
        self.used_at = time.monotonic()
        self.ending = threading.Event()

    def answers(self) -> bool:
        """Whether the machine replies to a keepalive in time; if not, everything ends."""
        if answers(self.upstream):
            return True
        self.ending.set()
        return False

    def serve(self) -> None:
        self.upstream = self.host.connect(kept=False).client.get_transport()
        self.shells = ReadyShells(self.upstream)
        for kind in READY_SHELLS:
            self.shells.prepare_later(kind)
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
            with self.commands_lock:
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
        with self.commands_lock:
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
        command = command.encode() if isinstance(command, str) else command
        root = AS_ROOT.encode()
        kind, line = ("root", command[len(root) :]) if command.startswith(root) else ("user", command)
        then = lambda: self.keeper.shells.prepare_later(kind)  # noqa: E731
        if (shell := self.keeper.shells.start(kind, line)) is not None:
            threading.Thread(target=relay, args=(channel, shell, then), daemon=True).start()
            return True
        return self.bridge(channel, lambda upstream: upstream.exec_command(command), then)

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        return self.bridge(channel, lambda upstream: upstream.invoke_subsystem(name), lambda: None)

    def check_global_request(self, kind: str, msg) -> bool:
        """A command's keepalive (`commands.responsive`) is answered only when the machine answers;
        when it does not, the command's connection ends as it would without a keeper."""
        if kind != "keepalive@openssh.com":
            return False
        if self.keeper.answers():
            return True
        time.sleep(ANSWER_SECONDS)  # the keeper closes this connection meanwhile
        return False

    def bridge(self, channel: paramiko.Channel, start, then) -> bool:
        try:
            upstream = self.keeper.upstream.open_session(timeout=CONNECT_TIMEOUT)
            start(upstream)
        except UNREACHABLE:
            return False
        threading.Thread(target=relay, args=(channel, upstream, then), daemon=True).start()
        return True


def relay(command: paramiko.Channel, upstream: paramiko.Channel, then) -> None:
    """Copy a channel's streams both ways until both ends are done, then its exit status; then
    call `then`."""

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
    then()


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    host = Host.of_spec(spec)
    held = host.held
    held.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        lock = (held.folder / "lock").open("w")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another keeper holds this machine, or the folder went with the one that ended
    with lock:
        (held.folder / "pid").write_text(f"{os.getpid()}\n")  # from now on, `Held.release` can stop it
        keeper = Keeper(host, held, spec["persist"])

        def stop(*_):
            keeper.ending.set()
            if keeper.upstream is None:  # still connecting, for up to CONNECT_TIMEOUT
                raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        try:
            keeper.serve()
        except (LabError, *UNREACHABLE) as error:
            print(f"keeper of {host.where}: {error or type(error).__name__}", file=sys.stderr)
            return 1
        finally:
            held.forget(os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
