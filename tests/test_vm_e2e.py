"""The lab VM for real: host setup, box, up, SSH over Fabric, halt, up, stale
leftovers, destroy, and nothing of the test left behind."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bpflab import config, connection
from bpflab.vm import LabVM

pytestmark = pytest.mark.vm
VIRSH = ["virsh", "-c", "qemu:///system"]


def domain_state(domain):
    result = subprocess.run([*VIRSH, "domstate", domain], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def volume_exists(name):
    return subprocess.run([*VIRSH, "vol-info", "--pool", "default", name], capture_output=True).returncode == 0


def qemu_processes(domain):
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"guest={domain}".encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


def remote(project):
    vm = LabVM(config.load(project.path / "lab.yaml"))
    return vm, connection.connect(vm)


def test_host_box_and_a_missing_vm(project):
    """Host setup, the Vagrantfile, the cached box, and the message when there is no VM yet.
    (The VM's life cycle runs on the second VM of test_labs_e2e, which exists anyway.)"""
    project.invoke("host.setup")
    validate = subprocess.run(["vagrant", "validate"], cwd=project.path, capture_output=True, text=True,
                              env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"})
    assert validate.returncode == 0, validate.stdout + validate.stderr
    project.invoke("box.build")
    assert "is cached" in project.invoke("box.build").stdout
    missing = project.invoke("lab.ssh", check=False)
    assert missing.returncode == 1 and "invoke lab.up" in missing.stdout and "Traceback" not in missing.stdout


def test_lab_vm_life_cycle(second_project):
    """Status, halt, recovery from a stale domain, destroy leaving nothing. Runs on the second
    checkout's VM: with the other VM tests it is already up (the fleet's second seat, which
    test_labs_e2e also starts again after switching it off), alone it is created here."""
    project = second_project
    timings = {}

    def timed(name, *args):
        started = time.monotonic()
        result = project.invoke(*args)
        timings[name] = round(time.monotonic() - started, 1)
        return result

    timed("lab.up", "lab.up")
    vm, ssh = remote(project)
    assert domain_state(vm.domain) == "running"
    kernel = connection.remote_run(ssh, "uname -r").stdout.strip()
    assert kernel and connection.remote_run(ssh, "sudo -n true", check=False).exited == 0
    status = project.invoke("lab.status").stdout
    assert "running" in status and vm.domain in status and "ssh" in status

    timed("lab.halt", "lab.halt")
    assert domain_state(vm.domain) == "shut off"
    assert not (vm.state_dir / "ssh-config").exists()

    # Vagrant forgets the halted VM (a deleted .vagrant/): the next up clears the stale domain.
    shutil.rmtree(project.path / ".vagrant" / "machines")
    recovered = timed("lab.up (over a stale domain)", "lab.up")
    assert f"Removing the stale libvirt domain {vm.domain}" in recovered.stdout
    _, ssh = remote(project)
    assert connection.remote_run(ssh, "uname -r").stdout.strip() == kernel

    timed("lab.destroy", "lab.destroy")
    assert domain_state(vm.domain) is None
    assert not volume_exists(f"{vm.domain}.img")
    assert qemu_processes(vm.domain) == []
    print("timings (s):", timings)
