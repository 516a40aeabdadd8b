"""What bpflab shows, decided in console.py alone: one recorded stream of a stage's events, rendered
for a lone host, for a room's board (in a log: no terminal) and as JSON lines."""

import io
import json

import pytest
from rich.console import Console

from bpflab import console
from bpflab.commands import in_background
from bpflab.console import HostEnd, Message, Output, Progress

STREAM = [
    Progress("Installing 3 packages", "started"),
    Progress("Installing 3 packages", "update", 2.0, "Unpacking clang"),
    Progress("Installed 3 packages", "finished", 4.25),
    Message("Packages: all installed", "done"),
    Message("kernel 6.1.0-28-amd64", "note"),
    Message("sudo asked for a password [seat-b]", "warning"),
    Message("Provisioning: nothing to do"),
    Output(("Hello World!", "Hello [World]!")),
    Progress("Building BCC", "failed", 1.5),
]


@pytest.fixture
def shown(monkeypatch):
    """What console prints on stderr, as a log gets it (no terminal, lines never wrapped)."""
    text = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=text, highlight=False, soft_wrap=True, width=80))
    return text


def test_a_lone_host_gets_its_lines_as_they_are(shown, capsys):
    display = console.Lone()
    for event in STREAM:
        display.show(event)
    assert shown.getvalue().splitlines() == [
        "… Installing 3 packages",
        "✓ Installed 3 packages (4.2s)",
        "✓ Packages: all installed",
        "kernel 6.1.0-28-amd64",
        "! sudo asked for a password [seat-b]",
        "Provisioning: nothing to do",
        "✗ Building BCC (1.5s)",
    ]
    assert capsys.readouterr().out == "Hello World!\nHello [World]!\n"  # a program's lines: stdout, untouched


def test_a_room_prefixes_every_lasting_line_with_its_host(shown, capsys):
    board = console.Board(["lab", "lab2"])
    with board:
        for event in STREAM:
            board.show("lab2", event)
        board.show("lab", HostEnd())
        board.show("lab2", HostEnd("does not answer SSH\nmore"))
    assert shown.getvalue().splitlines() == [
        "lab2: … Installing 3 packages",
        "lab2: ✓ Installed 3 packages (4.2s)",
        "lab2: ✓ Packages: all installed",
        "lab2: kernel 6.1.0-28-amd64",
        "lab2: ! sudo asked for a password [seat-b]",
        "lab2: Provisioning: nothing to do",
        "lab2: ✗ Building BCC (1.5s)",
    ]
    assert capsys.readouterr().out == "lab2 | Hello World!\nlab2 | Hello [World]!\n"
    assert board.rows == {"lab": "[green]done[/green]", "lab2": "[red]failed[/red] does not answer SSH"}


def test_json_lines_carry_every_event_whole():
    lines = [json.loads(console.as_json("lab", event)) for event in STREAM + [HostEnd("gone")]]
    assert lines[0] == {
        "host": "lab",
        "event": "progress",
        "title": "Installing 3 packages",
        "state": "started",
        "seconds": 0.0,
        "detail": "",
    }
    assert lines[3] == {"host": "lab", "event": "message", "text": "Packages: all installed", "kind": "done"}
    assert lines[7] == {"host": "lab", "event": "output", "lines": ["Hello World!", "Hello [World]!"]}
    assert lines[-1] == {"host": "lab", "event": "host_end", "error": "gone"}


def test_stages_emit_events_with_the_host_they_work_for(shown):
    """A step and its messages, once for a lone host and once in a room's thread."""

    def stage():
        with console.step("Syncing the labs", "Synced the labs"):
            console.done("3 files")

    with console.recording() as events:
        stage()
        with console.for_host("seat-a", console.Board(["seat-a"])):
            stage()
    kinds = [
        (host, type(event).__name__, getattr(event, "state", getattr(event, "kind", ""))) for host, event in events
    ]
    assert kinds == [
        (None, "Progress", "started"),
        (None, "Message", "done"),
        (None, "Progress", "finished"),
        ("seat-a", "Progress", "started"),
        ("seat-a", "Message", "done"),
        ("seat-a", "Progress", "finished"),
    ]
    assert events[2][1].title == "Synced the labs"


def test_a_helper_thread_of_a_rooms_host_emits_for_that_host(shown, capsys):
    """A run's reader and its trigger run in threads of their own: their lines are still the host's."""
    board = console.Board(["seat-a", "seat-b"])
    with console.recording() as events, console.for_host("seat-a", board):
        assert in_background(lambda: console.output(["Hello World!"])).wait(5)
    assert events == [("seat-a", Output(("Hello World!",)))]
    assert capsys.readouterr().out == "seat-a | Hello World!\n"
