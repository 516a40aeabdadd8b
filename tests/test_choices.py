"""Provider, acceleration and box choice: pure decisions, tested as tables."""

import dataclasses
import hashlib
import json
import lzma
import tarfile
from pathlib import Path

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
    vcpus,
)

INTEL = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n"
PARAVIRT = "processor\t: 0\nflags\t\t: fpu vme de pse sse2 hypervisor\n"


@pytest.mark.parametrize(
    "cpuinfo, machine, usable, expected",
    [
        (INTEL, "x86_64", True, True),
        (INTEL.replace("vmx", "svm"), "x86_64", True, True),
        (PARAVIRT, "x86_64", True, False),  # /dev/kvm exists and opens, but no vmx/svm: a trap
        (INTEL, "x86_64", False, False),
        ("", "aarch64", True, True),
        ("", "aarch64", False, False),
    ],
)
def test_hardware_virtualization(cpuinfo, machine, usable, expected):
    assert hardware_virtualization(cpuinfo, machine, usable) is expected


@pytest.mark.parametrize(
    "setting, hardware, expected",
    [
        ("auto", True, "kvm"),
        ("auto", False, "tcg"),
        ("tcg", True, "tcg"),
        ("kvm", True, "kvm"),
    ],
)
def test_choose_acceleration(setting, hardware, expected):
    assert choose_acceleration(setting, hardware) == expected


def test_forcing_kvm_without_hardware_is_an_error():
    with pytest.raises(LabError, match="no usable hardware virtualization"):
        choose_acceleration("kvm", False)


@pytest.mark.parametrize("setting", ["auto", "tcg"])
def test_a_vm_of_another_architecture_is_always_emulated(setting):
    assert choose_acceleration(setting, True, foreign=True) == "tcg"


def test_kvm_for_a_vm_of_another_architecture_is_an_error():
    with pytest.raises(LabError, match="KVM cannot run another architecture's VM"):
        choose_acceleration("kvm", True, foreign=True)


@pytest.mark.parametrize(
    "arch, acceleration, expected",
    [("amd64", "tcg", 1), ("amd64", "kvm", 4), ("arm64", "tcg", 4), ("arm64", "kvm", 4)],
)
def test_an_emulated_x86_vm_gets_one_vcpu(arch, acceleration, expected):
    assert vcpus(4, arch, acceleration) == expected


@pytest.mark.parametrize(
    "setting, libvirt, virtualbox, expected",
    [
        ("auto", True, True, "libvirt"),
        ("auto", False, True, "virtualbox"),
        ("virtualbox", True, True, "virtualbox"),
        ("libvirt", True, False, "libvirt"),
    ],
)
def test_choose_provider(setting, libvirt, virtualbox, expected):
    assert choose_provider(setting, libvirt, virtualbox) == expected


@pytest.mark.parametrize(
    "setting, libvirt, virtualbox, message",
    [
        ("auto", False, False, "host.setup"),
        ("libvirt", False, True, "host.setup"),
        ("virtualbox", True, False, "Install VirtualBox"),
    ],
)
def test_missing_provider_points_to_setup(setting, libvirt, virtualbox, message):
    with pytest.raises(LabError, match=message):
        choose_provider(setting, libvirt, virtualbox)


def test_parse_status_reads_only_the_asked_machine():
    text = (
        "1795538147,lab,metadata,provider,libvirt\n1795538148,lab,provider-name,libvirt\n"
        "1795538148,lab,state,shutoff\n1795538148,lab2,state,running\n"
        "1795538148,,ui,info,Current machine states:\\n\\nlab shutoff\n"
    )
    assert parse_status(text, "lab") == {"metadata": "provider,libvirt", "provider-name": "libvirt", "state": "shutoff"}
    assert parse_status(text, "lab2") == {"state": "running"}


@pytest.mark.parametrize(
    "choice, everything_by_default, expected",
    [
        ("", False, ["lab"]),
        ("", True, ["lab", "lab2", "lab3"]),
        ("all", False, ["lab", "lab2", "lab3"]),
        ("lab2", True, ["lab2"]),
        ("lab3, lab,lab3", False, ["lab3", "lab"]),
    ],
)
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


