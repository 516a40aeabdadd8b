"""The host side of the lab: Vagrant, libvirt, qemu and the box tools.

On Debian and Ubuntu `setup` installs what is missing from the distribution and
makes sure libvirtd and virtlogd run, also where PID 1 is not systemd (then it
starts them itself and remembers their PIDs, so `teardown` stops exactly those).
Elsewhere it says what to install.
"""

from __future__ import annotations

import grp
import json
import os
import platform
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import arch, libvirt
from .commands import run
from .console import done, say, step
from .errors import LabError

VAGRANT_PACKAGES = ("vagrant", "vagrant-libvirt")  # the Vagrant engine's only
HOST_PACKAGES = [
    *VAGRANT_PACKAGES,
    "libvirt-daemon-system",
    "libvirt-clients",
    "qemu-utils",
    "dnsmasq-base",
    "iptables",
    "iproute2",
    "openssh-client",
    "rsync",
    # box.build: a root file system from the archive (checked with its keyring), a disk, a BIOS boot loader
    "mmdebstrap",
    "debian-archive-keyring",
    "e2fsprogs",
    "fdisk",
    "util-linux",
    "grub-pc-bin",
]
# A lab VM of the other architecture (arm64 on amd64): its qemu and UEFI firmware; for box.build,
# qemu-user to run its programs in the root file system (arch-test proves that works) and the
# FAT tools for the EFI system partition.
FOREIGN_PACKAGES = {
    "arm64": ["qemu-system-arm", "qemu-efi-aarch64", "qemu-user-static", "arch-test", "dosfstools", "mtools"]
}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Ubuntu boxes only: Debian has it from 13 on (Debian 12: bookworm-backports), Ubuntu always.
UBUNTU_KEYRING = "ubuntu-keyring"
OTHER_SYSTEMS = """\
This host is not Debian or Ubuntu, so bpflab cannot install its tools itself. Install:
  Linux (Fedora):  sudo dnf install vagrant vagrant-libvirt libvirt qemu-kvm && sudo systemctl enable --now libvirtd
  Linux (Arch):    sudo pacman -S vagrant libvirt qemu-base dnsmasq && vagrant plugin install vagrant-libvirt
  macOS (Intel or Apple Silicon): install VirtualBox 7.1+ and Vagrant from their vendors' sites,
                   then set `vm.provider: virtualbox` in lab.yaml (bento boxes exist for arm64).
Then run `invoke lab.up`."""


def cache_dir() -> Path:
    """Where expensive things (boxes, daemon PIDs) live, outside any checkout."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bpflab"


def privileged(command: list[str]) -> list[str]:
    return command if os.geteuid() == 0 else ["sudo", *command]


def is_debian_like(os_release: str) -> bool:
    fields = dict(line.split("=", 1) for line in os_release.splitlines() if "=" in line)
    ids = {fields.get("ID", "").strip('"')} | set(fields.get("ID_LIKE", "").strip('"').split())
    return bool(ids & {"debian", "ubuntu"})


def missing_packages(packages: list[str]) -> list[str]:
    """The packages dpkg does not report as installed."""
    query = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages], capture_output=True, text=True
    )
    installed = {line.split()[0] for line in query.stdout.splitlines() if line.endswith(" installed")}
    return [package for package in packages if package not in installed]


def with_candidate(packages: list[str]) -> set[str]:
    """The packages that the host's apt sources offer (an installation candidate)."""
    policy = subprocess.run(["apt-cache", "policy", *packages], capture_output=True, text=True).stdout
    offered, name = set(), None
    for line in policy.splitlines():
        if line and not line.startswith(" "):
            name = line.rstrip(":")
        elif line.strip().startswith("Candidate:") and line.split(":", 1)[1].strip() != "(none)":
            offered.add(name)
    return offered


# Vagrant where the distribution has none: HashiCorp's apt repository, then the libvirt plugin
# built against the host's libvirt. (command, whether it needs root)
HASHICORP_STEPS = [
    (
        "curl -fsSL https://apt.releases.hashicorp.com/gpg | gpg --dearmor --yes "
        "-o /usr/share/keyrings/hashicorp-archive-keyring.gpg",
        True,
    ),
    (
        'echo "deb [signed-by=/usr/share/keyrings/hashicorp-archive-keyring.gpg] https://apt.releases.hashicorp.com '
        '$(. /etc/os-release; echo $VERSION_CODENAME) main" > /etc/apt/sources.list.d/hashicorp.list',
        True,
    ),
    ("apt-get update -q && apt-get install -y -q vagrant", True),
]
PLUGIN_STEPS = [
    ("apt-get install -y -q libvirt-dev pkg-config gcc make libxml2-dev libxslt1-dev zlib1g-dev", True),
    ("vagrant plugin install vagrant-libvirt", False),
]


