"""Everything bpflab shows: progress for long steps, one line per host, and the tables.

Stages return results and report progress through `say`, `warn` and `step`; this
module decides how that looks: a live status line or board on a terminal, plain
start/finish lines (prefixed with the host) in CI logs. Stages never build
tables themselves: they hand their rows to the functions at the end.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

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


def doctor_tables(checks: dict[str, list[tuple[str, bool, str]]]) -> None:
    """The doctor's (check, ok, detail) rows of each host: one table, titled with the host in a room."""
    for host, rows in checks.items():
        title = "What the labs need, checked in the VM" + (f": {host}" if len(checks) > 1 else "")
        table = Table(title=escape(title))
        for column in ("check", "result", "detail"):
            table.add_column(column)
        for name, ok, detail in rows:
            table.add_row(name, "[green]ok[/green]" if ok else "[red]missing[/red]", escape(detail))
        console.print(table)


def checks_found(rows: list[tuple[str, bool, str]]) -> None:
    """A host's doctor checks as a stage finds them: the table for a lone host (a room's board
    shows each host's verdict instead)."""
    if _board()[0] is None:
        doctor_tables({"": rows})


def host_ready(changed: bool) -> None:
    """A room's host is set up (a lone host's summary comes at the end)."""
    if _board()[0] is not None:
        say("ready" + (" (provisioned)" if changed else " (nothing to provision)"))


def sync_results(differences: dict) -> None:
    """What a sync did on each host (a sync.Difference each)."""
    for host, difference in differences.items():
        prefix = f"{host}: " if len(differences) > 1 else ""
        say(prefix + ("Labs in the VM are up to date." if difference.empty else
                      f"Synced: {len(difference.upload)} updated, {len(difference.delete)} deleted."))


def host_texts(texts: dict[str, str]) -> None:
    """A text that each host answered, as it is (one host) or under the host's name."""
    for host, text in texts.items():
        if len(texts) > 1:
            console.print(f"[bold]{escape(host)}[/bold]")
        print(text, end="" if text.endswith("\n") else "\n", flush=True)


def verify_table(rows: list[dict]) -> None:
    """One host's verify rows: lab, PASS/FAIL, timings, why."""
    table = Table(title="lab.verify")
    for column in ("lab", "result", "attach s", "first event s", "total s", "why"):
        table.add_column(column)
    for row in rows:
        colour = "green" if row["result"] == "PASS" else "red"
        table.add_row(row["lab"], f"[{colour}]{row['result']}[/{colour}]", str(row["time_to_attach_s"]),
                      str(row["time_to_first_event_s"]), str(row["duration_s"]), escape("; ".join(row["problems"])))
    console.print(table)


def verify_matrix(matrix: dict[str, list[dict] | None]) -> Table:
    """A lab x host table of PASS/FAIL; a host without results (None) gets a dash in every row."""
    labs = list(dict.fromkeys(row["lab"] for rows in matrix.values() if rows for row in rows))
    table = Table(title="lab.verify across the fleet")
    table.add_column("lab \\ host")
    for host in matrix:
        table.add_column(host)
    for lab in labs:
        cells = []
        for rows in matrix.values():
            row = next((row for row in rows or [] if row["lab"] == lab), None)
            cells.append("[red]–[/red]" if row is None else
                         "[green]PASS[/green]" if row["result"] == "PASS" else "[red]FAIL[/red]")
        table.add_row(lab, *cells)
    console.print(table)
    return table


def fields(groups: list[list[tuple[str, str]]]) -> None:
    """Name/value blocks (lab.status), one block per machine, separated by a blank line."""
    print("\n\n".join("\n".join(f"{name:<15}{value}" for name, value in rows) for rows in groups))


def listing(title: str, header: list[str], rows: list[tuple], as_json: bool = False) -> None:
    """A listing on stdout (lab.list, lab.runs): an aligned table, or JSON objects for scripts."""
    if as_json:
        print(json.dumps([dict(zip(header, row, strict=True)) for row in rows], indent=2))
        return
    table = Table(title=title, title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(escape("" if value is None else str(value)) for value in row))
    out = Console(highlight=False)
    (out if out.is_terminal else Console(highlight=False, width=160)).print(table)
