"""Load and validate lab.yaml, the one source of truth for the VM settings.

Validation reports every problem at once, each as `file: key: expected ..., got
...`, so a learner fixes the file in one pass instead of meeting one traceback
per typo.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import LabError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = PROJECT_ROOT / "lab.yaml"

PROVIDERS = ("libvirt", "virtualbox")
ENGINES = ("vagrant", "libvirt")
DISTRIBUTIONS = ("debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04")
ARCHITECTURES = ("amd64", "arm64")


class Rule:
    """One leaf of the schema: checks a value and says what it expected."""

    expected = "a value"

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError


class Choice(Rule):
    def __init__(self, *choices: str):
        self.choices = choices
        self.expected = "one of " + ", ".join(choices)

    def accepts(self, value):
        return value in self.choices


class Integer(Rule):
    def __init__(self, low: int, high: int):
        self.low, self.high = low, high
        self.expected = f"an integer from {low} to {high}"

    def accepts(self, value):
        return type(value) is int and self.low <= value <= self.high


class Boolean(Rule):
    expected = "true or false"

    def accepts(self, value):
        return isinstance(value, bool)


class Text(Rule):
    def __init__(self, pattern: str = r".+", expected: str = "a non-empty string"):
        self.pattern = re.compile(pattern)
        self.expected = expected

    def accepts(self, value):
        return isinstance(value, str) and bool(self.pattern.fullmatch(value))


class PackageList(Rule):
    expected = "a list of Debian package names"
    name = re.compile(r"[a-z0-9][a-z0-9+.-]+")

    def accepts(self, value):
        return isinstance(value, list) and all(isinstance(item, str) and self.name.fullmatch(item) for item in value)


class WordList(PackageList):
    expected = "a non-empty list of archive components such as main"
    name = re.compile(r"[a-z][a-z0-9-]*")

    def accepts(self, value):
        return super().accepts(value) and bool(value)


BOX_NAME = Text(r"[\w.-]+/[\w.-]+|[\w.-]+", "a Vagrant box name such as generic/ubuntu2204")
BOXES_PER_ARCH = {arch: BOX_NAME for arch in ARCHITECTURES}

SCHEMA: dict[str, Any] = {
    "vm": {
        "name": Text(r"[a-z][a-z0-9-]{0,30}", "lowercase letters, digits and '-', starting with a letter"),
        "count": Integer(1, 16),
        "engine": Choice("auto", *ENGINES),
        "provider": Choice("auto", *PROVIDERS),
        "acceleration": Choice("auto", "kvm", "tcg"),
        "cpus": Integer(1, 64),
        "memory": Integer(512, 262144),
        "distribution": Choice(*DISTRIBUTIONS),
        "arch": Choice("auto", *ARCHITECTURES),
        "box": Text(r"local|catalog|\S+\.box", "local, catalog, or the path of a .box file that box.package made"),
        "boxes": {provider: BOXES_PER_ARCH for provider in PROVIDERS},
    },
    "local_box": {
        "disk_gb": Integer(4, 512),
        "ready": Boolean(),
        "archives": {
            name: {
                "mirror": Text(r"https?://\S+", "an http(s) URL of the distribution's archive or a mirror of it"),
                "suite": Text(r"[a-z]+", "a release code name such as bookworm"),
                "components": WordList(),
                "keyring": Text(r"/\S+", "the absolute path of the archive's keyring on the host"),
            }
            for name in DISTRIBUTIONS
        },
    },
    "provision": {
        "in_vagrant": Choice("none", "ansible_local"),
        "apt_lock_timeout": Integer(0, 7200),
        "bcc": {
            "install": Choice("auto", "source", "package", "artifact"),
            "build_on": Choice("auto", "vm", "host"),
            "repository": Text(r"(https?|git|file)://\S+|/\S+", "a git URL (https://, git://, file://) or a path"),
            "version": Text(r"[\w.+-]+", "a release tag such as v0.37.0"),
            "artifacts": Text(r"\S+", "a folder on the host, such as ~/.cache/bpflab/bcc-artifacts"),
        },
        "distributions": {
            name: {
                "packages": PackageList(),
                "bcc_build": PackageList(),
                "bcc_package": PackageList(),
                "bcc_conflicts": PackageList(),
                "llvm_dir": Text(r"/\S+", "an absolute path"),
                "optional": PackageList(),
            }
            for name in DISTRIBUTIONS
        },
    },
}


def describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def problems(schema: dict, data: Any, where: str = "") -> list[str]:
    """Every way `data` breaks `schema`, as `key: what was expected` lines."""
    if not isinstance(data, dict):
        return [f"{where or 'top level'}: expected a mapping, got {describe(data)}"]
    found = []
    for key in data:
        if key not in schema:
            allowed = ", ".join(schema)
            found.append(f"{where}{key}: unknown key (expected one of {allowed})")
    for key, rule in schema.items():
        path = f"{where}{key}"
        if key not in data:
            found.append(f"{path}: missing")
        elif isinstance(rule, dict):
            found.extend(problems(rule, data[key], path + "."))
        elif not rule.accepts(data[key]):
            found.append(f"{path}: expected {rule.expected}, got {describe(data[key])}")
    return found


@dataclass(frozen=True)
class VMSettings:
    name: str
    count: int
    engine: str
    provider: str
    acceleration: str
    cpus: int
    memory: int
    distribution: str
    arch: str
    box: str
    boxes: dict


@dataclass(frozen=True)
class LocalBoxSettings:
    disk_gb: int
    ready: bool
    archives: dict


@dataclass(frozen=True)
class ProvisionSettings:
    in_vagrant: str
    apt_lock_timeout: int
    bcc: dict
    distributions: dict


@dataclass(frozen=True)
class Config:
    path: Path
    vm: VMSettings
    local_box: LocalBoxSettings
    provision: ProvisionSettings

    @property
    def root(self) -> Path:
        """The project folder: where the Vagrantfile and .vagrant/ live."""
        return self.path.parent

    @property
    def machines(self) -> list[str]:
        """The Vagrant machines, as the Vagrantfile names them: lab (the primary), lab2, lab3, ..."""
        return ["lab"] + [f"lab{number}" for number in range(2, self.vm.count + 1)]

    @property
    def packaged_box(self) -> Path | None:
        """The ready box file that vm.box names, if it names one; relative paths start at lab.yaml."""
        if self.vm.box in ("local", "catalog"):
            return None
        return self.root / Path(self.vm.box).expanduser()

    @property
    def provision_digest(self) -> str:
        """lab.yaml's provisioning settings, hashed: a ready box records the ones it was made with."""
        return digest_of(asdict(self.provision))

    def bcc_mode(self, distribution: str) -> str:
        """How BCC gets into a VM of `distribution`: auto is a source build on Ubuntu (as the book
        does) and the distribution's package on Debian."""
        setting = self.provision.bcc["install"]
        if setting != "auto":
            return setting
        return "source" if distribution.startswith("ubuntu-") else "package"

    @property
    def bcc_artifacts(self) -> Path:
        """The host folder of exported BCC builds; `~` expands, relative paths start at lab.yaml."""
        return self.root / Path(self.provision.bcc["artifacts"]).expanduser()


