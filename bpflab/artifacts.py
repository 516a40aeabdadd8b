"""BCC built from source on the host, and the exported builds (artifacts) that carry a build to
VMs and boxes.

A build is the same wherever it runs: bcc-build.sh clones BCC at the pinned tag, builds and
installs it and lists its files; bcc-export.sh packs those files with the packages they need
at run time. On the host it runs in a root of the VM's distribution (buildroot.py) at native
speed; the tarball and its description then install into a VM, or into a ready seat's box, in
seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import buildroot
from .commands import run, script
from .config import Config
from .console import done, step
from .errors import LabError

# Where a BCC install (source build or artifact) records itself in a machine: what it was built from
# (provisioning's stamp) and every file it put there (what an export packs).
STAMP = "/var/lib/bpflab/bcc.json"
INSTALLED_FILES = "/var/lib/bpflab/bcc-files.txt"


def stamp_text(built: dict, via: str, distribution: str, arch: str) -> str:
    """The stamp that says which BCC build a machine has and how it came (source, artifact, host)."""
    return json.dumps({"built": built, "via": via, "distribution": distribution, "arch": arch}, sort_keys=True)


def build_settings(config: Config, distribution: str) -> dict:
    """What a BCC build for `distribution` is made from: a build is redone when this changes."""
    bcc = config.provision.bcc
    return {
        "repository": bcc["repository"],
        "version": bcc["version"],
        "llvm_dir": config.provision.distributions[distribution]["llvm_dir"],
    }


def make_jobs(cpus: int, memory_kb: int) -> int:
    """Parallel compile jobs: one per CPU, but at most one per 1.5 GB (cc1plus on LLVM headers)."""
    return max(1, min(cpus, memory_kb // (1536 * 1024)))


def build_phases(settings: dict, where: str) -> list[tuple[str, str, str]]:
    """bcc-build.sh's phases, each with what it is and what to do when it fails."""
    machine = "the VM's" if where == "vm" else "this host's"
    return [
        (
            "clone",
            f"git clone of BCC {settings['version']}",
            f"Check provision.bcc.repository and version in lab.yaml, and {machine} network.",
        ),
        ("build", "the BCC build", "Fix the cause shown above and run `invoke lab.provision` again."),
        ("record", "listing the files BCC installed", "Run `invoke lab.provision` again."),
    ]


def build_script(phase: str, settings: dict, jobs: int, **extra: str) -> str:
    return f"set -- {phase}\n" + script(
        "bcc-build.sh",
        REPOSITORY=settings["repository"],
        VERSION=settings["version"],
        LLVM_DIR=settings["llvm_dir"],
        JOBS=str(jobs),
        **extra,
    )


def build_on_host(config: Config, distribution: str, arch: str, settings: dict, log: Path) -> Artifact:
    """The same build as in a VM, on this host, in a root of the VM's distribution and release; its
    files become an artifact in bcc.artifacts, exactly as an export of a build in the VM would."""
    build_log = log.with_name("bcc-build.log")
    root = buildroot.BuildRoot.for_vm(config, distribution, config.provision.distributions[distribution]["bcc_build"])
    jobs = make_jobs(os.cpu_count() or 1, buildroot.memory_kb())
    with step(f"A {distribution} build root on this host ({root.path}; made once, then cached)") as current:
        path = root.ensure(current, build_log)
    with step(
        f"Building BCC {settings['version']} on this host for {distribution} (make -j{jobs}; log: {build_log})"
    ) as current:
        for phase, what, fix in build_phases(settings, "host"):
            if phase == "clone":  # with the host's git and its network (and its url.insteadOf settings)
                source = path / "opt" / "bpflab" / f"bcc-{settings['version']}"
                run(
                    ["bash", "-c", build_script(phase, settings, jobs, SOURCE_DIR=str(source))],
                    current=current,
                    log=build_log,
                    what=what,
                    fix=fix,
                )
            else:
                buildroot.run_script(
                    path, build_script(phase, settings, jobs), current=current, log=build_log, what=what, fix=fix
                )
        output = buildroot.run_script(
            path,
            script("bcc-export.sh"),
            current=current,
            log=build_log,
            what="packing BCC's files in the build root",
            fix="Run `invoke lab.provision` again.",
        )
    packed = path / "tmp" / "bpflab-bcc.tar.gz"
    tarball = save_artifact(
        config, distribution, arch, settings, output, lambda partial: shutil.move(packed, partial), "host"
    )
    return Artifact.load(tarball.with_suffix("").with_suffix(".json"))


