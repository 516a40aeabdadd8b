"""The learner's loop for real, on a provisioned VM: setup, run, stop, gather, verify."""

import json
import signal
import subprocess
import sys
import time

import pytest

from bpflab import config, connection
from bpflab.vm import LabVM

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def lab(project):
    """A lab VM brought up, provisioned (BCC from Debian's package) and synced by `lab.setup`."""
    project.invoke("host.setup")
    setup = project.invoke("lab.setup")
    assert "The lab VM is ready" in setup.stdout
    yield project
    project.invoke("lab.destroy", check=False)


def vm_shell(project, command):
    vm = LabVM(config.load(project.path / "lab.yaml"))
    return connection.remote_run(connection.connect(vm), command, sudo=True, check=False).stdout


def latest_run(project, name):
    folder = sorted((project.path / "runs").glob(f"*-{name}"))[-1]
    return folder, json.loads((folder / "run.json").read_text())


def nothing_left_in_vm(project):
    leftovers = vm_shell(project, "pgrep -af '[p]ython3 -u' ; grep -c bcc_ /sys/kernel/tracing/kprobe_events; "
                                  "test -e /run/bpflab-lab.pid && echo pidfile-left; true")
    return leftovers.split() == ["0"]


def test_provisioning_again_changes_nothing(lab):
    again = lab.invoke("lab.provision")
    assert "nothing to do" in again.stdout
    for check in ("BPF syscall", "kprobes", "BTF", "tracefs", "kernel headers", "import bcc", "bpftrace"):
        assert check in again.stdout
    assert "missing" not in again.stdout


def test_sync_without_changes_is_a_no_op(lab):
    assert "up to date" in lab.invoke("lab.sync").stdout


def test_run_with_trigger_and_duration(lab):
    result = lab.invoke("lab.run", "hello", "--duration", "4")
    assert "Hello World!" in result.stdout
    folder, record = latest_run(lab, "hello")
    assert record["stopped"] == "duration" and record["exit_status"] == 0 and record["leaked_probes"] == 0
    assert record["kernel"] and record["bcc"] and record["lines"] >= 2
    assert "Hello World!" in (folder / "output.log").read_text()
    assert nothing_left_in_vm(lab)


def test_ctrl_c_stops_the_program_and_leaves_nothing(lab):
    process = subprocess.Popen([sys.executable, "-m", "invoke", "lab.run", "hello-map"], cwd=lab.path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    for line in process.stdout:
        if "Hit Ctrl-C" in line:
            break
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    rest = process.stdout.read()
    assert process.wait(timeout=60) == 0, rest
    assert "Detaching." in rest
    _, record = latest_run(lab, "hello-map")
    assert record["stopped"] == "interrupted" and record["exit_status"] == 0
    assert nothing_left_in_vm(lab)


def test_two_runs_never_interleave(lab):
    first = subprocess.Popen([sys.executable, "-m", "invoke", "lab.run", "hello", "--duration", "12", "--no-trigger"],
                             cwd=lab.path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    for line in first.stdout:
        if "Hit Ctrl-C" in line:
            break
    second = lab.invoke("lab.run", "hello-file", "--duration", "2", check=False)
    first_output = first.stdout.read()
    assert first.wait(timeout=120) == 0
    assert second.returncode == 1 and "Another lab program is running" in second.stdout
    assert " opened " not in first_output
    _, record = latest_run(lab, "hello-file")
    assert record["stopped"] == "busy"


def test_learners_own_copy_runs_by_path(lab):
    lab.invoke("lab.new", "my-hello", "--template", "hello")
    result = lab.invoke("lab.run", "exercises/my-hello/my-hello.py", "--duration", "3", "--no-trigger")
    assert "Attached to execve" in result.stdout
    _, record = latest_run(lab, "my-hello")
    assert record["exit_status"] == 0


def test_compile_error_is_shown_readably(lab):
    folder = lab.path / "exercises" / "broken"
    lab.invoke("lab.new", "broken", "--template", "hello")
    source = folder / "broken.bpf.c"
    source.write_text(source.read_text().replace('bpf_trace_printk("Hello World!");', "return missing_name;"))
    result = lab.invoke("lab.run", "exercises/broken/broken.py", "--duration", "3", check=False)
    assert result.returncode == 1
    assert "did not compile" in result.stdout and "use of undeclared identifier 'missing_name'" in result.stdout
    assert "Traceback" not in result.stdout.split("did not compile")[1]


@pytest.mark.parametrize("args, message", [
    (["lab.run", "helo"], "Did you mean hello"),
    (["lab.run", "no/such/file.py"], "does not exist"),
    (["lab.run", "hello", "--duration", "-3"], "--duration must be"),
])
def test_bad_input_is_one_message(lab, args, message):
    result = lab.invoke(*args, check=False)
    assert result.returncode == 1 and message in result.stdout and "Traceback" not in result.stdout


def test_every_lab_passes_verify(lab):
    result = lab.invoke("lab.verify", "--seconds", "8", check=False)
    assert result.returncode == 0, result.stdout
    summary = json.loads(sorted((lab.path / "runs").glob("*-verify/summary.json"))[-1].read_text())
    assert len(summary) == 11 and all(row["result"] == "PASS" for row in summary)


def test_verify_fails_when_the_kernel_side_does_nothing(lab):
    source = lab.path / "bpf" / "hello.bpf.c"
    original = source.read_text()
    source.write_text(original.replace('bpf_trace_printk("Hello World!");', ""))
    try:
        result = lab.invoke("lab.verify", "--names", "hello", "--seconds", "5", check=False)
    finally:
        source.write_text(original)
    assert result.returncode == 1 and "FAIL" in result.stdout and "no line matched 'Hello World!'" in result.stdout
