"""The libvirt engine's pure parts: the domain it defines, the kernel command line that hands the
VM its key, its ssh_config, and which engine a new VM gets. (Its VMs, for real: test_room_e2e.py.)"""

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from bpflab.domain import LEASE, DomainSpec, domain_xml, kernel_cmdline, ssh_config
from bpflab.vagrant import parse_ssh_config
from bpflab.vm import choose_engine


def spec(**changes):
    fields = {
        "name": "bpflab-0123abcd-lab",
        "architecture": "amd64",
        "acceleration": "tcg",
        "cpus": 2,
        "memory_mib": 2048,
        "disk": "/var/lib/libvirt/images/bpflab-0123abcd-lab.img",
        "kernel": "/var/lib/libvirt/images/bpflab-0123abcd-lab-vmlinuz",
        "initrd": "/var/lib/libvirt/images/bpflab-0123abcd-lab-initrd",
        "cmdline": "root=LABEL=bpflab-root console=ttyS0 ro bpflab.ssh_key=ssh-ed25519:AAAA",
        "console_log": "/work/lab & co/logs/lab/console.log",
    }
    return DomainSpec(**{**fields, **changes})


def parsed(**changes):
    return ElementTree.fromstring(domain_xml(spec(**changes)))


def test_a_pc_boots_the_box_kernel_directly_from_its_own_overlay():
    domain = parsed()
    assert domain.get("type") == "qemu"
    assert domain.find("os/type").attrib == {"arch": "x86_64", "machine": "pc"}
    assert domain.find("os/kernel").text.endswith("-lab-vmlinuz")
    assert domain.find("os/initrd").text.endswith("-lab-initrd")
    assert "bpflab.ssh_key=ssh-ed25519:AAAA" in domain.find("os/cmdline").text
    assert domain.find("os/loader") is None and domain.find("os/boot") is None  # no firmware boot menu
    disk = domain.find("devices/disk")
    assert disk.find("driver").attrib == {"name": "qemu", "type": "qcow2", "discard": "unmap"}
    assert disk.find("source").get("file") == "/var/lib/libvirt/images/bpflab-0123abcd-lab.img"
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert domain.find("devices/serial/source").get("path") == "/work/lab & co/logs/lab/console.log"
    assert domain.find("devices/interface/source").get("network") == "vagrant-libvirt"
    assert (domain.find("memory").text, domain.find("vcpu").text) == ("2048", "2")


def test_tcg_emulates_the_cheapest_cpu_and_kvm_passes_the_host_cpu_through():
    emulated = parsed()
    assert emulated.find("cpu").get("mode") == "custom" and emulated.find("cpu/model").text == "qemu64"
    native = parsed(acceleration="kvm")
    assert native.get("type") == "kvm" and native.find("cpu").attrib == {"mode": "host-passthrough"}


def test_arm64_boots_directly_on_qemus_virt_board_without_acpi():
    domain = parsed(architecture="arm64", cmdline="root=LABEL=bpflab-root console=ttyAMA0 ro")
    assert domain.find("os/type").attrib == {"arch": "aarch64", "machine": "virt"}
    assert domain.find("os/kernel") is not None and domain.find("features") is None
    assert domain.find("cpu/model").text == "cortex-a72"


def test_the_key_rides_on_the_command_line_as_one_word():
    line = kernel_cmdline("console=ttyS0 net.ifnames=0 ro quiet", "ssh-ed25519 AAAAC3Nza+/= bpflab lab\n")
    assert line == "root=LABEL=bpflab-root console=ttyS0 net.ifnames=0 ro quiet bpflab.ssh_key=ssh-ed25519:AAAAC3Nza+/="


def test_the_ssh_config_reads_back_as_the_vms_endpoint(tmp_path):
    text = ssh_config("lab2", "192.168.121.57", tmp_path / "id_ed25519")
    endpoint = parse_ssh_config(text, "lab2")
    assert (endpoint.host, endpoint.port, endpoint.user) == ("192.168.121.57", 22, "vagrant")
    assert Path(endpoint.identity) == tmp_path / "id_ed25519"


def test_the_lease_gives_the_address():
    listing = (
        " Name       MAC address          Protocol     Address\n"
        "-------------------------------------------------------------\n"
        " vnet3      52:54:00:6b:1f:0e    ipv4         192.168.121.57/24\n"
    )
    assert LEASE.findall(listing) == ["192.168.121.57"]


@pytest.mark.parametrize(
    ("setting", "vagrant", "plugin", "virsh", "engine"),
    [
        ("auto", True, True, True, "vagrant"),
        ("auto", False, False, True, "libvirt"),  # Ubuntu 24.04: no vagrant package
        ("auto", True, False, True, "libvirt"),  # Vagrant without its libvirt plugin
        ("auto", True, False, False, "vagrant"),  # VirtualBox only
        ("libvirt", True, True, True, "libvirt"),
        ("vagrant", False, False, True, "vagrant"),  # its own message says Vagrant is missing
    ],
)
def test_which_engine_a_new_vm_gets(setting, vagrant, plugin, virsh, engine):
    assert choose_engine(setting, vagrant, plugin, virsh) == engine