def with_box(setting, distribution="debian-12", architecture="auto"):
    settings = config.load()
    return dataclasses.replace(
        settings, vm=dataclasses.replace(settings.vm, box=setting, distribution=distribution, arch=architecture)
    )


@pytest.mark.parametrize(
    "setting, distribution, expected",
    [
        ("local", "debian-12", "local"),
        ("local", "ubuntu-24.04", "local"),
        ("catalog", "ubuntu-22.04", "catalog"),
        ("seat.box", "debian-13", "packaged"),
    ],
)
def test_box_choice(setting, distribution, expected):
    kind, why = box.choose(with_box(setting, distribution), "libvirt", "amd64")
    assert kind == expected and why


@pytest.mark.parametrize(
    "setting, distribution, provider, arch, says",
    [
        ("local", "debian-12", "virtualbox", "amd64", "Set vm.box to catalog"),
        ("local", "debian-12", "libvirt", "arm64", "libvirt on amd64 only"),
        ("catalog", "debian-13", "libvirt", "amd64", "vm.distribution is debian-13"),
    ],
)
def test_no_box_where_it_cannot_run(setting, distribution, provider, arch, says):
    with pytest.raises(LabError, match=says):
        box.choose(with_box(setting, distribution), provider, arch)


def test_an_arm64_box_is_built_of_debian_only():
    kind, why = box.choose(with_box("local", "debian-12", "arm64"), "libvirt", "amd64")
    assert kind == "local" and why.endswith("for arm64")
    with pytest.raises(LabError, match="ports.ubuntu.com"):
        box.choose(with_box("local", "ubuntu-24.04", "arm64"), "libvirt", "amd64")


def plain(settings):
    return dataclasses.replace(settings, local_box=dataclasses.replace(settings.local_box, ready=False))


def test_an_arm64_box_is_its_own_box_and_amd64_boxes_keep_their_names():
    amd64 = box.Recipe.from_config(plain(with_box("local")), "12.15", "6.1.176-1")
    fields = {
        key: value
        for key, value in dataclasses.asdict(amd64).items()  # less those that came later
        if key not in ("architecture", "early_files") and not key.startswith("seat_")
    }
    assert amd64.digest == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    arm64 = box.Recipe.from_config(with_box("local", "debian-12", "arm64"), "12.15", "6.1.176-1")
    assert arm64.digest != amd64.digest and arm64.box_name.startswith("bpflab/debian-12-arm64-")
    assert arm64.uefi and not amd64.uefi
    assert "console=ttyAMA0" in arm64.kernel_cmdline and "console=ttyS0" in amd64.kernel_cmdline
    command = arm64.bootstrap_command(Path("/rootfs"))
    included = next(part for part in command if part.startswith("--include=")).split("=", 1)[1].split(",")
    assert "--architectures=arm64" in command
    assert {"linux-image-arm64", "grub-efi-arm64-bin"} <= set(included) and "linux-image-amd64" not in included
    assert any("MODULES=list" in hook for hook in command)
    assert box.Recipe.from_json(arm64.to_json()) == arm64


def test_box_recipe_hash_follows_everything_the_box_is_made_from():
    settings = with_box("local")
    first = box.Recipe.from_config(settings, "12.15")
    assert box.Recipe.from_config(settings, "12.15").digest == first.digest
    bigger = dataclasses.replace(settings, local_box=dataclasses.replace(settings.local_box, disk_gb=32))
    assert box.Recipe.from_config(bigger, "12.15").digest != first.digest
    assert box.Recipe.from_config(settings, "12.16").digest != first.digest  # a point release: a new kernel
    assert box.Recipe.from_config(settings, "12.15", "6.1.176-1").digest != first.digest  # the kernel itself
    assert box.Recipe.from_config(with_box("local", "debian-13"), "12.15").digest != first.digest
    assert first.box_name.startswith("bpflab/debian-12-") and first.digest in str(first.box_file)


