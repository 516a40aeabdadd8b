"""Kernels that age, for real: VMs whose running kernel has no headers in their package sources
(their box's kernel came from bookworm-backports, which the VMs' sources lack) are moved to
Debian 12's current kernel and restarted: `lab` by one `lab.setup` (through Vagrant), `lab2`
meanwhile by `ansible-playbook` alone (its reboot module)."""

import re
import threading

import pytest

from bpflab import config
from bpflab.commands import remote_run
from bpflab.hosts import Host
from bpflab.vm import LabVM

from ansible_run import ansible_playbook
from boxes import cache_box_with_a_kernel_without_headers, forget_cached_box
from conftest import copy_project

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def aged(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("aged-kernel"))
    settings = project.path / "lab.yaml"
    # Its own box recipe (another disk size), so that the other tests' cached box is not touched.
    text = settings.read_text().replace("disk_gb: 16", "disk_gb: 15", 1).replace("  count: 1", "  count: 2", 1)
    settings.write_text(text)
    project.invoke("host.setup")
    recipe = cache_box_with_a_kernel_without_headers(config.load(settings))
    project.seats = []
    yield project
    for seat in project.seats:  # a VM still being made would outlive lab.destroy
        seat.join(timeout=2400)
    project.invoke("lab.destroy", check=False)
    forget_cached_box(recipe)


def vm_shell(project, command, machine=None):
    with Host.of_vm(LabVM(config.load(project.path / "lab.yaml"), machine)).connect() as connection:
        return remote_run(connection, command, sudo=True).stdout.strip()


def test_one_setup_moves_the_vm_to_a_kernel_with_headers_and_so_does_ansible(aged):
    aged.invoke("lab.up", "--vm", "lab")  # first: it loads the box into libvirt's pool
    ansible = {}

    def by_ansible():
        try:
            aged.invoke("lab.up", "--vm", "lab2")
            ansible["booted"] = vm_shell(aged, "uname -r", "lab2")
            ansible["changed"] = ansible_playbook(aged, "lab2")
        except BaseException as error:  # reported below
            ansible["error"] = error

    seat = threading.Thread(target=by_ansible, daemon=True)
    aged.seats.append(seat)
    seat.start()
    setup = aged.invoke("lab.setup", "--vm", "lab").stdout
    first = re.search(r"VM: debian-12 amd64, kernel (\S+); BCC: package", setup)
    assert first and not first.group(1).startswith("6.1.0-"), setup  # bookworm-backports: 6.12
    assert f"The running kernel {first.group(1)} has no headers in the package sources any more" in setup
    target = re.search(r"Restarting the lab VM lab into kernel (6\.1\.0-\S+-amd64)", setup)
    assert target, setup
    assert f"VM: debian-12 amd64, kernel {target.group(1)}; BCC: package" in setup
    assert "is ready and the labs are in it" in setup and "missing" not in setup
    assert vm_shell(aged, "uname -r") == target.group(1)
    assert "PASS" in aged.invoke("lab.verify", "--names", "hello", "--seconds", "5").stdout
    assert "nothing to do, the VM was up to date" in aged.invoke("lab.provision").stdout

    seat.join(timeout=2400)
    assert "error" not in ansible, ansible.get("error")
    assert ansible["booted"] == first.group(1) and ansible["changed"] > 0
    assert vm_shell(aged, "uname -r", "lab2") == target.group(1)
    assert "missing" not in aged.invoke("lab.doctor", "--vm", "lab2").stdout
