"""An offline Vagrant libvirt box built from Debian packages, and the box choice.

Where the Vagrant box catalog cannot be reached, the lab VM runs on a Debian
bookworm box made here: mmdebstrap builds the root file system, it goes onto an
MBR disk with GRUB for BIOS, and the disk is packed as a libvirt box. The box is
cached outside the repo under a hash of its recipe, so an unchanged recipe
never rebuilds.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from . import arch, vagrant
from .commands import run
from .config import Config
from .console import say, step
from .errors import LabError
from .host import cache_dir, require_tool

PACKAGES = [
    "linux-image-amd64", "systemd-sysv", "udev", "dbus", "ifupdown", "isc-dhcp-client",
    "openssh-server", "openssh-sftp-server", "sudo", "python3", "ca-certificates",
    "iproute2", "procps", "kmod", "less", "tar", "gzip", "rsync",
]
HOSTNAME = "bpflab"
GUEST_FILES = {
    "etc/hostname": f"{HOSTNAME}\n",
    "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n",
    "etc/network/interfaces": "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n",
    "etc/sudoers.d/vagrant": "vagrant ALL=(ALL) NOPASSWD:ALL\nDefaults:vagrant !requiretty\n",
    "etc/ssh/sshd_config.d/vagrant.conf": "UseDNS no\nPasswordAuthentication no\n",
    # Each VM gets its own host keys on first boot instead of sharing the box's.
    "etc/systemd/system/ssh.service.d/host-keys.conf":
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n",
    "etc/machine-id": "",
}
KERNEL_CMDLINE = "console=ttyS0 net.ifnames=0 biosdevname=0 ro quiet"
BOX_VAGRANTFILE = """\
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
"""
PARTITION_START = 2048  # sectors: the gap before it holds GRUB's core.img
MBR_CODE_BYTES = 440  # boot code ends here; the disk signature and partition table follow
# Bump when the build steps below change in a way the recipe fields do not show.
BUILD_REVISION = 1


@dataclass(frozen=True)
class Recipe:
    suite: str
    mirror: str
    disk_gb: int
    packages: tuple
    guest_files: tuple
    kernel_cmdline: str
    box_vagrantfile: str
    build_revision: int

    @classmethod
    def from_config(cls, config: Config) -> Recipe:
        settings = config.local_box
        return cls(settings.suite, settings.mirror, settings.disk_gb, tuple(PACKAGES),
                   tuple(sorted(GUEST_FILES.items())), KERNEL_CMDLINE, BOX_VAGRANTFILE, BUILD_REVISION)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def box_name(self) -> str:
        return f"bpflab/debian-{self.suite}-{self.digest}"

    @property
    def box_file(self) -> Path:
        return cache_dir() / "boxes" / self.digest / "bpflab.box"


def insecure_public_key() -> str:
    """Vagrant's well-known key, which Vagrant swaps for a fresh one on first up."""
    candidates = glob.glob("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub") + \
        glob.glob("/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub")
    if not candidates:
        raise LabError("Vagrant's insecure public key (keys/vagrant.pub) was not found: is Vagrant "
                       "installed? Run `invoke host.setup` and then `invoke box.build`.")
    return Path(sorted(candidates)[-1]).read_text()


