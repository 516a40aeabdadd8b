"""lab.check's grading, on output in the formats of bpflab's own solutions and of wrong attempts."""

import dataclasses
import json
from pathlib import Path

import pytest
from rich.console import Console

from bpflab import grading
from bpflab.catalog import exercise_of, load_catalog, load_exercises, new_exercise
from bpflab.config import PROJECT_ROOT
from bpflab.errors import LabError


def buffer_lines(messages: dict[int, str]) -> list[str]:
    """hello-buffer's format: PID UID COMMAND MESSAGE."""
    return [f"{'PID':>7} {'UID':>6} {'COMMAND':<16} MESSAGE"] + [
        f"{pid:>7} {1000:>6} {'bash':<16} {message}" for pid, message in messages.items()
    ]


def source_of(*labs: str) -> str:
    return "\n".join(
        (PROJECT_ROOT / folder / f"{lab}{suffix}").read_text()
        for lab in labs
        for folder, suffix in (("labs", ".py"), ("bpf", ".bpf.c"))
    )


def test_odd_even_passes_with_one_message_per_parity():
    verdict = grading.grade(
        1, buffer_lines({pid: "Even: hi" if pid % 2 == 0 else "Odd: hello" for pid in range(400, 412)}), ""
    )
    assert verdict.passed, verdict.detail


@pytest.mark.parametrize(
    "messages, hint",
    [
        ({pid: "Hello World" for pid in range(400, 412)}, "for even and odd PIDs alike"),
        ({pid: "Even" if pid % 3 == 0 else "Odd" for pid in range(400, 412)}, "should always get the same message"),
        ({}, "No event line"),
    ],
)
def test_odd_even_fails_with_a_hint(messages, hint):
    verdict = grading.grade(1, buffer_lines(messages), "")
    assert not verdict.passed and hint in verdict.detail


def test_more_syscalls_needs_counts_that_execve_alone_never_reaches():
    solution = ["all (one program): ID 1000: 231   ID 0: 40", "  openat  ID 1000: 118", "  write   ID 1000: 104"]
    assert grading.grade(2, solution, source_of("hello-map-syscalls")).passed
    start = grading.grade(2, ["ID 1000: 3   ID 0: 5", "ID 1000: 4   ID 0: 7"], source_of("hello-map"))
    assert not start.passed and "reached 7 at most" in start.detail and "openat and write" in start.detail
    every = grading.grade(2, ["ID 1000: 20412"], source_of("syscall-count-by-uid"))
    assert not every.passed and "exercise 3" in every.detail


def test_every_syscall_per_user_tells_a_per_syscall_count_from_a_per_user_one():
    assert grading.grade(3, ["ID 1000: 20412   ID 0: 388"], source_of("syscall-count-by-uid")).passed
    assert grading.grade(3, ["@[1000]: 20412"], "").passed  # bpftrace's format
    per_syscall = grading.grade(3, ["getppid (110): 20000   read (0): 6000"], "")
    assert not per_syscall.passed and "exercise 5" in per_syscall.detail
    execve_only = grading.grade(3, ["ID 1000: 12   ID 0: 3"], source_of("hello-map"))
    assert not execve_only.passed and "reached 12 at most" in execve_only.detail


def test_macro_attached_reads_the_code_not_its_comments():
    lines = ["bash 1234 Executing a program", "cat 1235 Another syscall: 0 (read)"]
    assert grading.grade(4, lines, source_of("hello-tail-auto")).passed
    start = grading.grade(4, lines, source_of("hello-tail"))
    assert not start.passed and "no RAW_TRACEPOINT_PROBE(sys_enter)" in start.detail
    both = source_of("hello-tail-auto") + '\nb.attach_raw_tracepoint(tp="sys_enter", fn_name="hello")\n'
    assert "still calls attach_raw_tracepoint" in grading.grade(4, lines, both).detail
    commented = source_of("hello-tail-auto") + "\n# no b.attach_raw_tracepoint(...) needed\n"
    assert grading.grade(4, lines, commented).passed


def test_per_syscall_wants_getppid_by_name_or_number():
    assert grading.grade(5, ["getppid (110): 20011   read (0): 240   openat (257): 80"], "").passed
    assert grading.grade(5, ["173: 20003   63: 300"], "").passed  # arm64 numbers, no names
    per_user = grading.grade(5, ["ID 1000: 20412   ID 0: 388"], "")
    assert not per_user.passed and "not by user ID" in per_user.detail
    few = grading.grade(5, ["ID 1000: 12"], "")
    assert not few.passed and "the highest count was 12" in few.detail


def test_every_exercise_has_a_grader_a_start_and_a_solution_in_the_catalog():
    catalog, exercises = load_catalog(PROJECT_ROOT), load_exercises(PROJECT_ROOT)
    assert sorted(exercises) == sorted(grading.GRADERS) == [1, 2, 3, 4, 5]
    for exercise in exercises.values():
        assert exercise.start in catalog and exercise.solution in catalog