@dataclass
class Artifact:
    """A BCC build exported to the host: a tarball of its files and what it was built from."""

    tarball: Path
    built: dict
    distribution: str
    arch: str
    runtime_packages: list[str]
    sha256: str

    @staticmethod
    def stem(version: str, distribution: str, arch: str) -> str:
        return f"bcc-{version}-{distribution}-{arch}"

    @classmethod
    def load(cls, metadata: Path) -> Artifact:
        data = json.loads(metadata.read_text())
        return cls(
            metadata.with_suffix(".tar.gz"),
            data["built"],
            data["distribution"],
            data["arch"],
            data["runtime_packages"],
            data["sha256"],
        )

    @classmethod
    def built_with(cls, folder: Path, built: dict, distribution: str, arch: str) -> Artifact | None:
        """The artifact of exactly these build settings, if one was exported and is intact."""
        metadata = folder / f"{cls.stem(built['version'], distribution, arch)}.json"
        if not metadata.exists():
            return None
        artifact = cls.load(metadata)
        intact = artifact.tarball.exists() and file_sha256(artifact.tarball) == artifact.sha256
        return artifact if intact and artifact.built == built else None

    @classmethod
    def find(cls, folder: Path, version: str, distribution: str, arch: str) -> Artifact:
        """The artifact for exactly this version, distribution and architecture, checked, or a clear refusal."""
        metadata = folder / f"{cls.stem(version, distribution, arch)}.json"
        if not metadata.exists():
            present = sorted(path.stem for path in folder.glob("bcc-*.json")) if folder.is_dir() else []
            raise LabError(
                f"bcc.install is artifact, but {folder} has no BCC {version} built for {distribution} {arch} "
                f"({'it has: ' + ', '.join(present) if present else 'it is empty'}). A BCC build only runs on the "
                "distribution and architecture it was built on. Build it once with `bcc.install: source` "
                "(each build is exported there), or run `invoke lab.bcc-export` on a VM that has it."
            )
        artifact = cls.load(metadata)
        if (artifact.built.get("version"), artifact.distribution, artifact.arch) != (version, distribution, arch):
            raise LabError(
                f"{metadata} describes BCC {artifact.built.get('version')} for {artifact.distribution} "
                f"{artifact.arch}, not what its name says. Delete it and export again "
                "(`invoke lab.bcc-export`)."
            )
        if not artifact.tarball.exists() or file_sha256(artifact.tarball) != artifact.sha256:
            raise LabError(
                f"{artifact.tarball} is missing or damaged (its checksum does not match {metadata.name}). "
                "Delete both files and export again (`invoke lab.bcc-export`)."
            )
        return artifact


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_artifact(
    config: Config,
    distribution: str,
    arch: str,
    built: dict,
    packed: str,
    fetch: Callable[[Path], object],
    origin: str,
    kernel: str = "",
) -> Path:
    """Bring a packed build (bcc-export.sh's output says its checksum and runtime packages) into the
    artifact folder with its metadata; `fetch(path)` puts the tarball at `path`; `kernel`: the
    running kernel of the VM it was exported from."""
    values = dict(line.split("=", 1) for line in packed.splitlines() if "=" in line)
    folder = config.bcc_artifacts
    folder.mkdir(parents=True, exist_ok=True)
    stem = Artifact.stem(built["version"], distribution, arch)
    partial = folder / f"{stem}.tar.gz.partial"
    fetch(partial)
    if file_sha256(partial) != values["sha256"]:
        partial.unlink()
        raise LabError("The BCC artifact arrived damaged (checksum mismatch). Run the same command again.")
    tarball = partial.with_name(f"{stem}.tar.gz")
    partial.replace(tarball)
    metadata = {
        "built": built,
        "distribution": distribution,
        "arch": arch,
        "built_on": origin,
        "runtime_packages": values["runtime_packages"].split(),
        "sha256": values["sha256"],
        "exported_from_kernel": kernel,
    }
    (folder / f"{stem}.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    done(f"BCC artifact: {tarball} ({tarball.stat().st_size // 1024} KiB)")
    return tarball
