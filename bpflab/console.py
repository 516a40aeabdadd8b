"""Everything bpflab shows, decided here alone.

Stages emit typed events (a message, a long step's progress, a program's output lines, a
host's end) and return typed results; this module renders them: for one host, live lines
and a status line on a terminal, plain start/finish lines in logs; for a room (hosts at
work in parallel, each in its own thread), a board with one line per host and every
lasting line prefixed with its host. Tables are built here too, from the rows stages
return. `recording()` keeps the events, for tests of what a stage says.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

# In logs (not a terminal) lines are never wrapped, so that they stay whole for grep.
console = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())
TAIL_LINES = 15


@dataclass(frozen=True)
class Message:
    """A line for the user. `kind`: info, done (a step or fact in place), note (a detail), warning."""

    text: str
    kind: str = "info"


@dataclass(frozen=True)
class Progress:
    """A long step: `state` started, update (its latest `detail`), finished or failed (after `seconds`)."""

    title: str
    state: str
    seconds: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class Output:
    """Lines that a program printed, in the order it printed them."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class HostEnd:
    """A room's host finished its job, or failed (`error`: why)."""

    error: str = ""


Event = Message | Progress | Output | HostEnd
MARKS = {"info": "{}", "done": "[green]✓[/green] {}", "note": "[dim]{}[/dim]", "warning": "[yellow]![/yellow] {}"}


def styled(message: Message) -> str:
    return MARKS[message.kind].format(escape(message.text))


def write_lines(lines: list[str]) -> None:
    try:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()
    except OSError:  # the terminal was closed (SIGHUP): a run's log still gets every line
        pass


class Lone:
    """One host at work in the foreground: its lines as they are, a status line for a long step on a
    terminal (an inner step's while it lasts), and `… step` then `✓ step (Ns)` lines in logs."""

    def __init__(self):
        self.status = None
        self.steps: list[str] = []

    def show(self, event: Event) -> None:
        if isinstance(event, Message):
            console.print(styled(event))
        elif isinstance(event, Output):
            write_lines(list(event.lines))
        elif isinstance(event, Progress):
            self.progress(event)

    def progress(self, event: Progress) -> None:
        title = escape(event.title)
        if event.state == "started":
            self.steps.append(title)
            if console.is_terminal:
                self.status_line(title)
            else:
                console.print(f"… {title}")
        elif event.state == "update" and self.status is not None:
            self.status.update(f"{title} [dim]{event.seconds:.0f}s  {escape(event.detail)}[/dim]")
        elif event.state in ("finished", "failed"):
            if self.steps:
                self.steps.pop()
            self.status_line(self.steps[-1] if self.steps and console.is_terminal else None)
            mark = "[green]✓[/green]" if event.state == "finished" else "[red]✗[/red]"
            console.print(f"{mark} {title} [dim]({event.seconds:.1f}s)[/dim]")

    def status_line(self, title: str | None) -> None:
        """The terminal's one status line: `title`'s, or none."""
        if self.status is not None:
            self.status.stop()
            self.status = None
        if title is not None:
            self.status = console.status(title)
            self.status.start()


class Board:
    """One progress line per host while hosts work in parallel: a live table on a terminal,
    `host: ...` lines in logs; a program's lines go to stdout as `host | line`. Threads find it
    through `for_host`."""

    def __init__(self, hosts: list[str]):
        self.rows = {host: "[dim]waiting[/dim]" for host in hosts}
        self.width = max(len(host) for host in hosts)
        self.lock = threading.Lock()
        self.live = Live(self.render(), console=console, refresh_per_second=4) if console.is_terminal else None

    def render(self) -> Table:
        table = Table.grid(padding=(0, 2))
        for host, text in self.rows.items():
            table.add_row(f"[bold]{escape(host)}[/bold]", text)
        return table

    def __enter__(self):
        if self.live and not JSON_EVENTS:
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.stop()

    def show(self, host: str, event: Event) -> None:
        if isinstance(event, Message):
            self.note(host, styled(event))
        elif isinstance(event, Output):
            with self.lock:
                write_lines([f"{host:<{self.width}} | {line}" for line in event.lines])
        elif isinstance(event, HostEnd):
            self.line(
                host,
                f"[red]failed[/red] {escape(event.error.splitlines()[0][:100])}"
                if event.error
                else "[green]done[/green]",
            )
        elif isinstance(event, Progress):
            title = escape(event.title)
            if event.state == "started":
                self.line(host, f"… {title}")
                if not console.is_terminal:
                    self.note(host, f"… {title}")
            elif event.state == "update":
                self.line(host, f"{title} [dim]{event.seconds:.0f}s  {escape(event.detail)}[/dim]")
            else:
                mark = "[green]✓[/green]" if event.state == "finished" else "[red]✗[/red]"
                self.note(host, f"{mark} {title} [dim]({event.seconds:.1f}s)[/dim]")

    def line(self, host: str, text: str) -> None:
        """Replace the host's live line (terminal only: logs get the notes)."""
        with self.lock:
            self.rows[host] = text
            if self.live:
                self.live.update(self.render())

    def note(self, host: str, text: str) -> None:
        """A lasting line, prefixed with the host."""
        console.print(f"[bold]{escape(host)}[/bold]: {text}")