def vagrant_steps(missing: list[str], offered: set[str], plugin_installed: bool) -> list[tuple[str, bool]]:
    """What it takes to get Vagrant and vagrant-libvirt where the distribution lacks them (Ubuntu
    from 24.04 on); none where its packages will do."""
    if "vagrant" in missing and "vagrant" not in offered:
        return HASHICORP_STEPS + PLUGIN_STEPS
    if "vagrant-libvirt" in missing and "vagrant-libvirt" not in offered and not plugin_installed:
        return PLUGIN_STEPS
    return []


def libvirt_engine_instead(engine: str, steps: list[tuple[str, bool]], hashicorp: bool) -> bool:
    """With vm.engine: auto, a distribution without Vagrant (`steps` to get it) gets bpflab's
    libvirt engine instead of HashiCorp's Vagrant, unless that is asked for."""
    return engine == "auto" and bool(steps) and not hashicorp


def shown(command: str, root: bool) -> str:
    if not root or os.geteuid() == 0:
        return command
    return f"sudo sh -c '{command}'" if any(mark in command for mark in "|>&") else f"sudo {command}"


def vagrant_advice(steps: list[tuple[str, bool]]) -> str | None:
    """The steps as a message to act on, or None when there are none."""
    if not steps:
        return None
    what = (
        "This host's distribution has no vagrant package (Ubuntu dropped it from 24.04 on). Install Vagrant "
        "from HashiCorp's apt repository, then its libvirt plugin with its build dependencies:"
        if steps[0] in HASHICORP_STEPS
        else "Vagrant is installed, but this host's distribution has no vagrant-libvirt package. Install the plugin "
        "with its build dependencies:"
    )
    listing = "".join(f"  {shown(command, root)}\n" for command, root in steps)
    return f"{what}\n{listing}Then run `invoke host.setup` again, or let `invoke host.setup --hashicorp` do all of it."


def run_vagrant_steps(steps: list[tuple[str, bool]]) -> None:
    for command, root in steps:
        with step(f"Vagrant from HashiCorp: {command.split(' -o ')[0][:70]}") as current:
            shell = ["sh", "-c", command]
            run(
                privileged(shell) if root else shell,
                current=current,
                fix="Run the remaining steps of `invoke host.setup`'s advice by hand, then `invoke host.setup`.",
            )


def libvirt_plugin_installed() -> bool:
    if shutil.which("vagrant") is None:
        return False
    listed = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True)
    return "vagrant-libvirt" in listed.stdout


def pid_state_file() -> Path:
    return cache_dir() / "host-daemons.json"


def start_daemons() -> None:
    """Start virtlogd and libvirtd the way the host's init system allows."""
    if Path("/run/systemd/system").is_dir():
        run(privileged(["systemctl", "start", "virtlogd", "libvirtd"]))
        return
    started = {}
    for name in ("virtlogd", "libvirtd"):
        pidfile = Path(f"/run/{name}.pid")
        if not process_alive(read_pid(pidfile)):
            run(privileged([f"/usr/sbin/{name}", "--daemon"]))
            for _ in range(50):
                if process_alive(read_pid(pidfile)):
                    break
                time.sleep(0.1)
            started[name] = read_pid(pidfile)
    if started:
        pid_state_file().parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(pid_state_file().read_text()) if pid_state_file().exists() else {}
        pid_state_file().write_text(json.dumps({**previous, **started}))
    for _ in range(100):
        if libvirt.answers():
            return
        time.sleep(0.2)
    raise LabError(
        "libvirtd was started but does not answer on qemu:///system. "
        "Look at its log (/var/log/libvirt/libvirtd.log) and run `invoke host.setup` again."
    )


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_kvm_device_group() -> None:
    """Give /dev/kvm the owner udev would give it (root:kvm 0660) where udev does not run.

    Otherwise libvirt probes qemu as root with KVM, then finds KVM unusable for
    its qemu user, throws its capability cache away and re-probes qemu on every
    call: seconds per virsh call and nearly a minute per `vagrant up`.
    """
    device = Path("/dev/kvm")
    if not device.exists() or Path("/run/udev/control").exists():
        return
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return
    info = device.stat()
    if info.st_gid != kvm_gid or info.st_mode & 0o060 != 0o060:
        run(privileged(["chgrp", "kvm", str(device)]))
        run(privileged(["chmod", "0660", str(device)]))
        done("/dev/kvm set to root:kvm 0660 (what udev does on a stock host)")


