"""Pure pieces of the run stage: catalog, stop line, expectations, compiler errors."""

import re
from pathlib import Path

import pytest

from bpflab.catalog import Lab, load_catalog, resolve
from bpflab.errors import LabError
from bpflab.run import Outcome, check_expectations, compiler_errors, free_folder, parse_stop
from bpflab.runs import RunRecord

ROOT = Path(__file__).resolve().parent.parent
BOOK_LABS = ["hello", "hello-file", "hello-map", "hello-buffer", "hello-file-ring-buffer", "hello-tail"]
BPFTRACE_COMPANIONS = {
    "hello-bpftrace": "hello",
    "hello-map-bpftrace": "hello-map",
    "hello-file-bpftrace": "hello-file",
    "syscall-count-bpftrace": "syscall-count",
}


def test_catalog_has_every_lab_with_both_sides_and_notes():
    catalog = load_catalog(ROOT)
    assert set(BOOK_LABS) <= set(catalog) and len(catalog) == len(BOOK_LABS) + 5 + len(BPFTRACE_COMPANIONS)
    for lab in catalog.values():
        if lab.kind == "bpftrace":
            assert (ROOT / "labs" / f"{lab.name}.bt").exists() and BPFTRACE_COMPANIONS[lab.name] in catalog
        else:
            assert lab.kind == "bcc"
            assert (ROOT / "labs" / f"{lab.name}.py").exists()
            assert (ROOT / "bpf" / f"{lab.name}.bpf.c").exists()
        assert lab.summary and lab.trigger and lab.expect
        assert re.search(r"[\u4e00-\u9fff]", lab.note), f"{lab.name} needs its Chinese note"
        for pattern in lab.expect + lab.reject:
            re.compile(pattern)


def test_unknown_lab_suggests_the_closest():
    with pytest.raises(LabError, match="Did you mean hello-tail"):
        resolve(load_catalog(ROOT), "hello-tial")


def test_stop_line():
    assert parse_stop("@@bpflab-stopped duration 0 0 0.412") == ("duration", 0, 0, 0.412)
    assert parse_stop("@@bpflab-stopped busy 75 0 -") == ("busy", 75, 0, None)
    assert parse_stop("Hello World!") is None


def outcome(lines, **record):
    base = {"lab": "demo", "stopped": "duration", "exit_status": 0, "leaked_probes": 0, "trigger_error": None}
    return Outcome(Path("/tmp"), RunRecord(**{**base, **record}), lines)


LAB = Lab("demo", "", "", "kprobe", "true", expect=[r"Hello World!"], reject=[r"Another syscall"])


@pytest.mark.parametrize(
    "lines, record, problem",
    [
        (["Attached. Tracing... Hit Ctrl-C to end."], {}, "no line matched"),
        (["Hello World!", "Another syscall: 3"], {}, "unwanted line"),
        (["Hello World!"], {"exit_status": 1, "stopped": "exited"}, "exit status 1"),
        (["Hello World!"], {"leaked_probes": 2}, "2 probe(s) left attached"),
        (["Hello World!"], {"trigger_error": "boom"}, "the trigger failed"),
    ],
)
def test_expectations_fail_for_each_reason(lines, record, problem):
    assert any(problem in text for text in check_expectations(LAB, outcome(lines, **record)))


def test_expectations_pass():
    assert check_expectations(LAB, outcome(["Hello World!"])) == []


def test_compiler_errors_are_extracted_with_context():
    lines = [
        "/virtual/main.c:2:37: error: expected ';' after expression",
        "    x()",
        "       ^",
        "noise",
        "2 errors generated.",
        "Traceback (most recent call last):",
    ]
    assert compiler_errors(lines) == ["main.c:2:37: error: expected ';' after expression", "    x()", "       ^"]


def test_run_folders_never_collide(tmp_path):
    from datetime import datetime, timezone

    now = datetime(2026, 11, 24, 17, 0, 0, tzinfo=timezone.utc)
    first = free_folder(tmp_path, "my lab", now)
    first.mkdir()
    second = free_folder(tmp_path, "my lab", now)
    assert first.name == "20261124T170000Z-my_lab" and second.name.endswith("-2")


# What the labs that number syscalls print on arm64 with arm64's table, and with x86_64's (the book's
# hard-coded numbers): there, x86_64's timer_create (222) is arm64's mmap, and openat (56) is x86_64's clone.
RIGHT_TABLE = {
    "hello-tail": [
        "timeout 301  Executing a program",
        "timeout 301  Creating a timer",
        "timeout 301  Some other timer operation",
        "python3 305  Another syscall: 81 (sync)",
    ],
    "syscall-count": ["openat (56): 310   mmap (222): 260   read (63): 120"],
}
X86_64_TABLE_ON_ARM64 = {
    "hello-tail": RIGHT_TABLE["hello-tail"] + ["python3 305  Creating a timer"] * 100,
    "syscall-count": ["clone (56): 310   timer_create (222): 260   uname (63): 120"],
}


@pytest.mark.parametrize("name", ["hello-tail", "syscall-count"])
def test_the_syscall_labs_pass_only_with_the_vms_own_numbers(name):
    lab = load_catalog(ROOT)[name]
    assert check_expectations(lab, outcome(RIGHT_TABLE[name])) == []
    assert check_expectations(lab, outcome(X86_64_TABLE_ON_ARM64[name])) != []
    if name == "hello-tail":
        tail_auto = load_catalog(ROOT)["hello-tail-auto"]
        assert check_expectations(tail_auto, outcome(X86_64_TABLE_ON_ARM64[name])) != []
