"""A second kernel generation and a ready box, for real: the host set up and a Debian 13 box built
here once (the Vagrantfile valid, a missing VM explained); a VM of it (kernel 6.12, BCC 0.31,
bpftrace 0.23) set up by one `lab.setup` passes a lab of each kind; then `box.package` packs it, and
a seat's VM from that ready box has nothing to provision."""

import json
import os
import re
import subprocess
import tarfile

import pytest

from bpflab import config
from bpflab.commands import remote_run
from bpflab.hosts import Host
from bpflab.vm import LabVM

from boxes import remove_box
from conftest import copy_project

pytestmark = pytest.mark.vm


def vm_shell(project, command):
    with Host.of_vm(LabVM(config.load(project.path / "lab.yaml"))).connect() as connection:
        return remote_run(connection, command, sudo=True, check=False).stdout.strip()


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
    validate = subprocess.run(["vagrant", "validate"], cwd=trixie.path, capture_output=True, text=True,
                              env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"})
    assert validate.returncode == 0, validate.stdout + validate.stderr
    trixie.invoke("box.build")
    assert "is cached" in trixie.invoke("box.build").stdout
    missing = trixie.invoke("lab.ssh", check=False)
    assert missing.returncode == 1 and "invoke lab.up" in missing.stdout and "Traceback" not in missing.stdout


def test_a_debian_13_vm_is_set_up_from_a_box_built_here(trixie):
    setup = trixie.invoke("lab.setup").stdout
    assert re.search(r"Box: bpflab/debian-13-[0-9a-f]{12} \(built here from the debian-13 archive\)", setup)
    assert re.search(r"VM: debian-13 amd64, kernel 6\.12\.\S+; BCC: package", setup), setup
    assert "is ready and the labs are in it" in setup
    assert trixie.invoke("lab.setup").stdout.count("nothing to do, the VM was up to date") == 1


# One lab of each kind the kernel and BCC must carry: a kprobe and the trace pipe, a hash map,
# a perf buffer, a ring buffer, tail calls from a raw tracepoint, and bpftrace. (Debian 12 runs all.)
EACH_KIND = ["hello", "hello-map", "hello-buffer", "hello-file-ring-buffer", "hello-tail", "hello-bpftrace"]


def test_a_lab_of_each_kind_passes_verify_on_debian_13(trixie):
    result = trixie.invoke("lab.verify", "--seconds", "5", *(f"--names={name}" for name in EACH_KIND), check=False)
    summary = json.loads(sorted((trixie.path / "runs").glob("*-verify/summary.json"))[-1].read_text())
    assert result.returncode == 0 and [row["lab"] for row in summary] == EACH_KIND, result.stdout
    assert all(row["result"] == "PASS" for row in summary), summary


def test_a_seat_from_the_ready_box_has_nothing_to_provision(trixie, tmp_path_factory):
    source_machine_id = vm_shell(trixie, "cat /etc/machine-id")
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
    assert vm_shell(trixie, "cat /etc/machine-id") not in ("", source_machine_id)
    assert vm_shell(trixie, "ls /var/lib/apt/lists | grep -c _Packages || true") == "0"

    # A lab.yaml changed since the box was made: provisioning says so and closes the gap.
    trixie.edit_lab_yaml("packages: [python3, arping, netperf, iperf, bpftrace, bpftool]\n"
                            "      bcc_build: [zip, bison, build-essential, cmake, flex, git, libedit-dev, libllvm19",
                    "packages: [python3, arping, netperf, iperf, bpftrace, bpftool, tree]\n"
                    "      bcc_build: [zip, bison, build-essential, cmake, flex, git, libedit-dev, libllvm19")
    changed = trixie.invoke("lab.provision").stdout
    assert "comes from a ready box made on" in changed and "Installing 1 packages" in changed
    assert vm_shell(trixie, "command -v tree") == "/usr/bin/tree"