def catalog_reachable(box: str, timeout: float = 5.0) -> bool:
    """Whether Vagrant's box catalog answers for `box` (one short HTTPS request)."""
    try:
        urllib.request.urlopen(f"https://vagrantcloud.com/api/v2/box/{box}", timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


def choose(setting: str, provider: str, arch: str, catalog_box: str,
           installed: set, reachable) -> tuple[str, str]:
    """Pick (local|catalog, why). `reachable` is called only when needed."""
    local_possible = provider == "libvirt" and arch == "amd64"
    if setting == "catalog":
        return "catalog", f"lab.yaml asks for the catalog box {catalog_box}"
    if setting == "local":
        if not local_possible:
            raise LabError(f"vm.box is 'local', but the local box is built for libvirt on amd64 only "
                           f"(this is {provider} on {arch}). Set vm.box to auto or catalog in lab.yaml.")
        return "local", "lab.yaml asks for the local Debian box"
    if (catalog_box, provider) in installed:
        return "catalog", f"{catalog_box} is installed"
    if reachable(catalog_box):
        return "catalog", f"{catalog_box} will be downloaded from the Vagrant box catalog"
    if local_possible:
        return "local", "the Vagrant box catalog cannot be reached, so the lab uses the local Debian box"
    raise LabError(f"The box {catalog_box} is not installed and the Vagrant box catalog cannot be reached. "
                   f"Add the box by hand (`vagrant box add {catalog_box} FILE`) or connect to the internet.")


def write_guest_files(rootfs: Path, root_uuid: str, public_key: str) -> None:
    for relative, content in GUEST_FILES.items():
        path = rootfs / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (rootfs / "etc/sudoers.d/vagrant").chmod(0o440)
    (rootfs / "etc/fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    for key in rootfs.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    grub = rootfs / "boot/grub/grub.cfg"
    grub.parent.mkdir(parents=True, exist_ok=True)
    grub.write_text(f"set timeout=0\nsearch --no-floppy --fs-uuid --set=root {root_uuid}\n"
                    f"menuentry 'Debian (bpflab)' {{\n"
                    f"  linux /vmlinuz root=UUID={root_uuid} {KERNEL_CMDLINE}\n"
                    f"  initrd /initrd.img\n}}\n")
    ssh_dir = rootfs / "home/vagrant/.ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key)
    ssh_dir.chmod(0o700)
    (ssh_dir / "authorized_keys").chmod(0o600)


def install_boot_loader(disk: Path, workdir: Path, rootfs: Path) -> None:
    """Put GRUB for BIOS on the disk without loop devices or mounts.

    boot.img goes in the MBR (before the partition table) and core.img in the
    gap before the first partition, where boot.img looks for it (sector 1);
    GRUB's modules go in the root file system's /boot/grub/i386-pc.
    """
    modules = Path("/usr/lib/grub/i386-pc")
    if not (modules / "boot.img").exists():
        raise LabError("GRUB's BIOS files (/usr/lib/grub/i386-pc) are missing. Run `invoke host.setup`.")
    shutil.copytree(modules, rootfs / "boot/grub/i386-pc",
                    ignore=shutil.ignore_patterns("*.image", "*.exec", "grub-bios-setup", "*.module"))
    core = workdir / "core.img"
    run(["grub-mkimage", "--format=i386-pc", f"--output={core}", "--prefix=(hd0,msdos1)/boot/grub",
         "biosdisk", "part_msdos", "ext2"])
    if core.stat().st_size > (PARTITION_START - 1) * 512:
        raise LabError(f"GRUB's core.img ({core.stat().st_size} bytes) does not fit before the partition.")
    with disk.open("r+b") as image:
        image.write((modules / "boot.img").read_bytes()[:MBR_CODE_BYTES])
        image.seek(512)
        image.write(core.read_bytes())


def build_file(recipe: Recipe, workdir: Path, log: Path) -> None:
    """Build the .box file in `workdir` (mmdebstrap needs root; the disk steps do not)."""
    for tool in ("mmdebstrap", "mkfs.ext4", "sfdisk", "grub-mkimage", "qemu-img"):
        require_tool(tool)
    public_key = insecure_public_key()
    rootfs, disk = workdir / "rootfs", workdir / "disk.raw"
    root_uuid = str(uuid.uuid4())
    with step(f"Debian {recipe.suite} root file system (mmdebstrap, about a minute)") as current:
        run((["mmdebstrap", "--variant=minbase", "--include=" + ",".join(recipe.packages),
                        "--customize-hook=chroot \"$1\" useradd --create-home --shell /bin/bash vagrant",
                        recipe.suite, str(rootfs), recipe.mirror]),
            current=current, log=log, fix="Check that the Debian mirror in lab.yaml (local_box.mirror) answers.")
        write_guest_files(rootfs, root_uuid, public_key)
        run((["chroot", str(rootfs), "chown", "-R", "vagrant:vagrant", "/home/vagrant"]), log=log)
    with step(f"Bootable {recipe.disk_gb} GB disk (ext4 + GRUB for BIOS)") as current:
        disk_bytes = recipe.disk_gb * 1024**3
        run(["truncate", "--size", str(disk_bytes), str(disk)], log=log)
        layout = subprocess.run(["sfdisk", "--quiet", str(disk)], capture_output=True, text=True,
                                input=f"label: dos\nstart={PARTITION_START}, type=83, bootable\n")
        if layout.returncode:
            raise LabError(f"sfdisk could not partition {disk}: {layout.stderr.strip()}")
        install_boot_loader(disk, workdir, rootfs)
        partition_kib = (disk_bytes - PARTITION_START * 512) // 1024
        run((["mkfs.ext4", "-q", "-F", "-L", "bpflab-root", "-U", root_uuid, "-d", str(rootfs),
                        "-E", f"offset={PARTITION_START * 512}", str(disk), f"{partition_kib}k"]),
            current=current, log=log)
    with step("Packing the box (qcow2 + metadata)") as current:
        run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(workdir / "box.img")], current=current, log=log)
        (workdir / "metadata.json").write_text(json.dumps(
            {"provider": "libvirt", "format": "qcow2", "virtual_size": recipe.disk_gb}))
        (workdir / "Vagrantfile").write_text(BOX_VAGRANTFILE)
        with tarfile.open(workdir / "bpflab.box", "w") as box:
            for name in ("metadata.json", "Vagrantfile", "box.img"):
                box.add(workdir / name, arcname=name)


def build(config: Config) -> Recipe:
    """Make sure the local box exists in the cache and in Vagrant; build only when missing."""
    if os.geteuid() != 0:
        raise LabError("Building the box needs root (mmdebstrap and chroot): run `sudo invoke box.build`, "
                       "then `invoke lab.up`.")
    if arch.debian() != "amd64":
        raise LabError("The local box is built for amd64 hosts only. On this host use a catalog box: "
                       "set vm.box to catalog in lab.yaml.")
    recipe = Recipe.from_config(config)
    if recipe.box_file.exists():
        say(f"[green]✓[/green] Box {recipe.box_name} is cached: {recipe.box_file}")
    else:
        recipe.box_file.parent.mkdir(parents=True, exist_ok=True)
        log = recipe.box_file.parent / "build.log"
        log.unlink(missing_ok=True)
        say(f"Building the local box {recipe.box_name} (log: {log})")
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=recipe.box_file.parent))
        try:
            build_file(recipe, workdir, log)
            (workdir / "bpflab.box").rename(recipe.box_file)
        finally:
            run((["rm", "-rf", "--one-file-system", str(workdir)]), check=False)
    if (recipe.box_name, "libvirt") in vagrant.installed_boxes():
        say(f"[green]✓[/green] Box {recipe.box_name} is registered with Vagrant")
    else:
        with step(f"Registering {recipe.box_name} with Vagrant") as current:
            vagrant.add_box(recipe.box_name, recipe.box_file, current)
    return recipe

