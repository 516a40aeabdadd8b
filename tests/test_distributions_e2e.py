"""A second kernel generation and ready seats, for real: the host set up and a Debian 13 box built
here once, as a ready seat (the Vagrantfile valid, a missing VM explained); a VM of it (kernel 6.12,
BCC 0.31, bpftrace 0.23) has nothing to provision and passes a lab of each kind; a package added to
lab.yaml since is installed by Fabric; `lab.reset` undoes a learner's damage (Vagrant's engine);
`box.package` packs the VM, and a seat's VM from that box has nothing to provision; last, a kernel
that crashes is explained from the VM's serial console."""

import json
import os
import re
import subprocess
import tarfile

import pytest

from bpflab.runs import verify_rows

from boxes import remove_box
from conftest import copy_project

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def trixie(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("trixie"))
    project.edit_lab_yaml("distribution: debian-12", "distribution: debian-13")
    project.invoke("host.setup")
    project.ready_boxes = []
    yield project
    project.invoke("lab.destroy", check=False)
    for name in project.ready_boxes:  # each packaging makes a new box: leave none behind
        remove_box(name)


def test_the_box_is_built_once_and_a_missing_vm_says_what_to_do(trixie):
    validate = subprocess.run(
        ["vagrant", "validate"],
        cwd=trixie.path,
        capture_output=True,
        text=True,
        env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"},
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    trixie.invoke("box.build")
    assert "is cached" in trixie.invoke("box.build").stdout
    missing = trixie.invoke("lab.ssh", check=False)
    assert missing.returncode == 1 and "invoke lab.up" in missing.stdout and "Traceback" not in missing.stdout


@pytest.mark.timeout(1200)
def test_a_debian_13_vm_from_the_ready_box_built_here_has_nothing_to_provision(trixie):
    setup = trixie.invoke("lab.setup").stdout
    assert re.search(r"Box: bpflab/debian-13-[0-9a-f]{12} \(built here from the debian-13 archive\)", setup)
    assert re.search(r"VM: debian-13 amd64, kernel 6\.12\.\S+; BCC: package", setup), setup
    assert "Provisioning: nothing to do, the VM was up to date." in setup and "Installing" not in setup
    assert "is ready and the labs are in it" in setup
    assert "missing" not in trixie.invoke("lab.doctor").stdout


def test_a_package_added_to_lab_yaml_since_the_box_is_installed(trixie):
    """The ready seat was made for lab.yaml as it was: provisioning notices the change and closes the gap."""
    original = (trixie.path / "lab.yaml").read_text()
    trixie.edit_lab_yaml(
        "packages: [python3, arping, netperf, iperf, bpftrace, bpftool]\n"
        "      bcc_build: [zip, bison, build-essential, cmake, flex, git, libedit-dev, libllvm19",
        "packages: [python3, arping, netperf, iperf, bpftrace, bpftool, tree]\n"
        "      bcc_build: [zip, bison, build-essential, cmake, flex, git, libedit-dev, libllvm19",
    )
    try:
        changed = trixie.invoke("lab.provision").stdout
    finally:
        (trixie.path / "lab.yaml").write_text(original)
    assert "comes from a ready box made on" in changed and "Installing 1 packages" in changed
    assert trixie.shell("command -v tree").strip() == "/usr/bin/tree"


# One lab of each kind the kernel and BCC must carry: a kprobe and the trace pipe, a hash map,
# a perf buffer, a ring buffer, tail calls from a raw tracepoint, and bpftrace. (Debian 12 runs all.)
EACH_KIND = ["hello", "hello-map", "hello-buffer", "hello-file-ring-buffer", "hello-tail", "hello-bpftrace"]


def test_a_lab_of_each_kind_passes_verify_on_debian_13(trixie):
    result = trixie.invoke("lab.verify", "--seconds", "5", *(f"--names={name}" for name in EACH_KIND), check=False)
    summary_file = sorted((trixie.path / "runs").glob("*-verify/summary.json"))[-1]
    summary = json.loads(summary_file.read_text())
    rows = verify_rows(summary_file)["lab"]
    assert result.returncode == 0 and [row["lab"] for row in rows] == EACH_KIND, result.stdout
    assert all(row["result"] == "PASS" for row in rows), summary


def test_a_broken_seat_is_put_back_to_its_ready_snapshot_by_vagrants_engine_too(trixie):
    """`lab.setup` took the ready snapshot of this Vagrant VM (vagrant-libvirt's domain): what a
    learner broke since is undone by `lab.reset`, and a lab runs right after."""
    assert re.search(r"engine\s+vagrant", trixie.invoke("lab.status").stdout)
    trixie.shell("touch /etc/broken-by-a-learner")
    assert "The lab VM is back to its ready state." in trixie.invoke("lab.reset").stdout
    assert trixie.shell("test -e /etc/broken-by-a-learner && echo broken || echo clean").strip() == "clean"
    assert "Hello World!" in trixie.invoke("lab.run", "hello", "--duration", "3").stdout


@pytest.mark.timeout(1200)
def test_a_seat_from_a_packaged_box_has_nothing_to_provision(trixie, tmp_path_factory):
    source_machine_id = trixie.shell("cat /etc/machine-id").strip()
    ready = tmp_path_factory.mktemp("ready") / "seat.box"
    packed = trixie.invoke("box.package", "--output", str(ready)).stdout
    assert f"Ready box: {ready}" in packed and "is halted" in packed
    with tarfile.open(ready) as box:
        assert box.getnames()[0] == "bpflab.json"
        assert {"metadata.json", "Vagrantfile", "box.img", "vagrant_private_key"} <= set(box.getnames())
        about = json.loads(box.extractfile("bpflab.json").read())
    assert about["distribution"] == "debian-13" and about["kernel"].startswith("6.12.")
    trixie.ready_boxes.append(f"bpflab/debian-13-ready-{about['id']}")

    trixie.invoke("lab.destroy")
    trixie.edit_lab_yaml("box: local", f"box: {ready}")
    seat = trixie.invoke("lab.setup").stdout
    assert f"Box: bpflab/debian-13-ready-{about['id']} (the ready box {ready})" in seat
    assert "Provisioning: nothing to do, the VM was up to date." in seat and "Installing" not in seat
    assert "missing" not in trixie.invoke("lab.doctor").stdout
    assert "PASS" in trixie.invoke("lab.verify", "--names", "hello", "--seconds", "5").stdout
    # The seat is its own machine, and nothing of the build or the source VM's logs came along.
    assert trixie.shell("cat /etc/machine-id").strip() not in ("", source_machine_id)
    assert trixie.shell("ls /var/lib/apt/lists | grep -c _Packages || true").strip() == "0"


def test_a_kernel_that_crashes_is_explained_from_the_vms_console(trixie):
    """A real panic (sysrq) in the middle of a run: the run keeps its output and its message shows
    the kernel's last words from logs/lab/console.log; so does every later command that needs SSH."""
    crash = "sudo sh -c 'echo c > /proc/sysrq-trigger'"
    result = trixie.invoke("lab.run", "hello", "--duration", "60", "--trigger", crash, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert "reported its status" in result.stdout
    folder = sorted((trixie.path / "runs").glob("*-hello"))[-1]
    assert json.loads((folder / "run.json").read_text())["stopped"] == "connection-lost"
    assert (folder / "output.log").exists()
    console = trixie.path / "logs" / "lab" / "console.log"
    assert f"Its console log {console} shows the kernel in trouble:" in result.stdout
    assert "Kernel panic - not syncing: sysrq triggered crash" in result.stdout
    doctor = trixie.invoke("lab.doctor", check=False)
    assert doctor.returncode == 1 and "sysrq triggered crash" in doctor.stdout and "Traceback" not in doctor.stdout
