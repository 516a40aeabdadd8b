"""Kernels that age, for real: a VM whose running kernel has no headers in its package sources
(its box's kernel came from bookworm-backports, which the VM's sources lack) is moved to
Debian 12's current kernel, restarted through Vagrant and provisioned, all by one `lab.setup`."""

import re

import pytest
from boxes import cache_box_with_a_kernel_without_headers, forget_cached_box
from conftest import copy_project

from bpflab import config
from bpflab.commands import remote_run
from bpflab.hosts import Host
from bpflab.vm import LabVM

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def aged(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("aged-kernel"))
    settings = project.path / "lab.yaml"
    # Its own box recipe (another disk size), so that the other tests' cached box is not touched.
    settings.write_text(settings.read_text().replace("disk_gb: 16", "disk_gb: 15", 1))
    project.invoke("host.setup")
    recipe = cache_box_with_a_kernel_without_headers(config.load(settings))
    yield project
    project.invoke("lab.destroy", check=False)
    forget_cached_box(recipe)


def uname(project):
    with Host.of_vm(LabVM(config.load(project.path / "lab.yaml"))).connect() as connection:
        return remote_run(connection, "uname -r").stdout.strip()


def test_one_setup_moves_the_vm_to_a_kernel_with_headers(aged):
    setup = aged.invoke("lab.setup").stdout
    first = re.search(r"VM: debian-12 amd64, kernel (\S+); BCC: package", setup)
    assert first and "bpo" in first.group(1), setup
    assert f"The running kernel {first.group(1)} has no headers in the package sources any more" in setup
    target = re.search(r"Restarting the lab VM into kernel (6\.1\.0-\S+-amd64)", setup)
    assert target, setup
    assert f"VM: debian-12 amd64, kernel {target.group(1)}; BCC: package" in setup
    assert "is ready and the labs are in it" in setup and "missing" not in setup
    assert uname(aged) == target.group(1)
    assert "PASS" in aged.invoke("lab.verify", "--names", "hello", "--seconds", "5").stdout
    assert "nothing to do, the VM was up to date" in aged.invoke("lab.provision").stdout