@pytest.mark.parametrize(
    "distribution, suite, components, keyring, kernel",
    [
        ("debian-12", "bookworm", "main", "debian-archive-keyring.gpg", "linux-image-amd64"),
        ("debian-13", "trixie", "main", "debian-archive-keyring.gpg", "linux-image-amd64"),
        ("ubuntu-22.04", "jammy", "main,universe", "ubuntu-archive-keyring.gpg", "linux-image-virtual"),
        ("ubuntu-24.04", "noble", "main,universe", "ubuntu-archive-keyring.gpg", "linux-image-virtual"),
    ],
)
def test_each_distribution_is_bootstrapped_from_its_own_archive(distribution, suite, components, keyring, kernel):
    recipe = box.Recipe.from_config(with_box("local", distribution), "x")
    command = recipe.bootstrap_command(Path("/rootfs"))
    mirror = "http://archive.ubuntu.com/ubuntu" if distribution.startswith("ubuntu") else "http://deb.debian.org/debian"
    assert command[-3:] == [suite, "/rootfs", mirror]
    assert f"--components={components}" in command and f"--keyring=/usr/share/keyrings/{keyring}" in command
    included = next(part for part in command if part.startswith("--include=")).split("=", 1)[1].split(",")
    assert kernel in included and "openssh-server" in included and "isc-dhcp-client" in included
    assert not {"linux-image-amd64", "linux-image-virtual"} - {kernel} & set(included)


def test_a_cached_box_is_used_when_the_archive_does_not_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = with_box("local", "debian-13")
    cached = box.Recipe.from_config(settings, "13.7")
    cached.box_file.parent.mkdir(parents=True)
    cached.box_file.write_bytes(b"box")
    (cached.box_file.parent / "recipe.json").write_text(cached.to_json())
    monkeypatch.setattr(box, "archive_release", lambda mirror, suite: None)
    assert box.current_recipe(settings) == cached
    with pytest.raises(LabError, match="does not answer, and no debian-12 box is cached"):
        box.current_recipe(with_box("local", "debian-12"))


def test_the_archive_release_comes_from_the_release_file(tmp_path):
    (tmp_path / "dists" / "trixie").mkdir(parents=True)
    (tmp_path / "dists" / "trixie" / "Release").write_text("Origin: Debian\nVersion: 13.8\nCodename: trixie\n")
    assert box.archive_release(tmp_path.as_uri(), "trixie") == "13.8"
    assert box.archive_release(tmp_path.as_uri(), "sid") is None


def test_the_kernel_the_suite_serves_comes_from_its_package_index(tmp_path):
    index = tmp_path / "dists" / "bookworm" / "main" / "binary-amd64"
    index.mkdir(parents=True)
    paragraphs = [f"Package: filler{number}\nVersion: 1.{number}\nDescription: {'x' * 200}" for number in range(900)]
    paragraphs.insert(600, "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.176+1)\nVersion: 6.1.176-1")
    (index / "Packages.xz").write_bytes(lzma.compress(("\n\n".join(paragraphs) + "\n").encode()))
    assert box.suite_kernel(tmp_path.as_uri(), "bookworm", "main", "linux-image-amd64") == "6.1.176-1"
    assert box.suite_kernel(tmp_path.as_uri(), "bookworm", "main", "linux-image-virtual") is None
    assert box.suite_kernel(tmp_path.as_uri(), "trixie", "main", "linux-image-amd64") is None
    arm64 = tmp_path / "dists" / "bookworm" / "main" / "binary-arm64"
    arm64.mkdir()
    (arm64 / "Packages.xz").write_bytes(lzma.compress(b"Package: linux-image-arm64\nVersion: 6.1.170-1\n"))
    assert box.suite_kernel(tmp_path.as_uri(), "bookworm", "main", "linux-image-arm64", "arm64") == "6.1.170-1"
    assert box.suite_kernel(tmp_path.as_uri(), "bookworm", "main", "linux-image-arm64") is None


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
    domains = [
        "bpflab-1234abcd-lab",
        "bpflab-1234abcd-lab2",
        "bpflab-1234abcd-lab3",
        "bpflab-99999999-lab2",
        "other-vm",
        "bpflab-1234abcd-lab2-extra",
    ]
    assert beyond_count("bpflab-1234abcd", ["lab", "lab2"], domains) == ["lab3"]
    assert beyond_count("bpflab-1234abcd", ["lab"], domains) == ["lab2", "lab3"]


