"""The command line's contract: expected failures are one message and exit 1."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_bad_lab_yaml_is_a_message_not_a_traceback(tmp_path):
    bad = tmp_path / "lab.yaml"
    bad.write_text((ROOT / "lab.yaml").read_text().replace("cpus: 2", "cpus: lots"))
    result = invoke("lab.status", env={"BPFLAB_CONFIG": str(bad)})
    assert result.returncode == 1
    assert f"{bad.name}: vm.cpus: expected an integer from 1 to 64, got 'lots'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_every_documented_task_exists():
    listing = invoke("--list").stdout
    for name in (
        "host.setup",
        "host.teardown",
        "box.build",
        "lab.setup",
        "lab.up",
        "lab.halt",
        "lab.destroy",
        "lab.status",
        "lab.ssh",
    ):
        assert name in listing


def test_bad_run_input_is_refused_before_any_vm_is_touched():
    """This checkout has no VM: each answer must be about the input, not about the VM."""
    for args, message in (
        (["lab.run", "helo"], "Did you mean hello"),
        (["lab.run", "hello", "--duration", "abc"], "takes a whole number of seconds"),
        (["lab.verify", "--seconds", "soon"], "takes a whole number of seconds"),
        (["lab.verify", "--names", "hello-tial"], "Did you mean hello-tail"),
        (["lab.run", "x" * 5000], "(5000 characters)"),
        (["lab.run", "no/such/file.bt"], "does not exist"),
    ):
        result = invoke(*args)
        output = result.stdout + result.stderr
        assert result.returncode == 1 and message in output, output
        assert "Traceback" not in output and "does not exist yet" not in output and len(output) < 1500


# Every verb that acts on hosts runs over a group of them: --vm names this checkout's VMs, --inventory a room's.
HOST_VERBS = [
    ["lab.setup"],
    ["lab.provision"],
    ["lab.doctor"],
    ["lab.sync"],
    ["lab.bcc-export"],
    ["lab.verify"],
    ["lab.probe-args", "tracepoint:syscalls:sys_enter_openat"],
    ["lab.run", "hello"],
    ["lab.trace", "BEGIN { exit(); }"],
    ["lab.tool", "execsnoop"],
]


def test_every_host_verb_takes_an_inventory(tmp_path):
    """An inventory that is not there: each verb reads it (and so takes --inventory) before anything else."""
    for verb in HOST_VERBS:
        result = invoke(*verb, "--inventory", str(tmp_path / "room.yml"))
        output = result.stdout + result.stderr
        assert result.returncode == 1 and f"Cannot read the inventory {tmp_path / 'room.yml'}" in output, (verb, output)
        assert "Traceback" not in output
