"""Fixtures for the real-VM tests: an isolated copy of the project per session.

The libvirt domain name contains a hash of the project folder, so a copy gets
its own VM and never touches the developer's lab VM in the checkout itself.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COPIES: list[Path] = []  # every project copy of this run: their VMs' console logs explain a failure
CONSOLE_TAIL_LINES = 40
PROJECT_FILES = ["Vagrantfile", "lab.yaml", "tasks.py", "bpflab", "labs", "bpf", "ansible"]
# `invoke test` runs two files at a time in this order (pytest-xdist, loadfile, not reordered):
# the longest VM file and the next start at once, the fast files fill in, the room file comes last,
# after the Debian 13 file, on that worker.
FIRST_FILES, LAST_FILES = ["test_labs_e2e.py", "test_distributions_e2e.py"], ["test_room_e2e.py"]


class Project:
    """A copy of the project with helpers to run its tasks like a user does."""

    def __init__(self, path: Path):
        self.path = path
        self.cleanups = []  # run after its VMs are destroyed
        self.env = {}  # for every command of the copy's

    def invoke(self, *args, timeout=1800, check=True, env=None):
        result = subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(self.path), **self.env, **(env or {})},
        )
        print(f"$ invoke {' '.join(args)}  -> {result.returncode}\n{result.stdout}")
        if check:
            assert result.returncode == 0, result.stdout
        return result

    def shell(self, command: str, machine: str | None = None) -> str:
        """`command` run as root in one of the copy's lab VMs (default: lab): its output."""
        from bpflab import config
        from bpflab.commands import remote_run
        from bpflab.hosts import Host
        from bpflab.vm import LabVM

        vm = LabVM(config.load(self.path / "lab.yaml"), machine)
        with Host.of_vm(vm).connect() as connection:  # closed: the tests poll, and sshd sessions add up
            return remote_run(connection, command, sudo=True, check=False).stdout

    def edit_lab_yaml(self, old: str, new: str) -> None:
        """Change one setting in the copy's lab.yaml, as a user would."""
        path = self.path / "lab.yaml"
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new, 1))


def copy_project(path: Path) -> Project:
    COPIES.append(path)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, path / name)
    return Project(path)


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    copy = copy_project(tmp_path_factory.mktemp("lab-project"))
    yield copy
    copy.invoke("lab.destroy", check=False)
    for cleanup in copy.cleanups:
        cleanup()


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        if name in FIRST_FILES:
            return FIRST_FILES.index(name)
        return len(FIRST_FILES) + (LAST_FILES.index(name) + 1 if name in LAST_FILES else 0)

    items.sort(key=rank)  # stable: each file's tests keep their order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A VM test that failed (a time limit too) carries the end of each VM's serial console: a guest
    that hung says why there, and the CI log then holds it."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or item.get_closest_marker("vm") is None:
        return
    for copy in COPIES:
        for log in sorted(copy.glob("logs/*/console.log")):
            lines = log.read_text(errors="replace").splitlines()[-CONSOLE_TAIL_LINES:]
            report.sections.append((f"console of {log.parent.name} ({log})", "\n".join(lines)))