def as_json(host: str | None, event: Event) -> str:
    """One event as a JSON line: {"host": ..., "event": "message" | "progress" | "output" | "host_end", ...}."""
    kind = {Message: "message", Progress: "progress", Output: "output", HostEnd: "host_end"}[type(event)]
    return json.dumps({"host": host, "event": kind, **dataclasses.asdict(event)}, ensure_ascii=False)


_thread = threading.local()
_lone = Lone()
# BPFLAB_OUTPUT=json: every event as a JSON line on stdout (for scripts), nothing else shown.
JSON_EVENTS = os.environ.get("BPFLAB_OUTPUT") == "json"
_recordings: list[list[tuple[str | None, Event]]] = []


@contextmanager
def for_host(host: str, board: Board):
    """In this thread, events are the host's: they go to its line on the board."""
    _thread.host, _thread.board = host, board
    try:
        yield
    finally:
        _thread.host = _thread.board = None


def carried(work):
    """`work` as a function that, in whatever thread calls it, emits for the host this thread works
    for (a room's thread starts helpers: a run's reader, its trigger)."""
    host, board = getattr(_thread, "host", None), getattr(_thread, "board", None)
    if board is None:
        return work

    def in_context():
        with for_host(host, board):
            return work()

    return in_context


@contextmanager
def recording():
    """Keep every event emitted meanwhile, as (host, event) pairs (host None: a lone host)."""
    events: list[tuple[str | None, Event]] = []
    _recordings.append(events)
    try:
        yield events
    finally:
        _recordings.remove(events)


def emit(event: Event) -> None:
    board, host = getattr(_thread, "board", None), getattr(_thread, "host", None)
    for events in _recordings:
        events.append((host, event))
    if JSON_EVENTS:
        print(as_json(host, event), flush=True)
    elif board is not None:
        board.show(host, event)
    else:
        _lone.show(event)


def in_room() -> bool:
    """Whether this thread works for one host of a room (several hosts at once)."""
    return getattr(_thread, "board", None) is not None


def say(text: str) -> None:
    emit(Message(text))


def done(text: str) -> None:
    emit(Message(text, "done"))


def note(text: str) -> None:
    emit(Message(text, "note"))


def warn(text: str) -> None:
    emit(Message(text, "warning"))


def output(lines: list[str]) -> None:
    emit(Output(tuple(lines)))


class Step:
    """A named long step in progress: `update` shows its latest line of output."""

    def __init__(self, title: str):
        self.title = title
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, detail: str) -> None:
        emit(Progress(self.title, "update", self.elapsed, detail.strip()[:100]))


@contextmanager
def step(title: str, done: str | None = None):
    """Run a block as a visible step; show how long it took (as `done`) or that it failed."""
    current = Step(title)
    emit(Progress(title, "started"))
    try:
        yield current
    except BaseException:
        emit(Progress(title, "failed", current.elapsed))
        raise
    emit(Progress(done or title, "finished", current.elapsed))


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
    if not in_room():
        doctor_tables({"": rows})


def host_ready(changed: bool) -> None:
    """A room's host is set up (a lone host's summary comes at the end)."""
    if in_room():
        say("ready" + (" (provisioned)" if changed else " (nothing to provision)"))


def sync_results(differences: dict) -> None:
    """What a sync did on each host (a sync.Difference each)."""
    for host, difference in differences.items():
        prefix = f"{host}: " if len(differences) > 1 else ""
        console.print(
            escape(
                prefix
                + (
                    "Labs in the VM are up to date."
                    if difference.empty
                    else f"Synced: {len(difference.upload)} updated, {len(difference.delete)} deleted."
                )
            )
        )


def host_texts(texts: dict[str, str]) -> None:
    """A text that each host answered, as it is (one host) or under the host's name."""
    for host, text in texts.items():
        if len(texts) > 1:
            console.print(f"[bold]{escape(host)}[/bold]")
        print(text, end="" if text.endswith("\n") else "\n", flush=True)


def check_results(exercise, checks: dict) -> None:
    """lab.check: each host's verdict on the program, with what showed it or the hint."""
    for host, check in checks.items():
        colour = "green" if check.result == "PASS" else "red"
        where = f"{host}: " if len(checks) > 1 else ""
        console.print(
            f"{where}[{colour}]{check.result}[/{colour}] exercise {exercise.number} ({escape(exercise.title)}): "
            f"{escape(check.detail)}",
            highlight=False,
        )