def foreign_binaries(architecture: str) -> None:
    """Let the kernel run `architecture`'s programs through qemu-user (binfmt_misc), as mmdebstrap
    needs for a foreign root file system. Where no init system has done it, this mounts binfmt_misc
    and registers the interpreter from qemu-user-static's own binfmt.d entry."""
    name = f"qemu-{arch.KERNEL[architecture]}"
    entry = Path(f"/usr/lib/binfmt.d/{name}.conf")
    if not entry.exists():
        raise LabError(
            f"qemu-user-static is not installed, so this host cannot run {architecture} programs to "
            f"build the {architecture} box. Run `invoke host.setup` (vm.arch: {architecture} in lab.yaml "
            "makes it install the emulators), then `invoke box.build`."
        )
    if not (BINFMT / "register").exists():
        run(
            privileged(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)]),
            fix="Mount it by hand (`mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc`), then try again.",
        )
    try:
        if not (BINFMT / name).exists():
            (BINFMT / "register").write_text(next(line for line in entry.read_text().splitlines() if line[:1] == ":"))
        if (BINFMT / name).read_text().splitlines()[0] != "enabled":
            (BINFMT / name).write_text("1")
    except (OSError, StopIteration) as error:
        raise LabError(
            f"The kernel did not take qemu-user's {architecture} interpreter ({BINFMT}: {error}). "
            f"Register it as root (`update-binfmts --enable {name}`, or write {entry}'s line to "
            f"{BINFMT}/register), then run `invoke box.build` again."
        ) from None


def setup(hashicorp: bool = False, vm_arch: str = "auto", engine: str = "auto") -> None:
    """Install the host tools (idempotent) and make libvirt answer; for a lab VM whose architecture
    (lab.yaml's vm.arch) is not the host's, also the emulators for it. Vagrant only for its engine
    (lab.yaml's vm.engine): with `auto`, where the distribution has it; with `vagrant`, where it
    has none, say how to get HashiCorp's, or (`hashicorp`) get it."""
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    if platform.system() != "Linux" or not is_debian_like(os_release):
        raise LabError(OTHER_SYSTEMS)
    packages = [name for name in HOST_PACKAGES if engine != "libvirt" or name not in VAGRANT_PACKAGES]
    packages += [arch.qemu_system_package(), UBUNTU_KEYRING]
    if arch.is_foreign(vm_arch):
        packages += FOREIGN_PACKAGES.get(arch.guest(vm_arch), [])
    missing = missing_packages(packages)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if [name for name in missing if name != UBUNTU_KEYRING]:
        with step("Updating the host's package lists") as current:
            run(privileged(["apt-get", "update", "-q"]), current=current, env=env)
    offered = with_candidate(missing) if missing else set()
    # Vagrant is asked about its plugin only where the package is missing (and Vagrant is wanted).
    vagrant_from_hashicorp = vagrant_steps(
        missing, offered, "vagrant-libvirt" in missing and libvirt_plugin_installed()
    )
    if libvirt_engine_instead(engine, vagrant_from_hashicorp, hashicorp):
        say(
            "This host's distribution has no Vagrant (or no vagrant-libvirt): bpflab's own libvirt engine runs "
            "the lab VMs (vm.engine: auto). `invoke host.setup --hashicorp` installs HashiCorp's Vagrant instead."
        )
        missing = [name for name in missing if name not in VAGRANT_PACKAGES]
        vagrant_from_hashicorp = []
    if UBUNTU_KEYRING in missing and UBUNTU_KEYRING not in offered:
        say(
            f"{UBUNTU_KEYRING} is not in this host's apt sources (on Debian 12 it is in bookworm-backports): "
            "only Ubuntu boxes need it."
        )
    absent = [name for name in missing if name not in offered and name not in (*VAGRANT_PACKAGES, UBUNTU_KEYRING)]
    if absent:
        raise LabError(
            f"This host's apt sources have no {', '.join(absent)}. Enable the distribution's main "
            "archive (and universe on Ubuntu), run `sudo apt-get update`, then `invoke host.setup` again."
        )
    missing = [name for name in missing if name in offered]
    if missing:
        with step(f"Installing {len(missing)} host packages: {' '.join(missing)}") as current:
            run(
                privileged(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]),
                current=current,
                env=env,
                fix="Install them by hand and run `invoke host.setup` again.",
            )
    else:
        done("Host packages already installed")
    if vagrant_from_hashicorp and hashicorp:
        run_vagrant_steps(vagrant_from_hashicorp)
    elif vagrant_from_hashicorp:
        raise LabError(vagrant_advice(vagrant_from_hashicorp))
    ensure_kvm_device_group()
    if libvirt.answers():
        done(f"libvirtd answers on {libvirt.URI}")
    else:
        with step("Starting virtlogd and libvirtd"):
            start_daemons()
    libvirt.ensure_storage_pool()
    libvirt.ensure_management_network()


def teardown() -> None:
    """Stop the daemons that `setup` started itself, and the networks they run."""
    if not pid_state_file().exists():
        say("No daemons were started by bpflab; nothing to stop.")
        return
    pids = json.loads(pid_state_file().read_text())
    if process_alive(pids.get("libvirtd")):
        libvirt.stop_networks()
    for name in ("libvirtd", "virtlogd"):
        pid = pids.get(name)
        if process_alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not process_alive(pid):
                    break
                time.sleep(0.1)
            say(f"Stopped {name} (pid {pid})")
    pid_state_file().unlink()


def require_tool(name: str) -> None:
    if shutil.which(name) is None:
        raise LabError(
            f"`{name}` is not installed on this host. Run `invoke host.setup` "
            "(Debian/Ubuntu) or install it as the README says, then try again."
        )
