"""Progress for long steps and the host-side command runner.

Every long step shows what it is doing and for how long: a live status line on
a terminal, plain start/finish lines in CI logs. Commands stream into a log
file as they run, so a failure can show its last lines and point to the rest.
"""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from .errors import LabError

# In logs (not a terminal) lines are never wrapped, so that they stay whole for grep.
console = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())
TAIL_LINES = 15


class Board:
    """One progress line per host while hosts work in parallel: a live table on a
    terminal, `host: ...` lines in logs. Threads find it through `for_host`."""

    def __init__(self, hosts: list[str]):
        self.rows = {host: "[dim]waiting[/dim]" for host in hosts}
        self.lock = threading.Lock()
        self.live = Live(self.render(), console=console, refresh_per_second=4) if console.is_terminal else None

    def render(self) -> Table:
        table = Table.grid(padding=(0, 2))
        for host, text in self.rows.items():
            table.add_row(f"[bold]{escape(host)}[/bold]", text)
        return table

    def __enter__(self):
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.stop()

    def show(self, host: str, text: str) -> None:
        """Replace the host's live line (terminal only: logs get the notes)."""
        with self.lock:
            self.rows[host] = text
            if self.live:
                self.live.update(self.render())

    def note(self, host: str, text: str) -> None:
        """A lasting line, prefixed with the host."""
        console.print(f"[bold]{escape(host)}[/bold]: {text}")


_thread = threading.local()


@contextmanager
def for_host(host: str, board: Board):
    """In this thread, send say/warn/step output to the host's line on the board."""
    _thread.host, _thread.board = host, board
    try:
        yield
    finally:
        _thread.host = _thread.board = None


def _board():
    return getattr(_thread, "board", None), getattr(_thread, "host", None)


def say(message: str) -> None:
    board, host = _board()
    if board:
        board.note(host, message)
    else:
        console.print(message)


def warn(message: str) -> None:
    say(f"[yellow]![/yellow] {escape(message)}")


class Step:
    """A named long step: shows elapsed time and the latest line of its output."""

    def __init__(self, title: str):
        self.title = title
        self.started = time.monotonic()
        self.status = None
        self.board, self.host = _board()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, detail: str) -> None:
        detail = escape(detail.strip()[:100])
        line = f"{escape(self.title)} [dim]{self.elapsed:.0f}s  {detail}[/dim]"
        if self.board:
            self.board.show(self.host, line)
        elif self.status is not None:
            self.status.update(line)


@contextmanager
def step(title: str, done: str | None = None):
    """Run a block as a visible step; print how long it took or that it failed."""
    current = Step(title)
    if current.board:
        current.board.show(current.host, f"… {escape(title)}")
        if not console.is_terminal:
            current.board.note(current.host, f"… {escape(title)}")
    elif console.is_terminal:
        current.status = console.status(escape(title))
        current.status.start()
    else:
        console.print(f"… {escape(title)}")
    try:
        yield current
    except BaseException:
        if current.status:
            current.status.stop()
        say(f"[red]✗[/red] {escape(title)} [dim]({current.elapsed:.1f}s)[/dim]")
        raise
    if current.status:
        current.status.stop()
    say(f"[green]✓[/green] {escape(done or title)} [dim]({current.elapsed:.1f}s)[/dim]")


def failure(what: str, code: int, tail, log: Path | None, fix: str, where: str = "") -> LabError:
    """The one shape of a failed command: what, exit code, last lines, full log, what to do."""
    shown = "\n".join(f"    {line}" for line in tail)
    log_line = f"\n  Full log: {log}" if log else ""
    return LabError(f"{what} failed{where} (exit {code}). Last lines:\n{shown}{log_line}\n{fix}".rstrip())


def run(command: list[str], *, current: Step | None = None, log: Path | None = None,
        env: dict | None = None, cwd: Path | None = None, check: bool = True,
        what: str | None = None, fix: str = "") -> subprocess.CompletedProcess:
    """Run a host command, streaming its output to the step and an optional log.

    On failure raise LabError naming the command, its last lines and the log,
    followed by `fix` (what the user should do next).
    """
    full_env = {**os.environ, **(env or {})}
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    lines: list[str] = []
    log_file = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log_file = log.open("a")
        log_file.write(f"$ {shlex.join(command)}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    started = time.monotonic()
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, errors="replace",
                                   env=full_env, cwd=cwd)
    except FileNotFoundError:
        raise LabError(f"`{command[0]}` is not installed on this host. {fix or 'Run `invoke host.setup`.'}") from None
    try:
        for line in process.stdout:
            lines.append(line)
            tail.append(line.rstrip())
            if log_file:
                log_file.write(f"[{time.monotonic() - started:6.1f}s] {line}")
                log_file.flush()
            if current:
                current.update(line)
        process.wait()
    except BaseException:
        process.terminate()
        process.wait()
        raise
    finally:
        if log_file:
            log_file.close()
    result = subprocess.CompletedProcess(command, process.returncode, "".join(lines), "")
    if check and process.returncode != 0:
        raise failure(what or shlex.join(command), process.returncode, tail, log, fix)
    return result
