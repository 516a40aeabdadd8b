"""Running commands on the host and in a lab machine, and waiting for work in threads.

Both runners stream whole lines to a progress step and a log file as they
arrive, so a failure can show its last lines and point to the rest; both fail
with the same message shape.
"""

from __future__ import annotations

import collections
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import paramiko
from fabric import Connection

from .console import TAIL_LINES, Step, carried
from .errors import LabError

# bpflab's shell scripts, shared with the Ansible role.
SCRIPTS = Path(__file__).parent / "scripts"
# What a dropped or refused SSH connection surfaces as.
UNREACHABLE = (OSError, EOFError, socket.timeout, paramiko.SSHException)
# Before a command line, this runs all of the rest as root; a keeper (keeper.py) runs the rest
# in a root shell it keeps ready instead.
AS_ROOT = "sudo -n "
# How long a machine may take to answer a keepalive before it counts as gone: an emulated VM
# that compiles while other VMs share its host's cores has taken more than 5 s (a lost run).
ANSWER_SECONDS = 15


class LineSink:
    """Takes output in chunks and hands whole lines to a step, a log file and a callback:
    `on_line` for each line, or `on_lines` for each chunk's lines at once (a flood of output)."""

    def __init__(self, current: Step | None = None, log=None, on_line=None, stamp: bool = False, on_lines=None):
        self.current, self.log, self.on_line, self.stamp, self.on_lines = current, log, on_line, stamp, on_lines
        self.started = time.monotonic()
        self.pending = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def write(self, chunk: str) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split("\n")
        if self.on_lines:
            if lines:
                self.on_lines([line.rstrip("\r") for line in lines])
            return
        for line in lines:
            self.line(line)

    def line(self, line: str) -> None:
        line = line.rstrip("\r")
        self.tail.append(line)
        if self.log:
            prefix = f"[{time.monotonic() - self.started:6.1f}s] " if self.stamp else ""
            self.log.write(f"{prefix}{line}\n")
            self.log.flush()
        if self.current:
            self.current.update(line)
        if self.on_line:
            self.on_line(line)

    def flush(self) -> None:
        """Fabric flushes after every chunk; lines are only complete at a newline."""

    def finish(self) -> None:
        if self.pending:
            self.write("\n")


def failure(what: str, code: int, tail, log: Path | None, fix: str, where: str = "") -> LabError:
    """The one shape of a failed command: what, exit code, last lines, full log, what to do."""
    shown = "\n".join(f"    {line}" for line in tail)
    log_line = f"\n  Full log: {log}" if log else ""
    return LabError(f"{what} failed{where} (exit {code}). Last lines:\n{shown}{log_line}\n{fix}".rstrip())


def open_log(log: Path | None, command: str):
    if log is None:
        return None
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("a")
    handle.write(f"$ {command}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return handle


def run(
    command: list[str],
    *,
    current: Step | None = None,
    log: Path | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
    check: bool = True,
    what: str | None = None,
    fix: str = "",
) -> subprocess.CompletedProcess:
    """Run a host command; on failure raise a LabError ending with `fix` (what to do next)."""
    handle = open_log(log, shlex.join(command))
    sink = LineSink(current, handle, stamp=True)
    lines: list[str] = []
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    except FileNotFoundError:
        if handle:
            handle.close()
        raise LabError(f"`{command[0]}` is not installed on this host. {fix or 'Run `invoke host.setup`.'}") from None
    try:
        for line in process.stdout:
            lines.append(line)
            sink.write(line)
        process.wait()
    except BaseException:
        process.terminate()
        process.wait()
        raise
    finally:
        sink.finish()
        if handle:
            handle.close()
    if check and process.returncode != 0:
        raise failure(what or shlex.join(command), process.returncode, sink.tail, log, fix)
    return subprocess.CompletedProcess(command, process.returncode, "".join(lines), "")


def remote_run(
    connection: Connection,
    command: str,
    *,
    current: Step | None = None,
    log: Path | None = None,
    sudo: bool = False,
    check: bool = True,
    what: str = "",
    fix: str = "",
    on_line=None,
):
    """Run a shell command in the lab machine, streaming its lines; on failure show the last ones.

    Output and errors share one stream (2>&1) so the log reads in order.
    """
    handle = open_log(log, command)
    sink = LineSink(current, handle, on_line)
    wrapped = f"{AS_ROOT if sudo else ''}bash -c {shlex.quote(command)} 2>&1"
    try:
        result = connection.run(wrapped, hide=True, warn=True, out_stream=sink, in_stream=False)
    except UNREACHABLE as error:
        raise LabError(
            f"The SSH connection to the lab VM dropped during: {what or command} ({error}). "
            "Run the same command again: it picks up where it stopped."
        ) from None
    finally:
        sink.finish()
        if handle:
            handle.close()
    if check and result.exited != 0:
        raise failure(what or command, result.exited, sink.tail, log, fix, where=" in the VM")
    return result


def in_background(work) -> threading.Event:
    """Start work() in a daemon thread (what it shows is this thread's host's); the returned event
    is set when it has finished."""
    finished = threading.Event()
    work = carried(work)

    def body():
        try:
            work()
        finally:
            finished.set()

    threading.Thread(target=body, daemon=True).start()
    return finished


def wait_for(finished: threading.Event, tick=None, interrupted=None) -> None:
    """Wait for background work, calling tick() every 0.2 s and interrupted() on each Ctrl-C.

    An Event, not Thread.join: a join interrupted by Ctrl-C can report the thread
    as finished while it still runs. Without `interrupted`, Ctrl-C propagates.
    """
    while not finished.is_set():
        try:
            finished.wait(0.2)
            if tick:
                tick()
        except KeyboardInterrupt:
            if interrupted is None:
                raise
            interrupted()


def responsive(connection: Connection, timeout: float = ANSWER_SECONDS) -> bool:
    """Whether the machine at the other end of this connection still answers."""
    return answers(connection.client.get_transport(), timeout)


def answers(transport: paramiko.Transport | None, timeout: float = ANSWER_SECONDS) -> bool:
    """Whether the machine at the other end of this SSH transport still answers: a keepalive
    request that wants a reply, so nothing is started there (sshd refuses it, and that is an
    answer). A firewall that drops the connection, or a VM that vanished, gives no reply and
    never closes the TCP connection."""
    if transport is None or not transport.is_active():
        return False

    def ask():
        with suppress(UNREACHABLE):  # the transport died while asking: no answer
            transport.global_request("keepalive@openssh.com", wait=True)

    return in_background(ask).wait(timeout) and transport.is_active()


def open_channel(connection: Connection, command: str) -> paramiko.Channel:
    """A session channel running the command line `command` as root, its output and errors in
    one stream and its stdin open: for a long program that takes requests on stdin and streams lines."""
    channel = connection.client.get_transport().open_session()
    channel.set_combine_stderr(True)
    channel.exec_command(AS_ROOT + command)
    return channel


@contextmanager
def signals_as_interrupts():
    """While in the block, SIGTERM and SIGHUP (a closed terminal, a cancelled job, `timeout`)
    act like Ctrl-C, so whatever runs stops cleanly; the list yielded names those received."""
    received: list[int] = []

    def interrupt(number, _frame):
        received.append(number)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def with_variables(text: str, variables: dict) -> str:
    return "".join(f"{key}={shlex.quote(str(value))}\n" for key, value in variables.items()) + text


def script(name: str, **environment: str) -> str:
    """A shell script from bpflab/scripts (shared with the Ansible role), with its variables set first."""
    return with_variables((SCRIPTS / name).read_text(), environment)
