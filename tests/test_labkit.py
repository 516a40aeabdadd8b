"""labkit runs in the VM; its syscall-table parsing is plain Python and tested here."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "labs"))
import labkit  # noqa: E402

X86 = "#define __NR_read 0\n#define __NR_execve 59\n#define __NR_timer_create 222\n"
GENERIC = "#define __NR3264_mmap 222\n#define __NR_execve 221\n#define __NR_timer_create 107\n"


@pytest.mark.parametrize(
    "machine, header, execve, n222", [("x86_64", X86, 59, "timer_create"), ("aarch64", GENERIC, 221, "mmap")]
)
def test_syscall_numbers_follow_the_architecture(monkeypatch, tmp_path, machine, header, execve, n222):
    path = tmp_path / "unistd.h"
    path.write_text(header)
    other = tmp_path / "other.h"
    other.write_text(X86 if header == GENERIC else GENERIC)
    monkeypatch.setattr(
        labkit,
        "HEADER_GLOBS",
        {"x86_64": [str(path if machine == "x86_64" else other)], "aarch64": [str(tmp_path / "missing.h"), str(path)]},
    )
    uname = labkit.os.uname()
    fake = type("U", (), {"release": uname.release, "machine": machine})
    monkeypatch.setattr(labkit.os, "uname", lambda: fake)
    assert labkit.syscall_numbers()["execve"] == execve
    assert labkit.syscall_names()[222] == n222


def test_readable_adds_syscall_names():
    assert labkit.readable("Another syscall: 39", {39: "getpid"}) == "Another syscall: 39 (getpid)"
    assert labkit.readable("Executing a program", {}) == "Executing a program"
