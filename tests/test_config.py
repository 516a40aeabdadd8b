from pathlib import Path

import pytest

from bpflab import config
from bpflab.errors import LabError

SHIPPED = config.DEFAULT_PATH.read_text()


def parse(text):
    return config.parse(text, Path("/tmp/lab.yaml"))


def test_shipped_lab_yaml_is_valid():
    loaded = config.load()
    assert loaded.vm.name == "bpflab"
    assert loaded.vm.boxes["libvirt"]["amd64"]
    assert loaded.local_box.archives[loaded.vm.distribution]["suite"] == "bookworm"


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("cpus: 2", "cpus: two", "lab.yaml: vm.cpus: expected an integer from 1 to 64, got 'two'"),
        ("cpus: 2", "cpus: 0", "vm.cpus: expected an integer from 1 to 64, got 0"),
        ("acceleration: auto", "acceleration: hvf", "vm.acceleration: expected one of auto, kvm, tcg, got 'hvf'"),
        ("provider: auto", "provider: docker", "vm.provider: expected one of auto, libvirt, virtualbox"),
        ("engine: auto", "engine: lima", "vm.engine: expected one of auto, vagrant, libvirt, got 'lima'"),
        ("  cpus: 2", "  cpus: 2\n  gpus: 1", "vm.gpus: unknown key (expected one of name, count, engine, provider"),
        ("  count: 1", "  count: 40", "vm.count: expected an integer from 1 to 16, got 40"),
        ("  name: bpflab\n", "", "vm.name: missing"),
        ("  name: bpflab", "  name: My Lab", "vm.name: expected lowercase letters"),
        ("      amd64: generic/ubuntu2204", "      amd64: [a]", "vm.boxes.libvirt.amd64: expected a Vagrant box name"),
        ("  disk_gb: 16", "  disk_gb: 16.5", "local_box.disk_gb: expected an integer from 4 to 512, got 16.5"),
        ("distribution: debian-12", "distribution: fedora-41", "vm.distribution: expected one of debian-12, debian-13"),
        ("box: local", "box: auto", "vm.box: expected local, catalog, or the path of a .box file"),
        ("components: [main]", "components: []", "local_box.archives.debian-12.components: expected a non-empty list"),
        (
            "  memory: 2048        # MiB",
            "  memory: true",
            "vm.memory: expected an integer from 512 to 262144, got True",
        ),
    ],
)
def test_each_problem_names_file_key_and_expectation(old, new, expected):
    assert old in SHIPPED
    with pytest.raises(LabError) as error:
        parse(SHIPPED.replace(old, new, 1))
    assert expected in str(error.value)
    assert "/tmp/lab.yaml" in str(error.value)


def test_all_problems_are_reported_at_once():
    text = SHIPPED.replace("cpus: 2", "cpus: x").replace("box: local", "box: vagrantcloud")
    with pytest.raises(LabError) as error:
        parse(text)
    assert "2 problem(s)" in str(error.value)
    assert "vm.cpus" in str(error.value) and "vm.box" in str(error.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("vm: [1, 2", "is not valid YAML"),
        ("- a\n- b\n", "top level: expected a mapping, got a list"),
        ("", "top level: expected a mapping, got None"),
    ],
)
def test_malformed_files(text, expected):
    with pytest.raises(LabError, match=expected):
        parse(text)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(LabError, match="restore lab.yaml"):
        config.load(tmp_path / "lab.yaml")
