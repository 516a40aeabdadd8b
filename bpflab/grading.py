"""Grading a learner's program for one of the book's chapter 2 exercises (`lab.check`).

A verdict comes from what the program printed while the exercise's trigger ran, and, for the
exercises about how a program attaches, from its source. Output formats are the learner's to
choose, so counts are read as "KEY: COUNT" anywhere in a line (hello-map's `ID 1000: 5`,
bpftrace's `@[1000]: 5`, `getppid (110): 5`). A FAIL says what was expected and what was seen,
never the solution.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    passed: bool
    detail: str  # PASS: what showed it; FAIL: the hint


PAIR = re.compile(r"([A-Za-z_]\w*|\d+)\)?\]?:\s+(\d+)\b")
GETPPID = {"getppid", "110", "173"}  # by name, or by number on x86_64 and on arm64
GETPPID_CALLS, ENOUGH = 20000, 5000  # the trigger's calls; a count that can only come from them
SYS_ENTER = re.compile(
    r"attach_raw_tracepoint\(\s*(tp\s*=\s*)?[bB]?[\"']sys_enter|RAW_TRACEPOINT_PROBE\(\s*sys_enter"
    r"|raw_tracepoint/sys_enter|tracepoint:raw_syscalls:sys_enter|rawtracepoint:sys_enter"
)
EVENT = re.compile(r"^\s*(\d+)\s+\d+\s+\S+\s+(\S.*?)\s*$")  # hello-buffer's PID UID COMMAND MESSAGE


def counts(lines: list[str]) -> list[tuple[str, int]]:
    return [(key, int(value)) for line in lines for key, value in PAIR.findall(line)]


def code_of(source: str) -> str:
    """The source without its comments: a comment that names a call is not a call."""
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.DOTALL)
    return re.sub(r"(^\s*#|//).*$", "", source, flags=re.MULTILINE)


def odd_even(lines: list[str], source: str) -> Verdict:
    said = {0: Counter(), 1: Counter()}
    for line in lines:
        if event := EVENT.match(line):
            said[int(event[1]) % 2][event[2]] += 1
    even, odd = said[0], said[1]
    if not even and not odd:
        return Verdict(
            False,
            "No event line (PID UID COMMAND MESSAGE, as hello-buffer prints them) came while the trigger "
            "started 12 programs: keep hello-buffer's perf buffer and its print_event.",
        )
    if len(even) > 1 or len(odd) > 1:
        return Verdict(
            False,
            f"Even PIDs said {shown(even)} and odd PIDs said {shown(odd)}: each kind of PID should always "
            "get the same message.",
        )
    if not even or not odd:
        return Verdict(False, f"Only {'odd' if odd else 'even'} PIDs came by this time: run lab.check again.")
    if set(even) == set(odd):
        return Verdict(
            False,
            f"Every event said {next(iter(even))!r}, for even and odd PIDs alike: the message should depend "
            "on whether the process ID is even or odd.",
        )
    return Verdict(True, f"even PIDs said {shown(even)}, odd PIDs said {shown(odd)}")


def not_on_sys_enter(source: str) -> Verdict | None:
    if SYS_ENTER.search(code_of(source)):
        return Verdict(
            False,
            "It counts on the sys_enter raw tracepoint, which every syscall passes: that is exercise 3. "
            "Exercise 2 counts execve, openat and write.",
        )
    return None


def more_syscalls(lines: list[str], source: str) -> Verdict:
    top = max((count for _, count in counts(lines)), default=None)
    if top is None:
        return Verdict(False, "Its output had no counts (KEY: COUNT, as hello-map prints `ID 1000: 5`).")
    if top < 100:
        return Verdict(
            False,
            f"The counts reached {top} at most, while the trigger opened a file and wrote to one 100 times "
            "without starting a program, which execve alone never sees: attach to openat and write too.",
        )
    return Verdict(True, f"a count reached {top} while the trigger opened and wrote 100 times")


def every_syscall_per_user(lines: list[str], source: str) -> Verdict:
    found = counts(lines)
    if any(key in GETPPID and count >= ENOUGH for key, count in found):
        return Verdict(
            False, "Its counts are keyed by syscall (getppid's came up): that is exercise 5. Key them by user ID."
        )
    top = max((count for key, count in found if key not in GETPPID), default=0)
    if top >= ENOUGH:
        return Verdict(True, f"a user ID's count reached {top} while the trigger made {GETPPID_CALLS} syscalls")
    return Verdict(
        False,
        f"The counts reached {top} at most, while the trigger made {GETPPID_CALLS} getppid calls as one user: "
        "every syscall should count, not only execve (all of them pass one raw tracepoint).",
    )


def uses_the_macro(source: str) -> Verdict | None:
    code = code_of(source)
    if not re.search(r"RAW_TRACEPOINT_PROBE\(\s*sys_enter\s*\)", code):
        return Verdict(False, "The kernel side has no RAW_TRACEPOINT_PROBE(sys_enter): the exercise is to use it.")
    if "attach_raw_tracepoint(" in code:
        return Verdict(
            False,
            "It still calls attach_raw_tracepoint(): with RAW_TRACEPOINT_PROBE, BCC attaches the program "
            "as it loads it.",
        )
    return None


def macro_attached(lines: list[str], source: str) -> Verdict:
    if not any("Executing a program" in line for line in lines):
        return Verdict(
            False,
            "No 'Executing a program' line came while the trigger started programs: execve's tail call "
            "should still run.",
        )
    return Verdict(True, "RAW_TRACEPOINT_PROBE(sys_enter) attached it, and execve's tail call printed")


def per_syscall(lines: list[str], source: str) -> Verdict:
    found = counts(lines)
    getppid = max((count for key, count in found if key in GETPPID), default=0)
    if getppid >= ENOUGH:
        return Verdict(True, f"getppid counted {getppid} times while the trigger called it {GETPPID_CALLS} times")
    top = max((count for key, count in found if key not in GETPPID), default=0)
    if top >= ENOUGH:
        return Verdict(
            False,
            f"A count reached {top}, but not under getppid (its name, or 110 on x86_64, 173 on arm64), "
            f"which the trigger called {GETPPID_CALLS} times: key the counts by syscall, not by user ID.",
        )
    return Verdict(
        False,
        f"No count of getppid (its name, or 110 on x86_64, 173 on arm64) reached {ENOUGH} while the trigger "
        f"called it {GETPPID_CALLS} times (the highest count was {max(top, getppid)}): count every syscall, "
        "keyed by its number.",
    )


GRADERS: dict[int, Callable[[list[str], str], Verdict]] = {
    1: odd_even,
    2: more_syscalls,
    3: every_syscall_per_user,
    4: macro_attached,
    5: per_syscall,
}
# What the source alone decides, before the program runs (a FAIL in a second, not after a compile).
SOURCE_CHECKS: dict[int, Callable[[str], Verdict | None]] = {2: not_on_sys_enter, 4: uses_the_macro}


def shown(messages: Counter) -> str:
    return " and ".join(f"{message!r} ({count}x)" for message, count in messages.most_common()) or "nothing"


def grade_source(number: int, source: str) -> Verdict | None:
    """A FAIL that the source (all the program's files) already shows, or None: run it."""
    return SOURCE_CHECKS[number](source) if number in SOURCE_CHECKS else None


def grade(number: int, lines: list[str], source: str) -> Verdict:
    """Exercise `number`'s verdict on a program's output lines and its source."""
    return grade_source(number, source) or GRADERS[number](lines, source)
