"""The playbook is lint-clean under ansible-lint's default profile and parses."""

import os
import subprocess
import sys
from pathlib import Path

ANSIBLE = Path(__file__).resolve().parent.parent / "ansible"
BIN = Path(sys.executable).parent


def test_ansible_lint_default_profile_passes():
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--nocolor"],
        cwd=ANSIBLE,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout
    assert "Passed" in result.stdout


def test_playbook_syntax():
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", "site.yml"],
        cwd=ANSIBLE,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert result.returncode == 0, result.stdout
