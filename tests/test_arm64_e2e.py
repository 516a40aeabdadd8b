"""arm64 for real on an x86_64 host, as Apple Silicon readers run the labs: a Debian 12 arm64 box
built here (its programs run through qemu-user), a VM of it under qemu's software emulation with
UEFI, set up by one `lab.setup`, and the labs whose syscall numbers differ by architecture passing
`lab.verify`. Slow (9 minutes on 2 cores with the box cached, 16 cold): `invoke test --arm64` runs it, CI does not."""

import re

import pytest

from bpflab import config
from bpflab.commands import remote_run
from bpflab.hosts import Host
from bpflab.runs import verify_rows
from bpflab.vm import LabVM

from conftest import copy_project

pytestmark = [pytest.mark.vm, pytest.mark.arm64]

# The labs that number syscalls, and hello's kprobe on the architecture's own execve function.
SYSCALL_LABS = ["hello", "hello-tail", "hello-tail-auto", "syscall-count", "syscall-count-by-uid"]


@pytest.fixture(scope="module")
def arm64(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("arm64"))
    project.edit_lab_yaml("arch: auto", "arch: arm64")
    project.invoke("host.setup")
    yield project
    project.invoke("lab.destroy", check=False)


def test_an_arm64_vm_is_set_up_from_a_box_built_here(arm64):
    setup = arm64.invoke("lab.setup", timeout=5400).stdout
    assert re.search(
        r"Box: bpflab/debian-12-arm64-[0-9a-f]{12} \(built here from the debian-12 archive for arm64\)", setup
    ), setup
    assert re.search(r"VM: debian-12 arm64, kernel 6\.1\.\S+; BCC: package", setup), setup
    assert "is ready and the labs are in it" in setup
    assert re.search(r"kernel\s.*ok.*aarch64", arm64.invoke("lab.doctor").stdout)
    assert "tcg" in arm64.invoke("lab.status").stdout
    with Host.of_vm(LabVM(config.load(arm64.path / "lab.yaml"))).connect() as connection:
        assert remote_run(connection, "uname -m", check=False).stdout.strip() == "aarch64"


def test_the_labs_that_number_syscalls_pass_verify_on_arm64(arm64):
    result = arm64.invoke("lab.verify", *(f"--names={name}" for name in SYSCALL_LABS), timeout=3600, check=False)
    verifies = sorted((arm64.path / "runs").glob("*-verify"))
    assert verifies, result.stdout
    rows = verify_rows(verifies[-1] / "summary.json")["lab"]
    assert [row["lab"] for row in rows] == SYSCALL_LABS, result.stdout
    assert all(row["result"] == "PASS" for row in rows), result.stdout
    # arm64's own numbers (asm-generic), not x86_64's: openat is 56 there and 257 on x86_64.
    counted = next(arm64.path.glob("runs/*-syscall-count/output.log")).read_text()
    assert re.search(r"\bopenat \(56\): \d+", counted), counted