def test_lab_new_for_an_exercise_starts_from_where_it_starts(tmp_path: Path):
    for folder in ("labs", "bpf"):
        (tmp_path / folder).mkdir()
    for name, folder, suffix in (("hello-buffer", "labs", ".py"), ("hello-buffer", "bpf", ".bpf.c")):
        (tmp_path / folder / f"{name}{suffix}").write_text((PROJECT_ROOT / folder / f"{name}{suffix}").read_text())
    exercise = load_exercises(PROJECT_ROOT)[1]
    program = new_exercise(tmp_path, "odd-even", "hello", load_catalog(PROJECT_ROOT), exercise)
    assert 'labkit.source("odd-even")' in program.read_text() and exercise_of(program) == 1
    assert (program.parent / "odd-even.bpf.c").read_text() == (PROJECT_ROOT / "bpf" / "hello-buffer.bpf.c").read_text()


def test_an_unknown_exercise_lists_the_book_s_five():
    from bpflab.catalog import exercise

    with pytest.raises(LabError, match="There is no exercise '6'.*1: hello-buffer"):
        exercise(load_exercises(PROJECT_ROOT), "6")


def test_every_bcc_lab_can_be_the_start_of_a_learners_program():
    """lab.new renames the kernel side the program loads: each lab names its own literally."""
    catalog = load_catalog(PROJECT_ROOT)
    for lab in (lab for lab in catalog.values() if lab.kind == "bcc"):
        assert f'labkit.source("{lab.name}")' in (PROJECT_ROOT / "labs" / f"{lab.name}.py").read_text(), lab.name


def test_a_rooms_progress_shows_each_seats_best_per_exercise(tmp_path: Path):
    """lab.check exercises: the board and the report's table, from the same checks."""
    from bpflab import console, report
    from bpflab.run import Check

    exercises = load_exercises(PROJECT_ROOT)
    seats = {
        "lab": [
            Check("try1/try1.py", 1, "FAIL", "Every event said 'Hello World'", None),
            Check("odd-even/odd-even.py", 1, "PASS", "even PIDs said 'Even: hi'", "20261208T000000Z-check-odd-even"),
            Check("mine/mine.py", 3, "FAIL", "The counts reached 12 at most", "20261208T000001Z-check-mine"),
        ],
        "lab2": [],
    }
    rendered = Console(width=400, record=True)
    original, console.console = console.console, rendered
    try:
        console.progress(exercises, seats)
    finally:
        console.console = original
    board = rendered.export_text()
    lab, lab2 = (line for line in board.splitlines() if line.strip("│ ").startswith(("lab ", "lab2")))
    assert "PASS odd-even/odd-even.py" in lab and "try1" not in lab and "FAIL mine/mine.py" in lab
    assert lab.count("not tried") == 3 and lab2.count("not tried") == 5
    folder = tmp_path / "20261208T000002Z-check-room"
    (folder / "lab" / "20261208T000000Z-check-odd-even").mkdir(parents=True)
    (folder / "lab" / "20261208T000000Z-check-odd-even" / "output.log").write_text("...")
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "exercises": {str(n): e.title for n, e in exercises.items()},
                "hosts": {seat: [dataclasses.asdict(check) for check in checks] for seat, checks in seats.items()},
                "failed_hosts": {"lab3": "lab3 does not answer SSH"},
            }
        )
    )
    section = report.exercises_section(tmp_path)
    assert 'class="PASS" title="odd-even/odd-even.py: even PIDs said' in section
    assert 'href="20261208T000002Z-check-room/lab/20261208T000000Z-check-odd-even/output.log"' in section
    assert section.count("not tried") == 8 and "lab3 does not answer SSH" in section


def test_lab_inspect_reads_numbers_where_bpftool_had_no_btf():
    import importlib.util

    spec = importlib.util.spec_from_file_location("inspect_script", PROJECT_ROOT / "bpflab" / "scripts" / "inspect.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.plain(["0x3b", "0x00", "0x00", "0x00"]) == 59  # hello-tail's program array: execve's slot
    assert script.plain([{"cpu": 0, "value": ["0x1e", "0x00"]}, {"cpu": 1, "value": ["0x02", "0x01"]}]) == [30, 258]
    assert script.plain(1000) == 1000 and script.plain(["0x00"] * 16) == ["0x00"] * 16
    points = {}
    script.attach(points, 7, "raw_tracepoint sys_enter")
    script.attach(points, 7, "raw_tracepoint sys_enter")
    assert points == {7: ["raw_tracepoint sys_enter"]}


def test_lab_check_of_exercises_goes_to_the_seats_even_without_a_host_folder(monkeypatch, tmp_path):
    """An instructor's checkout has no exercises/ folder: `lab.check exercises` is the seats' own."""
    from bpflab import config, orchestrate

    asked = []
    monkeypatch.setattr(orchestrate, "check_seats", lambda *args: asked.append(args))
    monkeypatch.chdir(tmp_path)
    orchestrate.check(config.load(), "exercises", "", "", "all")
    assert len(asked) == 1 and asked[0][2:] == ("", "all")
