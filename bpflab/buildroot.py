"""A root file system of a lab VM's distribution on the host, to build BCC at native speed.

Under software emulation a BCC build inside the VM takes hours; the same build on
the host, in a root of the VM's own distribution and release made by mmdebstrap
(as the box is), takes minutes and installs the same files, which then reach the
VM as an artifact. A root is cached under a hash of what it is made from, and
every command runs in it through chroot in a mount namespace of its own, so
nothing stays mounted on the host whatever happens to bpflab.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from . import arch
from .commands import run
from .config import Config, digest_of
from .console import Step
from .host import cache_dir


@dataclass(frozen=True)
class BuildRoot:
    """A distribution's archive plus the packages a build needs: what a root is made from."""

    distribution: str
    mirror: str
    suite: str
    components: tuple
    keyring: str
    packages: tuple

    @classmethod
    def for_vm(cls, config: Config, distribution: str, packages: list[str]) -> BuildRoot:
        archive = config.local_box.archives[distribution]
        return cls(
            distribution,
            archive["mirror"],
            archive["suite"],
            tuple(archive["components"]),
            archive["keyring"],
            tuple(sorted({*packages, "ca-certificates", "python3"})),
        )

    @property
    def path(self) -> Path:
        return cache_dir() / "build-roots" / f"{self.distribution}-{arch.debian()}-{digest_of(asdict(self))}"

    def ensure(self, current: Step | None, log: Path) -> Path:
        """The root, made now if it is not cached (an interrupted one is made again)."""
        if (self.path / ".complete").exists():
            return self.path
        partial = self.path.with_name(self.path.name + ".partial")
        run(["rm", "-rf", "--one-file-system", str(partial)], log=log)
        partial.parent.mkdir(parents=True, exist_ok=True)
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--components={','.join(self.components)}",
                f"--keyring={self.keyring}",
                "--include=" + ",".join(self.packages),
                self.suite,
                str(partial),
                self.mirror,
            ],
            current=current,
            log=log,
            what=f"making a {self.distribution} build root (mmdebstrap)",
            fix=f"Check that local_box.archives.{self.distribution} in lab.yaml answers and has these packages, "
            "then run the same command again.",
        )
        (partial / ".complete").write_text(json.dumps(asdict(self), indent=2) + "\n")
        run(["rm", "-rf", "--one-file-system", str(self.path)], log=log)
        partial.rename(self.path)
        return self.path


def memory_kb() -> int:
    """The host's memory, which sizes a build's parallel jobs as the VM's does in the VM."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def unable_reason(vm_arch: str) -> str | None:
    """Why this host cannot build for a VM of `vm_arch`, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the host is not Linux"
    if arch.debian() != vm_arch:
        return f"the host is {arch.debian()} and the VM {vm_arch}"
    if os.geteuid() != 0:
        return "bpflab does not run as root here (mmdebstrap and chroot need it)"
    missing = [tool for tool in ("mmdebstrap", "unshare", "chroot") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} is not installed (run `invoke host.setup`)"
    return None


def run_script(root: Path, text: str, *, current: Step | None, log: Path, what: str, fix: str) -> str:
    """A shell script as root in `root`, with /proc and /dev; its output."""
    (root / "tmp" / "bpflab-step.sh").write_text(text)
    inside = (
        'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$0" '
        "/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 bash /tmp/bpflab-step.sh"
    )
    return run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", inside, str(root)],
        current=current,
        log=log,
        what=what,
        fix=fix,
    ).stdout