# libyaml's parser where PyYAML has it: a tenth of the pure-Python one's time, at every command's start.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str):
    return yaml.load(text, Loader=SAFE_LOADER)


def digest_of(fields: dict) -> str:
    """A short, stable name for settings: the first 12 hex digits of their JSON's sha256."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def parse(text: str, path: Path) -> Config:
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        raise LabError(f"{path} is not valid YAML: {error}. Fix the file and run the command again.") from None
    found = problems(SCHEMA, data)
    if found:
        listing = "\n".join(f"  {path.name}: {line}" for line in found)
        raise LabError(f"{path} has {len(found)} problem(s):\n{listing}\nFix them and run the command again.")
    return Config(
        path=path,
        vm=VMSettings(**data["vm"]),
        local_box=LocalBoxSettings(**data["local_box"]),
        provision=ProvisionSettings(**data["provision"]),
    )


def load(path: Path | str | None = None) -> Config:
    """The settings in `path`, else in $BPFLAB_CONFIG, else the checkout's lab.yaml."""
    path = Path(path or os.environ.get("BPFLAB_CONFIG") or DEFAULT_PATH).resolve()
    try:
        text = path.read_text()
    except OSError as error:
        raise LabError(
            f"Cannot read the lab settings {path}: {error.strerror}. "
            "Run invoke from a bpflab checkout, or restore lab.yaml from git."
        ) from None
    return parsed(text, path)


@functools.lru_cache(maxsize=8)
def parsed(text: str, path: Path) -> Config:
    """The settings of this text, parsed once per process (a task reads them more than once)."""
    return parse(text, path)
