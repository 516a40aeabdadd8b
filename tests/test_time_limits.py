"""Every test has a time limit: one that runs over it fails with the reason, and a VM test's failure
report carries the end of each VM's serial console."""

import os
import re
import subprocess
import sys
import time

from conftest import ROOT

HANGING_VM_TEST = """
import time
import pytest
import conftest

@pytest.mark.vm
def test_a_vm_that_hangs(tmp_path):
    console = tmp_path / "project" / "logs" / "lab" / "console.log"
    console.parent.mkdir(parents=True)
    console.write_text("[  368.1] INFO: task jbd2/vda1-8:211 blocked for more than 120 seconds.\\n")
    conftest.COPIES.append(tmp_path / "project")
    time.sleep(120)
"""


def test_a_test_over_its_limit_fails_with_the_reason_and_the_consoles_end(tmp_path):
    (tmp_path / "test_hanging.py").write_text(HANGING_VM_TEST)
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "conftest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-o",
            "timeout=3",
            "-p",
            "no:cacheprovider",
            "-m",
            "vm",
            str(tmp_path / "test_hanging.py"),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])},
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Timeout (>3.0s)" in result.stdout and "1 failed" in result.stdout, result.stdout
    assert "console of lab" in result.stdout and "blocked for more than 120 seconds" in result.stdout


def test_the_suite_sets_a_limit_for_every_test():
    """The limit comes from the project's configuration, not from each test remembering one."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "tests/test_config.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    limit = re.search(r"^timeout: (\d+)\.0s$", result.stdout, re.MULTILINE)
    assert limit and 60 <= int(limit.group(1)) <= 1800, result.stdout
