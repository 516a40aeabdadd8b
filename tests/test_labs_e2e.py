"""The learner's loop for real, on a provisioned VM: setup, run, stop, gather, verify."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bpflab import config, connection
from fakebcc import fake_repository_tarball, use_fake_bcc
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


def ansible_playbook(project):
    """`ansible-playbook ansible/site.yml` against the lab VM, through `lab.inventory`; the changed count."""
    project.invoke("lab.inventory")
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", ".vagrant/bpflab/inventory.yml",
         "ansible/site.yml"], cwd=project.path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, timeout=1800, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    print(result.stdout)
    assert result.returncode == 0, result.stdout
    recap = re.search(r"changed=(\d+)\s+unreachable=0\s+failed=0", result.stdout)
    assert recap, result.stdout
    return int(recap.group(1))


def test_ansible_finds_nothing_to_do_after_fabric(lab):
    """The playbook reads the same lab.yaml: on a VM that `lab.setup` provisioned it changes nothing."""
    assert ansible_playbook(lab) == 0


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


@pytest.fixture(scope="module")
def fake_bcc(lab, tmp_path_factory):
    """Settings for a stand-in BCC repository served to the VM from /srv, with its own artifact folder."""
    folder = tmp_path_factory.mktemp("fake-bcc")
    settings = lab.path / "lab.yaml"
    original = settings.read_text()

    def use(install, version):
        use_fake_bcc(settings, original, install, version, folder / "artifacts")

    use.artifacts = folder / "artifacts"
    use.repository = fake_repository_tarball(folder)
    yield use
    settings.write_text(original)


def serve_fake_repository(project, fake_bcc):
    remote = connection.connect(LabVM(config.load(project.path / "lab.yaml")))
    remote.put(str(fake_bcc.repository), "/tmp/repo.tar.gz")
    connection.remote_run(remote, "mkdir -p /srv && tar -xzf /tmp/repo.tar.gz -C /srv && chown -R root: /srv",
                          sudo=True)


def test_bcc_source_build_mechanics(lab, fake_bcc):
    """`bcc.install: source` for real, with a stand-in for BCC's repository (GitHub is
    unreachable here): clone at a tag, build, install, stamp, export, skip, rebuild, fail.
    Runs after the labs: it replaces the distribution's BCC in the VM."""
    serve_fake_repository(lab, fake_bcc)
    fake_bcc("source", "v1")
    first = lab.invoke("lab.provision")
    assert "Removing the distribution's BCC" in first.stdout and "Building BCC v1" in first.stdout
    assert "BCC fake-v1" in first.stdout and "BCC artifact:" in first.stdout
    again = lab.invoke("lab.provision")
    assert "installed already" in again.stdout and "nothing to do" in again.stdout
    fake_bcc("source", "v2")
    rebuilt = lab.invoke("lab.provision")
    assert "Building BCC v2" in rebuilt.stdout and "BCC fake-v2" in rebuilt.stdout
    assert sorted(path.name for path in fake_bcc.artifacts.glob("*.json")) == [
        "bcc-v1-debian-12-amd64.json", "bcc-v2-debian-12-amd64.json"]
    fake_bcc("source", "v3-broken")
    broken = lab.invoke("lab.provision", check=False)
    assert broken.returncode == 1 and "the BCC build failed in the VM" in broken.stdout
    assert "error" in broken.stdout and (lab.path / "logs" / "provision.log").exists()
    assert "Traceback" not in broken.stdout


def test_bcc_export_packs_the_build_and_its_runtime_needs(lab, fake_bcc):
    """`lab.bcc-export` by hand (v2 is still installed: the v3 build failed)."""
    for artifact in fake_bcc.artifacts.iterdir():
        artifact.unlink()
    fake_bcc("source", "v2")
    exported = lab.invoke("lab.bcc-export")
    assert "Exporting BCC v2 (debian-12 amd64)" in exported.stdout
    metadata = json.loads((fake_bcc.artifacts / "bcc-v2-debian-12-amd64.json").read_text())
    assert metadata["built"]["version"] == "v2" and "libc6" in metadata["runtime_packages"]
    listing = subprocess.run(["tar", "-tzf", str(fake_bcc.artifacts / "bcc-v2-debian-12-amd64.tar.gz")],
                             capture_output=True, text=True, check=True).stdout.split()
    assert "usr/lib/libfakebcc.so" in listing and "usr/lib/python3/dist-packages/bcc/__init__.py" in listing


def test_ansible_provisions_a_fresh_vm(lab):
    """A new VM provisioned only by `ansible-playbook` (package mode): the checks and labs pass,
    and a second playbook run changes nothing."""
    lab.invoke("lab.destroy")
    lab.invoke("lab.up")
    assert ansible_playbook(lab) > 0
    assert "missing" not in lab.invoke("lab.doctor").stdout
    assert "All 2 labs passed" in lab.invoke("lab.verify", "--names", "hello", "--names", "hello-tail").stdout
    assert ansible_playbook(lab) == 0


def test_bcc_artifact_installs_into_a_vm_that_never_built_it(lab, fake_bcc):
    """`bcc.install: artifact`: the exported fake v2 goes into the new VM (which has only
    Debian's BCC) in place of a build, and the checks pass; a missing version is refused."""
    fake_bcc("artifact", "v2")
    installed = lab.invoke("lab.provision")
    assert "Removing the distribution's BCC" in installed.stdout
    assert "Installing BCC v2 from bcc-v2-debian-12-amd64.tar.gz" in installed.stdout
    assert "Building BCC" not in installed.stdout and "BCC fake-v2" in installed.stdout
    assert "missing" not in installed.stdout
    assert "nothing to do" in lab.invoke("lab.provision").stdout

    fake_bcc("artifact", "v9")
    refused = lab.invoke("lab.provision", check=False)
    assert refused.returncode == 1 and "has no BCC v9 built for debian-12 amd64" in refused.stdout
    assert "bcc-v2-debian-12-amd64" in refused.stdout and "Traceback" not in refused.stdout
