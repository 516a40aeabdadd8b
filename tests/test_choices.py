"""Provider, acceleration and box choice: pure decisions, tested as tables."""

import dataclasses

import pytest

from bpflab import box, config
from bpflab.errors import LabError
from bpflab.vagrant import parse_status
from bpflab.vm import (
    beyond_count,
    choose_acceleration,
    choose_machines,
    choose_provider,
    hardware_virtualization,
    select,
    select_one,
)

INTEL = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n"
PARAVIRT = "processor\t: 0\nflags\t\t: fpu vme de pse sse2 hypervisor\n"


@pytest.mark.parametrize("cpuinfo, machine, usable, expected", [
    (INTEL, "x86_64", True, True),
    (INTEL.replace("vmx", "svm"), "x86_64", True, True),
    (PARAVIRT, "x86_64", True, False),   # /dev/kvm exists and opens, but no vmx/svm: a trap
    (INTEL, "x86_64", False, False),
    ("", "aarch64", True, True),
    ("", "aarch64", False, False),
])
def test_hardware_virtualization(cpuinfo, machine, usable, expected):
    assert hardware_virtualization(cpuinfo, machine, usable) is expected


@pytest.mark.parametrize("setting, hardware, expected", [
    ("auto", True, "kvm"), ("auto", False, "tcg"), ("tcg", True, "tcg"), ("kvm", True, "kvm"),
])
def test_choose_acceleration(setting, hardware, expected):
    assert choose_acceleration(setting, hardware) == expected


def test_forcing_kvm_without_hardware_is_an_error():
    with pytest.raises(LabError, match="no usable hardware virtualization"):
        choose_acceleration("kvm", False)


@pytest.mark.parametrize("setting, libvirt, virtualbox, expected", [
    ("auto", True, True, "libvirt"), ("auto", False, True, "virtualbox"),
    ("virtualbox", True, True, "virtualbox"), ("libvirt", True, False, "libvirt"),
])
def test_choose_provider(setting, libvirt, virtualbox, expected):
    assert choose_provider(setting, libvirt, virtualbox) == expected


@pytest.mark.parametrize("setting, libvirt, virtualbox, message", [
    ("auto", False, False, "host.setup"), ("libvirt", False, True, "host.setup"),
    ("virtualbox", True, False, "Install VirtualBox"),
])
def test_missing_provider_points_to_setup(setting, libvirt, virtualbox, message):
    with pytest.raises(LabError, match=message):
        choose_provider(setting, libvirt, virtualbox)


def test_parse_status_reads_only_the_asked_machine():
    text = ("1795538147,lab,metadata,provider,libvirt\n1795538148,lab,provider-name,libvirt\n"
            "1795538148,lab,state,shutoff\n1795538148,lab2,state,running\n"
            "1795538148,,ui,info,Current machine states:\\n\\nlab shutoff\n")
    assert parse_status(text, "lab") == {"metadata": "provider,libvirt", "provider-name": "libvirt", "state": "shutoff"}
    assert parse_status(text, "lab2") == {"state": "running"}


@pytest.mark.parametrize("choice, everything_by_default, expected", [
    ("", False, ["lab"]), ("", True, ["lab", "lab2", "lab3"]), ("all", False, ["lab", "lab2", "lab3"]),
    ("lab2", True, ["lab2"]), ("lab3, lab,lab3", False, ["lab3", "lab"]),
])
def test_vm_choice(choice, everything_by_default, expected):
    assert choose_machines(["lab", "lab2", "lab3"], choice, everything_by_default) == expected


@pytest.mark.parametrize("choice", ["lab4", "lab,seat-9", ","])
def test_unknown_vm_names_the_ones_there_are(choice):
    with pytest.raises(LabError, match=r"defines the lab VMs lab, lab2, lab3 \(vm.count: 3\).*one of those names"):
        choose_machines(["lab", "lab2", "lab3"], choice, False)


def test_machine_names_follow_vm_count():
    settings = config.load()
    assert settings.machines == ["lab"]
    three = dataclasses.replace(settings, vm=dataclasses.replace(settings.vm, count=3))
    assert three.machines == ["lab", "lab2", "lab3"]
    assert [vm.domain.rsplit("-", 1)[1] for vm in select(three, "all")] == ["lab", "lab2", "lab3"]
    with pytest.raises(LabError, match="works on one VM at a time"):
        select_one(three, "lab,lab2", "lab.ssh", "")


def never(_box):
    raise AssertionError("the catalog must not be asked")


@pytest.mark.parametrize("setting, provider, arch, installed, reachable, expected", [
    ("auto", "libvirt", "amd64", {("generic/ubuntu2204", "libvirt")}, never, "catalog"),
    ("auto", "libvirt", "amd64", set(), lambda b: True, "catalog"),
    ("auto", "libvirt", "amd64", set(), lambda b: False, "local"),
    ("auto", "libvirt", "amd64", {("generic/ubuntu2204", "virtualbox")}, lambda b: False, "local"),
    ("local", "libvirt", "amd64", {("generic/ubuntu2204", "libvirt")}, never, "local"),
    ("catalog", "libvirt", "amd64", set(), never, "catalog"),
])
def test_box_choice(setting, provider, arch, installed, reachable, expected):
    kind, why = box.choose(setting, provider, arch, "generic/ubuntu2204", installed, reachable)
    assert kind == expected and why


@pytest.mark.parametrize("setting, provider, arch", [
    ("auto", "virtualbox", "amd64"), ("auto", "libvirt", "arm64"), ("local", "virtualbox", "amd64"),
])
def test_no_local_box_where_it_cannot_run(setting, provider, arch):
    with pytest.raises(LabError):
        box.choose(setting, provider, arch, "bento/ubuntu-22.04", set(), lambda b: False)


def test_box_recipe_hash_follows_the_recipe():
    settings = config.load()
    first = box.Recipe.from_config(settings)
    assert box.Recipe.from_config(settings).digest == first.digest
    bigger = dataclasses.replace(settings, local_box=dataclasses.replace(settings.local_box, disk_gb=32))
    assert box.Recipe.from_config(bigger).digest != first.digest
    assert first.digest in first.box_name and first.digest in str(first.box_file)


def test_state_remembered_before_several_vms_moves_to_lab(tmp_path):
    """A checkout whose VM was created when there was only one keeps its box and acceleration."""
    (tmp_path / "lab.yaml").write_text(config.DEFAULT_PATH.read_text())
    old = tmp_path / ".vagrant" / "bpflab"
    old.mkdir(parents=True)
    (old / "box").write_text("bpflab/debian-bookworm-1234\n")
    (old / "acceleration").write_text("tcg\n")
    vm = select(config.load(tmp_path / "lab.yaml"))[0]
    assert vm.remembered("box") == "bpflab/debian-bookworm-1234" and vm.remembered("acceleration") == "tcg"
    assert not (old / "box").exists() and vm.environment()["BPFLAB_LIBVIRT_DRIVER"] == "qemu"


def test_vms_beyond_a_lowered_count_are_found_by_name():
    domains = ["bpflab-1234abcd-lab", "bpflab-1234abcd-lab2", "bpflab-1234abcd-lab3", "bpflab-99999999-lab2",
               "other-vm", "bpflab-1234abcd-lab2-extra"]
    assert beyond_count("bpflab-1234abcd", ["lab", "lab2"], domains) == ["lab3"]
    assert beyond_count("bpflab-1234abcd", ["lab"], domains) == ["lab2", "lab3"]