def progress(exercises: dict, seats: dict) -> Table:
    """lab.check of each seat's exercises: seat x exercise, PASS, FAIL and its hint, or not tried
    (a seat with several programs for one exercise shows its best)."""
    table = Table(title="lab.check: exercises by seat")
    table.add_column("seat")
    for number in exercises:
        table.add_column(f"ex {number}")
    for seat, checks in seats.items():
        best = {}
        for check in checks:
            if best.get(check.exercise) is None or check.result == "PASS":
                best[check.exercise] = check
        cells = []
        for number in exercises:
            check = best.get(number)
            if check is None:
                cells.append("[dim]not tried[/dim]")
            elif check.result == "PASS":
                cells.append(f"[green]PASS[/green] {escape(check.program)}")
            else:
                cells.append(f"[red]FAIL[/red] {escape(check.program)}: {escape(check.detail)}")
        table.add_row(seat, *cells)
    console.print(table)
    return table


def inspection(found: dict[str, dict], as_json: bool = False, watching: bool = False) -> None:
    """lab.inspect: per host, the running lab's programs (where attached, runs and time) and its
    maps with their entries; a program's dump when one was asked for. JSON: one line per look.
    Watching on a terminal, each look replaces the one before."""
    if as_json:
        print(json.dumps(found), flush=True)
        return
    if watching and console.is_terminal:
        console.clear()
    for host, data in found.items():
        where = f" on {host}" if len(found) > 1 else ""
        programs = Table(title=f"{data['lab']}{where}: BPF programs", title_justify="left")
        for column in ("id", "type", "name", "attached to", "runs", "run time"):
            programs.add_column(column)
        for prog in data["programs"]:
            runs = "-" if prog["run_cnt"] is None else str(prog["run_cnt"])
            spent = "-" if prog["run_time_ns"] is None else f"{prog['run_time_ns'] / 1e6:.2f} ms"
            attached = "\n".join(prog["attached"]) or "-"
            programs.add_row(str(prog["id"]), prog["type"] or "?", escape(prog["name"]), escape(attached), runs, spent)
        console.print(programs)
        maps = Table(title=f"{data['lab']}{where}: maps", title_justify="left")
        for column in ("id", "type", "name", "entries"):
            maps.add_column(column, overflow="fold")
        for shown in data["maps"]:
            more = (
                f"\n... {shown['count'] - len(shown['entries'])} more" if shown["count"] > len(shown["entries"]) else ""
            )
            maps.add_row(
                str(shown["id"]),
                shown["type"] or "?",
                escape(shown["name"]),
                escape("\n".join(shown["entries"]) + more) or "-",
            )
        console.print(maps)
        if data["dump"]:
            console.print(escape(data["dump"]), highlight=False)


def verify_results(matrix: dict[str, list[dict] | None]) -> None:
    """A verify's rows per host (None: the host gave none): a lone host's table, a room's matrix."""
    if len(matrix) == 1 and None not in matrix.values():
        verify_table(next(iter(matrix.values())))
    else:
        verify_matrix(matrix)


def verify_table(rows: list[dict]) -> None:
    """One host's verify rows: lab, PASS/FAIL, timings, why."""
    table = Table(title="lab.verify")
    for column in ("lab", "result", "attach s", "first event s", "total s", "why"):
        table.add_column(column)
    for row in rows:
        colour = "green" if row["result"] == "PASS" else "red"
        table.add_row(
            row["lab"],
            f"[{colour}]{row['result']}[/{colour}]",
            str(row["time_to_attach_s"]),
            str(row["time_to_first_event_s"]),
            str(row["duration_s"]),
            escape("; ".join(row["problems"])),
        )
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
            cells.append(
                "[red]–[/red]"
                if row is None
                else "[green]PASS[/green]"
                if row["result"] == "PASS"
                else "[red]FAIL[/red]"
            )
        table.add_row(lab, *cells)
    console.print(table)
    return table


def fields(groups: list[list[tuple[str, str]]]) -> None:
    """Name/value blocks (lab.status), one block per machine, separated by a blank line."""
    print("\n\n".join("\n".join(f"{name:<15}{value}" for name, value in rows) for rows in groups))


def gathered_runs(found: list, as_json: bool = False) -> None:
    """lab.runs: (folder, RunRecord) pairs, newest first."""
    header = ["folder", "lab", "vm", "stopped", "exit_status", "lines", "duration_s"]
    rows = [(name, *(getattr(run, key) for key in header[1:])) for name, run in found]
    listing("Gathered runs", header, rows, as_json)


def labs(catalog: dict, as_json: bool = False) -> None:
    """lab.list: the catalog's labs."""
    rows = [(lab.name, lab.kind, lab.probe, lab.summary) for lab in catalog.values()]
    listing("Labs", ["name", "kind", "probe", "summary"], rows, as_json)


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
