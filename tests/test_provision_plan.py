"""Provisioning decisions from the VM's facts, and the BCC artifact checks (pure logic)."""

import hashlib
import json

import pytest

from bpflab import artifacts, config, provision
from bpflab.errors import LabError

PACKAGE_STAMP = {}
BUILT_V37 = {
    "repository": "https://github.com/iovisor/bcc.git",
    "version": "v0.37.0",
    "llvm_dir": "/usr/lib/llvm-14/lib/cmake/llvm",
}


def settings(tmp_path, install, version="v0.37.0"):
    text = config.DEFAULT_PATH.read_text().replace("install: auto", f"install: {install}")
    text = text.replace("version: v0.37.0", f"version: {version}")
    text = text.replace("artifacts: ~/.cache/bpflab/bcc-artifacts", "artifacts: artifacts")
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    return config.load(path)


def facts(stamp=PACKAGE_STAMP, installed=()):
    return provision.Facts("debian-12", "amd64", "6.1.0-28-amd64", 2, 2_000_000, "python3", stamp, set(installed))


def export(folder, version="v0.37.0", distribution="debian-12", arch="amd64", runtime=("libelf1",), content=b"bcc"):
    folder.mkdir(exist_ok=True)
    stem = artifacts.Artifact.stem(version, distribution, arch)
    (folder / f"{stem}.tar.gz").write_bytes(content)
    metadata = {
        "built": {**BUILT_V37, "version": version},
        "distribution": distribution,
        "arch": arch,
        "runtime_packages": list(runtime),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    (folder / f"{stem}.json").write_text(json.dumps(metadata))
    return folder / f"{stem}.json"


def test_artifact_mode_installs_the_artifact_and_its_runtime_libraries(tmp_path):
    lab = settings(tmp_path, "artifact")
    export(tmp_path / "artifacts")
    todo = provision.plan(lab, facts(installed=["python3-bpfcc", "bpftrace"]))
    assert todo.artifact and todo.artifact.built["version"] == "v0.37.0" and not todo.build_bcc
    assert "libelf1" in todo.packages and "cmake" not in todo.packages and "python3-bpfcc" not in todo.packages
    assert todo.remove == ["python3-bpfcc"]


def test_artifact_mode_is_satisfied_by_any_bcc_of_that_version(tmp_path):
    lab = settings(tmp_path, "artifact")  # no artifact on the host: not needed
    for via in ("source", "artifact"):
        todo = provision.plan(lab, facts(stamp={"built": BUILT_V37, "via": via}))
        assert todo.artifact is None and not todo.build_bcc


def test_source_mode_rebuilds_only_when_the_build_settings_change(tmp_path):
    assert not provision.plan(settings(tmp_path, "source"), facts(stamp={"built": BUILT_V37})).build_bcc
    assert provision.plan(settings(tmp_path, "source", "v0.32.0"), facts(stamp={"built": BUILT_V37})).build_bcc


def test_a_missing_artifact_is_refused_naming_what_is_there(tmp_path):
    export(tmp_path / "artifacts", distribution="ubuntu-22.04")
    with pytest.raises(LabError) as refused:
        provision.plan(settings(tmp_path, "artifact"), facts())
    message = str(refused.value)
    assert "no BCC v0.37.0 built for debian-12 amd64" in message
    assert "bcc-v0.37.0-ubuntu-22.04-amd64" in message and "lab.bcc-export" in message


def test_an_artifact_whose_metadata_disagrees_with_its_name_is_refused(tmp_path):
    metadata = export(tmp_path / "artifacts")
    data = json.loads(metadata.read_text())
    metadata.write_text(json.dumps({**data, "arch": "arm64"}))
    with pytest.raises(LabError, match="not what its name says"):
        provision.plan(settings(tmp_path, "artifact"), facts())


def test_a_damaged_artifact_is_refused(tmp_path):
    metadata = export(tmp_path / "artifacts")
    metadata.with_suffix(".tar.gz").write_bytes(b"truncated")
    with pytest.raises(LabError, match="missing or damaged"):
        provision.plan(settings(tmp_path, "artifact"), facts())


def test_artifact_folder_follows_lab_yaml(tmp_path):
    assert settings(tmp_path, "artifact").bcc_artifacts == tmp_path / "artifacts"


@pytest.mark.parametrize(
    "distribution, install, llvm",
    [
        ("debian-12", "source", "14"),
        ("debian-13", "source", "19"),
        ("ubuntu-22.04", "source", "14"),
        ("ubuntu-24.04", "source", "18"),
    ],
)
def test_each_distribution_builds_bcc_with_its_own_llvm_and_polly(tmp_path, distribution, install, llvm):
    """BCC links LLVM's Polly where LLVM was built with it (iovisor/bcc#5015): without libpolly-N-dev
    the build stops at libPolly.a."""
    known = provision.Facts(distribution, "amd64", "6.12.0-1-amd64", 2, 4_000_000, "python3", {}, set())
    todo = provision.plan(settings(tmp_path, install), known)
    assert {f"llvm-{llvm}-dev", f"libclang-{llvm}-dev", f"libpolly-{llvm}-dev"} <= set(todo.packages)
    assert todo.settings["llvm_dir"] == f"/usr/lib/llvm-{llvm}/lib/cmake/llvm" and todo.build_bcc
    assert "linux-headers-6.12.0-1-amd64" in todo.packages


def test_debian_13_uses_its_packaged_bcc_by_default(tmp_path):
    known = provision.Facts("debian-13", "amd64", "6.12.117+deb13-amd64", 2, 2_000_000, "python3", {}, set())
    todo = provision.plan(settings(tmp_path, "auto"), known)
    assert todo.bcc_mode == "package" and {"python3-bpfcc", "bpftrace", "bpftool"} <= set(todo.packages)
    assert "linux-headers-6.12.117+deb13-amd64" in todo.packages and not todo.build_bcc


def test_a_ready_box_from_other_settings_is_noticed(tmp_path):
    current = settings(tmp_path, "auto")
    made_here = {"provision": current.provision_digest, "packaged": "2026-11-25T10:00:00Z"}
    from_box = provision.Facts("debian-13", "amd64", "6.12", 2, 2_000_000, "python3", {}, set(), ready_box=made_here)
    assert provision.ready_box_note(current, from_box) is None
    assert provision.ready_box_note(current, facts()) is None  # not made from a ready box
    changed = settings(tmp_path, "source")
    assert "made on 2026-11-25T10:00:00Z with other provisioning settings" in provision.ready_box_note(
        changed, from_box
    )


@pytest.mark.parametrize(
    "setting, virt, unable, where",
    [
        ("auto", "qemu", None, "host"),  # software emulation, and the host can: native speed
        ("auto", "qemu", "the host is not Linux", "vm"),
        ("auto", "kvm", None, "vm"),  # hardware virtualization: the VM builds as fast
        ("auto", "none", None, "vm"),  # a real machine of a room
        ("vm", "qemu", None, "vm"),
        ("host", "kvm", None, "host"),
    ],
)
def test_where_bcc_is_built(setting, virt, unable, where):
    assert provision.build_place(setting, virt, unable)[0] == where


def test_build_on_host_is_refused_where_the_host_cannot(tmp_path):
    with pytest.raises(LabError, match="build_on: host, but the host is arm64 and the VM amd64"):
        provision.build_place("host", "qemu", "the host is arm64 and the VM amd64")


def emulated(stamp=PACKAGE_STAMP, installed=()):
    return provision.Facts(
        "debian-12", "amd64", "6.1.0-28-amd64", 2, 2_000_000, "python3", stamp, set(installed), virt="qemu"
    )


def test_a_host_build_keeps_the_build_tools_out_of_the_vm(tmp_path):
    todo = provision.plan(settings(tmp_path, "source"), emulated(), host_unable=None)
    assert todo.build_bcc and todo.build_on == "host" and todo.artifact is None
    assert "cmake" not in todo.packages and "llvm-14-dev" not in todo.packages and "bpftrace" in todo.packages
    in_vm = provision.plan(settings(tmp_path, "source"), emulated(), host_unable="no root here")
    assert in_vm.build_on == "vm" and "expect hours" in in_vm.build_why and "llvm-14-dev" in in_vm.packages


def test_a_host_build_of_the_same_settings_is_not_made_twice(tmp_path):
    export(tmp_path / "artifacts")  # built with BUILT_V37, exactly lab.yaml's settings
    todo = provision.plan(settings(tmp_path, "source"), emulated(), host_unable=None)
    assert not todo.build_bcc and todo.artifact and todo.artifact.built == BUILT_V37
    assert "libelf1" in todo.packages and "cmake" not in todo.packages
    other = provision.plan(settings(tmp_path, "source", "v0.36.1"), emulated(), host_unable=None)
    assert other.build_bcc and other.artifact is None


def test_a_vm_whose_bcc_was_built_on_the_host_is_left_as_it_is(tmp_path):
    """Provisioning again after a host build: nothing to build, and still no build tools for the VM."""
    lab = settings(tmp_path, "source")
    have = [*lab.provision.distributions["debian-12"]["packages"], "linux-headers-6.1.0-28-amd64"]
    todo = provision.plan(lab, emulated(stamp={"built": BUILT_V37, "via": "host"}, installed=have), host_unable=None)
    assert not todo.build_bcc and todo.artifact is None and todo.packages == [] and todo.build_on == "host"


def test_a_stamp_as_a_ready_seat_or_provisioning_writes_it_satisfies_the_plan(tmp_path):
    """The box and provisioning write one stamp format; a seat whose box has the build needs none."""
    lab = settings(tmp_path, "artifact")
    stamp = json.loads(artifacts.stamp_text(BUILT_V37, "host", "debian-12", "amd64"))
    assert stamp == {"built": BUILT_V37, "via": "host", "distribution": "debian-12", "arch": "amd64"}
    todo = provision.plan(lab, facts(stamp=stamp))
    assert todo.artifact is None and not todo.build_bcc