def test_a_ready_box_of_the_other_architecture_is_refused(tmp_path):
    about = tmp_path / "bpflab.json"
    about.write_text(json.dumps({"distribution": "debian-12", "arch": "arm64", "id": "abc"}))
    ready = tmp_path / "seat.box"
    with tarfile.open(ready, "w") as packed:
        packed.add(about, arcname="bpflab.json")
    settings = with_box(str(ready))
    with pytest.raises(LabError, match="ready box of an arm64 VM, but lab.yaml's vm.arch makes the VM amd64"):
        box.register_packaged(settings)


def test_a_ready_seat_carries_what_provisioning_would_install_and_its_key_follows_them():
    settings = with_box("local")
    ready, bare = box.Recipe.from_config(settings, "12.15"), box.Recipe.from_config(plain(settings), "12.15")
    assert ready.ready and not bare.ready and ready.digest != bare.digest
    assert {"bpftrace", "bpftool", "python3-bpfcc", "bpfcc-tools", "linux-headers-amd64"} <= set(ready.seat_packages)
    assert ready.seat_optional == ("netperf",) and "netperf" not in ready.seat_packages  # not in Debian 12's main
    assert dict(ready.seat_files)["etc/ssh/sshd_config.d/bpflab.conf"].startswith("ClientAlive")
    command = ready.bootstrap_command(Path("/rootfs"), ("libelf1",))
    included = [name for part in command if part.startswith("--include=") for name in part[10:].split(",")]
    assert {"python3-bpfcc", "linux-headers-amd64", "libelf1"} <= set(included)
    assert any("apt-unavailable.sh" in part and "netperf" in part for part in command)
    assert box.Recipe.from_json(ready.to_json()) == ready
    # Another package in lab.yaml, or BCC from source: another box.
    distributions = {**settings.provision.distributions}
    distributions["debian-12"] = {
        **distributions["debian-12"],
        "packages": [*distributions["debian-12"]["packages"], "tree"],
    }
    more = dataclasses.replace(settings, provision=dataclasses.replace(settings.provision, distributions=distributions))
    assert box.Recipe.from_config(more, "12.15").digest != ready.digest
    source = dataclasses.replace(
        settings, provision=dataclasses.replace(settings.provision, bcc={**settings.provision.bcc, "install": "source"})
    )
    built = box.Recipe.from_config(source, "12.15")
    assert dict(built.seat_bcc)["version"] == settings.provision.bcc["version"]
    assert "python3-bpfcc" not in built.seat_packages and built.digest != ready.digest
    in_vm = dataclasses.replace(
        source, provision=dataclasses.replace(source.provision, bcc={**source.provision.bcc, "build_on": "vm"})
    )
    assert box.Recipe.from_config(in_vm, "12.15").seat_bcc == ()


def test_the_aged_kernel_box_of_the_tests_is_a_plain_box_from_backports():
    """The e2e tests' box whose kernel has aged: its command is the plain box's, with backports."""
    from boxes import BackportsKernelRecipe

    recipe = box.Recipe.from_config(plain(with_box("local")), "12.15", "6.1.176-1")
    aged = BackportsKernelRecipe(**dataclasses.asdict(recipe))
    command = aged.bootstrap_command(Path("/rootfs"))
    assert command[-1] == f"deb {recipe.mirror} bookworm-backports main"
    assert command[-4:-1] == ["bookworm", "/rootfs", recipe.mirror] and any("/-backports/d" in part for part in command)
