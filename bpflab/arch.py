"""Machine architectures under their three names: the kernel's, Debian's and qemu's.

The host's architecture decides which catalog box fits, which qemu to install and
how KVM is detected; the lab VM's (lab.yaml's vm.arch) may be the other one, which
qemu then emulates.
"""

from __future__ import annotations

import platform

# uname -m -> Debian's architecture name (dpkg --print-architecture).
DEBIAN = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
QEMU_SYSTEM_PACKAGE = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}
# Debian's name -> the kernel's and qemu's (qemu-system-aarch64, libvirt's <type arch=...>).
KERNEL = {"amd64": "x86_64", "arm64": "aarch64"}


def machine() -> str:
    """The host's architecture as the kernel names it (uname -m)."""
    return platform.machine()


def debian(kernel_name: str | None = None) -> str:
    """Debian's name for an architecture (the host's by default): amd64 or arm64."""
    name = kernel_name or machine()
    return DEBIAN.get(name, name)


def is_arm(kernel_name: str | None = None) -> bool:
    return debian(kernel_name) == "arm64"


def qemu_system_package(kernel_name: str | None = None) -> str:
    return QEMU_SYSTEM_PACKAGE.get(kernel_name or machine(), "qemu-system")


def guest(setting: str) -> str:
    """The lab VM's architecture in Debian's name, from lab.yaml's vm.arch (auto: the host's)."""
    return debian() if setting == "auto" else setting


def is_foreign(setting: str) -> bool:
    """Whether the lab VM's architecture differs from the host's: qemu emulates it, never with KVM."""
    return guest(setting) != debian()
