"""The lab VM's box, built here from its distribution's own archive, and the box choice.

The Vagrant box catalog is closing, so bpflab makes its boxes: mmdebstrap builds
the root file system from the distribution's archive (Debian or Ubuntu), it goes
onto an MBR disk with GRUB for BIOS (amd64) or a GPT disk with GRUB for UEFI
(arm64, whose programs run on the x86_64 host through qemu-user), and the disk is
packed as a libvirt box.
The box is cached outside the repo under a hash of its recipe, which includes the
archive's current release and the kernel it serves now, so a box made before the
archive replaced its kernel (and so its headers) is made again instead of booting a
kernel whose headers the VM cannot install.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import lzma
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from . import arch, buildroot, vagrant
from .artifacts import INSTALLED_FILES, STAMP, Artifact, build_on_host, build_settings, stamp_text
from .commands import SCRIPTS, run
from .config import Config, digest_of
from .console import done, say, step, warn
from .errors import LabError
from .host import cache_dir, foreign_binaries, require_tool

PACKAGES = [
    "systemd-sysv",
    "udev",
    "dbus",
    "ifupdown",
    "isc-dhcp-client",
    "openssh-server",
    "openssh-sftp-server",
    "sudo",
    "python3",
    "ca-certificates",
    "iproute2",
    "procps",
    "kmod",
    "less",
    "tar",
    "gzip",
    "rsync",
]
# Each family's kernel meta package: it follows the archive's current kernel.
KERNELS = {
    ("debian", "amd64"): "linux-image-amd64",
    ("debian", "arm64"): "linux-image-arm64",
    ("ubuntu", "amd64"): "linux-image-virtual",
}
# Per architecture: the serial console the kernel writes to, and what the boot loader needs in the
# root file system (GRUB's arm64 UEFI modules exist only as an arm64 package).
CONSOLES = {"amd64": "ttyS0", "arm64": "ttyAMA0"}
BOOT_PACKAGES = {"amd64": (), "arm64": ("grub-efi-arm64-bin",)}
# Files in place before any package installs. arm64's root file system is made through qemu-user,
# where mkinitramfs with every module takes minutes per run (it runs twice): its initramfs holds
# only what a libvirt VM needs to mount its root, and kernels installed later in the VM get the same.
EARLY_FILES = {
    "amd64": (),
    "arm64": (
        ("etc/initramfs-tools/conf.d/bpflab", "MODULES=list\n"),
        ("usr/share/initramfs-tools/modules.d/bpflab", "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n"),
    ),
}
# The kernel packages keep /vmlinuz and /initrd.img pointing at the newest kernel, which GRUB boots.
KERNEL_IMG_CONF = "do_symlinks = yes\nlink_in_boot = no\n"
CATALOG_DISTRIBUTION = "ubuntu-22.04"
HOSTNAME = "bpflab"
GUEST_FILES = {
    "etc/hostname": f"{HOSTNAME}\n",
    "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n",
    "etc/network/interfaces": "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n",
    "etc/sudoers.d/vagrant": "vagrant ALL=(ALL) NOPASSWD:ALL\nDefaults:vagrant !requiretty\n",
    # Ed25519 and ECDSA host keys only: an RSA key takes seconds to make under emulation, at every first boot.
    "etc/ssh/sshd_config.d/vagrant.conf": "UseDNS no\nPasswordAuthentication no\n"
    "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n",
    # Each VM gets its own host keys on first boot instead of sharing the box's.
    "etc/systemd/system/ssh.service.d/host-keys.conf": "[Service]\nExecStartPre=\n"
    "ExecStartPre=/bin/sh -c 'for type in ed25519 ecdsa; do "
    'test -f /etc/ssh/ssh_host_$${type}_key || ssh-keygen -q -t $$type -N "" -f /etc/ssh/ssh_host_$${type}_key; '
    "done'\nExecStartPre=/usr/sbin/sshd -t\nExecStartPre=/usr/local/sbin/bpflab-ssh-key\n",
    "usr/local/sbin/bpflab-ssh-key": (SCRIPTS / "ssh-key-from-cmdline.sh").read_text(),
    "etc/machine-id": "",
}
KERNEL_OPTIONS = "net.ifnames=0 biosdevname=0 ro quiet"
BOX_VAGRANTFILE = """\
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
"""
PARTITION_START = 2048  # sectors: the gap before it holds GRUB's core.img
EFI_PARTITION_MIB = 64  # UEFI disks: the FAT partition that holds GRUB's EFI program, before the root
MBR_CODE_BYTES = 440  # boot code ends here; the disk signature and partition table follow
# dpkg in the box's root: no sync per file (the root is thrown away if the build fails), and no
# documentation, manual pages or translations (minbase has no man-db; a slim image, like Debian's
# own container images, unpacks faster and is smaller to load into libvirt's pool).
LEAN_DPKG = (
    "--dpkgopt=force-unsafe-io",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
# Bump when the build steps below change in a way the recipe fields do not show.
BUILD_REVISION = 5
APT_UNAVAILABLE = SCRIPTS / "apt-unavailable.sh"
SSHD_KEEPALIVE_PATH = "etc/ssh/sshd_config.d/bpflab.conf"
# A ready seat says what it is here, as a box that box.package made does; provisioning reads it.
SEAT_DESCRIPTION = "etc/bpflab/box.json"
SEAT_UNAVAILABLE = "etc/bpflab/unavailable"  # the build's note of optional packages the archive lacks
# Beside a box in the cache: its kernel and initrd (the libvirt engine boots them), and a mark of a
# box that Vagrant cannot log in to (built where Vagrant, and so its first-login key, was absent).
BOOT_FOLDER = "boot"
WITHOUT_VAGRANT_KEY = "without-vagrant-key"


@dataclass(frozen=True)
class Recipe:
    """Everything a box is built from; its hash names the box."""

    distribution: str
    mirror: str
    suite: str
    components: tuple
    keyring: str
    archive_release: str
    kernel: str
    disk_gb: int
    packages: tuple
    guest_files: tuple
    kernel_cmdline: str
    box_vagrantfile: str
    build_revision: int
    # Fields added later; at their defaults they are left out of the digest, so that the boxes
    # made before them keep their names.
    architecture: str = "amd64"
    early_files: tuple = ()
    # A ready seat (local_box.ready): what provisioning would install, installed here at native speed.
    seat_packages: tuple = ()
    seat_optional: tuple = ()  # installed where the archive has them
    seat_files: tuple = ()
    seat_bcc: tuple = ()  # BCC's build settings where it comes from source: built on this host, then installed

    @classmethod
    def from_config(cls, config: Config, archive_release: str, kernel: str = "") -> Recipe:
        distribution, architecture = config.vm.distribution, arch.guest(config.vm.arch)
        archive = config.local_box.archives[distribution]
        image = kernel_package(distribution, architecture)
        packages = (*PACKAGES, *BOOT_PACKAGES[architecture], image)
        seat = seat_contents(config, distribution, image) if config.local_box.ready else ((), (), (), ())
        return cls(
            distribution,
            archive["mirror"],
            archive["suite"],
            tuple(archive["components"]),
            archive["keyring"],
            archive_release,
            kernel,
            config.local_box.disk_gb,
            packages,
            tuple(sorted(GUEST_FILES.items())),
            f"console={CONSOLES[architecture]} {KERNEL_OPTIONS}",
            BOX_VAGRANTFILE,
            BUILD_REVISION,
            architecture,
            EARLY_FILES[architecture],
            *seat,
        )

    @property
    def digest(self) -> str:
        values = asdict(self)
        return digest_of(
            {
                field.name: values[field.name]
                for field in dataclasses.fields(self)
                if field.default is dataclasses.MISSING or getattr(self, field.name) != field.default
            }
        )

    @property
    def ready(self) -> bool:
        return bool(self.seat_packages)

    @property
    def box_name(self) -> str:
        tag = "" if self.architecture == "amd64" else f"{self.architecture}-"
        return f"bpflab/{self.distribution}-{tag}{self.digest}"

    @property
    def uefi(self) -> bool:
        """amd64 boxes boot with BIOS; arm64 has no BIOS, only UEFI."""
        return self.architecture != "amd64"

    @property
    def box_file(self) -> Path:
        return cache_dir() / "boxes" / self.digest / "bpflab.box"

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        fields = json.loads(text)
        pairs = ("guest_files", "early_files", "seat_files", "seat_bcc")  # tuples of (key, value)
        return cls(
            **{
                key: tuple(map(tuple, value)) if key in pairs else tuple(value) if isinstance(value, list) else value
                for key, value in fields.items()
            }
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def bootstrap_command(self, rootfs: Path, runtime_packages: tuple = ()) -> list[str]:
        """The mmdebstrap call: minimal system, this archive only, checked with its keyring;
        `runtime_packages`: what a BCC build installed into the seat needs."""
        return [
            "mmdebstrap",
            "--variant=minbase",
            f"--architectures={self.architecture}",
            *LEAN_DPKG,
            f"--components={','.join(self.components)}",
            f"--keyring={self.keyring}",
            "--include=" + ",".join(self.packages),
            f'--setup-hook=mkdir -p "$1/etc" && printf \'{KERNEL_IMG_CONF}\' > "$1/etc/kernel-img.conf"',
            *(
                f"--setup-hook=mkdir -p \"$1/{os.path.dirname(path)}\" && printf '%s' '{content}' > \"$1/{path}\""
                for path, content in self.early_files
            ),
            '--customize-hook=chroot "$1" useradd --create-home --shell /bin/bash vagrant',
            *self.seat_hooks(runtime_packages),
            self.suite,
            str(rootfs),
            self.mirror,
        ]

    def seat_hooks(self, runtime_packages: tuple) -> list[str]:
        """A ready seat's own steps, while the archive's package lists are still in the root: its
        packages, the optional ones the archive has (the others are named in SEAT_UNAVAILABLE for
        provisioning), python as python3."""
        if not self.ready:
            return []
        optional = " ".join(self.seat_optional)
        return [
            "--include=" + ",".join(dict.fromkeys([*self.seat_packages, *runtime_packages])),
            f'--customize-hook=mkdir -p "$1/{os.path.dirname(SEAT_UNAVAILABLE)}" && '
            f'chroot "$1" bash -s {optional} < {shlex.quote(str(APT_UNAVAILABLE))} > "$1/{SEAT_UNAVAILABLE}"',
            f'--customize-hook=chroot "$1" sh -c \'wanted=; for name in {optional}; do '
            f'grep -qx "$name" /{SEAT_UNAVAILABLE} || wanted="$wanted $name"; done; [ -z "$wanted" ] || '
            "DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends $wanted'",
            '--customize-hook=ln -sfn python3 "$1/usr/bin/python"',
        ]


def seat_contents(config: Config, distribution: str, kernel_image: str) -> tuple[tuple, tuple, tuple, tuple]:
    """What provisioning would put in a VM of this box for lab.yaml's settings, as (packages,
    optional packages, files, BCC's build settings): the book's packages, the kernel's headers, BCC
    (the distribution's package, or a source build made on this host unless lab.yaml wants it
    built in the VM), and sshd's keepalive."""
    distro = config.provision.distributions[distribution]
    mode, bcc = config.bcc_mode(distribution), config.provision.bcc
    wanted = list(dict.fromkeys([*distro["packages"], *(distro["bcc_package"] if mode == "package" else [])]))
    headers = kernel_image.replace("linux-image-", "linux-headers-")
    source = mode == "source" and bcc["build_on"] != "vm"
    return (
        tuple([name for name in wanted if name not in distro["optional"]] + [headers]),
        tuple(name for name in wanted if name in distro["optional"]),
        ((SSHD_KEEPALIVE_PATH, (SCRIPTS / "sshd-keepalive.conf").read_text()),),
        tuple(build_settings(config, distribution).items()) if source else (),
    )


def family(distribution: str) -> str:
    return distribution.split("-", 1)[0]


def kernel_package(distribution: str, architecture: str) -> str:
    try:
        return KERNELS[family(distribution), architecture]
    except KeyError:
        raise LabError(
            f"bpflab builds {architecture} boxes of Debian only, and lab.yaml asks for {distribution} "
            f"(vm.distribution) on {architecture} (vm.arch): Ubuntu's {architecture} packages are on "
            "ports.ubuntu.com, which local_box.archives does not name. Set vm.distribution to "
            "debian-12 or debian-13, or vm.arch to amd64."
        ) from None


def archive_release(mirror: str, suite: str, timeout: float = 10.0) -> str | None:
    """The archive's current release of `suite` (Debian: its point release; else the
    Release file's date), or None when the archive does not answer."""
    try:
        with urllib.request.urlopen(f"{mirror.rstrip('/')}/dists/{suite}/Release", timeout=timeout) as answer:
            head = answer.read(4096).decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None
    fields = dict(line.split(":", 1) for line in head.splitlines() if ":" in line and not line.startswith(" "))
    return (fields.get("Version") or fields.get("Date") or "").strip() or None


def suite_kernel(
    mirror: str, suite: str, component: str, package: str, architecture: str = "amd64", timeout: float = 30.0
) -> str | None:
    """The version of the kernel meta package `package` that the suite serves now (from its package
    index for `architecture`, read only as far as that package), or None when the archive does not answer."""
    wanted, decompressor, text = f"Package: {package}\n", lzma.LZMADecompressor(), ""
    index = f"{mirror.rstrip('/')}/dists/{suite}/{component}/binary-{architecture}/Packages.xz"
    try:
        with urllib.request.urlopen(index, timeout=timeout) as answer:
            while True:
                chunk = answer.read(1 << 16)
                if chunk:
                    text += decompressor.decompress(chunk).decode(errors="replace")
                    *paragraphs, text = text.split("\n\n")
                else:  # the end: the last paragraph too
                    paragraphs, text = [text], ""
                for paragraph in paragraphs:
                    if paragraph.startswith(wanted):
                        return next(
                            line.split(":", 1)[1].strip()
                            for line in paragraph.splitlines()
                            if line.startswith("Version:")
                        )
                if not chunk:
                    return None
    except (urllib.error.URLError, OSError, lzma.LZMAError, StopIteration):
        return None


def cached_recipes() -> list[Recipe]:
    """The recipes of the boxes in the cache, newest first (a recipe of another bpflab version is skipped)."""
    paths = [path for path in (cache_dir() / "boxes").glob("*/recipe.json") if (path.parent / "bpflab.box").exists()]
    recipes = []
    for path in sorted(paths, key=lambda path: -path.stat().st_mtime):
        try:
            recipes.append(Recipe.from_json(path.read_text()))
        except (TypeError, ValueError):
            continue
    return recipes


def current_recipe(config: Config) -> Recipe:
    """The recipe for the archive as it is now (its release and its kernel); offline, the newest
    cached box of the same recipe."""
    distribution, architecture = config.vm.distribution, arch.guest(config.vm.arch)
    archive = config.local_box.archives[distribution]
    package = kernel_package(distribution, architecture)
    release = archive_release(archive["mirror"], archive["suite"])
    kernel = release and suite_kernel(
        archive["mirror"], archive["suite"], archive["components"][0], package, architecture
    )
    if release and kernel:
        return Recipe.from_config(config, release, kernel)
    wanted = Recipe.from_config(config, "")
    for recipe in cached_recipes():
        if replace(recipe, archive_release="", kernel="") == wanted:
            warn(
                f"{archive['mirror']} does not answer; using the cached {config.vm.distribution} box made "
                f"from {archive['suite']} {recipe.archive_release}."
            )
            return recipe
    raise LabError(
        f"The archive {archive['mirror']} ({archive['suite']}) does not answer, and no "
        f"{config.vm.distribution} box is cached. Check the network or local_box.archives."
        f"{config.vm.distribution}.mirror in lab.yaml, then run `invoke box.build` again."
    )


def insecure_public_key() -> str:
    """Vagrant's well-known key, which Vagrant swaps for a fresh one on first up; '' where Vagrant
    is not installed (the libvirt engine hands each VM its own key at boot)."""
    candidates = glob.glob("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub") + glob.glob(
        "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub"
    )
    return Path(sorted(candidates)[-1]).read_text() if candidates else ""


def choose(config: Config, provider: str, host_arch: str) -> tuple[str, str]:
    """Which box new VMs start from: (local|catalog|packaged, why)."""
    setting, distribution = config.vm.box, config.vm.distribution
    if provider != "libvirt" or host_arch != "amd64":
        if setting == "catalog":
            return "catalog", "lab.yaml asks for the catalog box"
        raise LabError(
            f"vm.box is {setting!r}, but bpflab builds and packages boxes for libvirt on amd64 "
            f"only (this is {provider} on {host_arch}). Set vm.box to catalog (and "
            f"vm.distribution to {CATALOG_DISTRIBUTION}) in lab.yaml."
        )
    if setting == "catalog":
        if distribution != CATALOG_DISTRIBUTION:
            raise LabError(
                f"vm.box is catalog, but the catalog boxes in lab.yaml are {CATALOG_DISTRIBUTION} "
                f"and vm.distribution is {distribution}. Set vm.box to local (bpflab builds "
                f"the {distribution} box), or vm.distribution to {CATALOG_DISTRIBUTION}."
            )
        return "catalog", "lab.yaml asks for the catalog box"
    if setting == "local":
        architecture = arch.guest(config.vm.arch)
        kernel_package(distribution, architecture)  # refuses what bpflab cannot build
        tag = "" if architecture == host_arch else f" for {architecture}"
        return "local", f"built here from the {distribution} archive{tag}"
    return "packaged", f"the ready box {config.packaged_box}"


def ready_box_description(path: Path) -> dict:
    """What a ready box says it is (bpflab.json, which box.package puts first in the box file)."""
    try:
        with tarfile.open(path) as packed:
            member = packed.extractfile("bpflab.json")
            return json.loads(member.read())
    except (OSError, KeyError, AttributeError, tarfile.TarError, ValueError):
        raise LabError(
            f"{path} is not a box that `invoke box.package` made (it is missing, or has no "
            "bpflab.json). Check vm.box in lab.yaml, or package a provisioned VM again."
        ) from None


def ready_box_name(description: dict) -> str:
    return f"bpflab/{description['distribution']}-ready-{description['id']}"


def register_packaged(config: Config) -> str:
    """Make the ready box of vm.box known to Vagrant (once per box file)."""
    path, wanted = config.packaged_box, arch.guest(config.vm.arch)
    description = ready_box_description(path)
    if description.get("arch", "amd64") != wanted:
        raise LabError(
            f"{path} is a ready box of an {description['arch']} VM, but lab.yaml's vm.arch makes the VM "
            f"{wanted}. Set vm.arch to {description['arch']} in lab.yaml, or use a ready box packaged "
            f"from an {wanted} VM."
        )
    name = ready_box_name(description)
    if (name, "libvirt") not in vagrant.installed_boxes():
        with step(f"Registering the ready box {path.name} as {name}") as current:
            vagrant.add_box(name, path, current)
    return name


def write_guest_files(rootfs: Path, root_uuid: str, public_key: str, kernel_cmdline: str) -> None:
    for relative, content in GUEST_FILES.items():
        path = rootfs / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (rootfs / "etc/sudoers.d/vagrant").chmod(0o440)
    (rootfs / "usr/local/sbin/bpflab-ssh-key").chmod(0o755)
    # pam_motd runs /etc/update-motd.d at the start of every SSH session, a command's too: a
    # quarter of a second under emulation, for a banner. Provisioning's apt keeps this edit.
    pam = rootfs / "etc/pam.d/sshd"
    pam.write_text(
        "".join(
            f"# {line}" if "pam_motd.so" in line and not line.lstrip().startswith("#") else line
            for line in pam.read_text().splitlines(keepends=True)
        )
    )
    (rootfs / "etc/fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    for key in rootfs.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    grub = rootfs / "boot/grub/grub.cfg"
    grub.parent.mkdir(parents=True, exist_ok=True)
    grub.write_text(
        f"set timeout=0\nsearch --no-floppy --fs-uuid --set=root {root_uuid}\n"
        f"menuentry 'bpflab' {{\n"
        f"  linux /vmlinuz root=UUID={root_uuid} {kernel_cmdline}\n"
        f"  initrd /initrd.img\n}}\n"
    )
    ssh_dir = rootfs / "home/vagrant/.ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key)
    ssh_dir.chmod(0o700)
    (ssh_dir / "authorized_keys").chmod(0o600)


def install_bcc(rootfs: Path, recipe: Recipe, artifact: Artifact, log: Path) -> None:
    """A BCC build unpacked into the seat, recorded as provisioning records one built on the host."""
    run(["tar", "-C", str(rootfs), "-xzf", str(artifact.tarball)], log=log)
    listing = run(["tar", "-tzf", str(artifact.tarball)], log=log).stdout.splitlines()
    (rootfs / INSTALLED_FILES.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (rootfs / INSTALLED_FILES.lstrip("/")).write_text("".join(f"/{name.rstrip('/')}\n" for name in listing))
    stamp = stamp_text(dict(recipe.seat_bcc), "host", recipe.distribution, recipe.architecture)
    (rootfs / STAMP.lstrip("/")).write_text(stamp + "\n")
    run(["chroot", str(rootfs), "ldconfig"], log=log)


def write_seat(rootfs: Path, recipe: Recipe, provision_digest: str) -> None:
    """A ready seat's files, and what it is: the provisioning settings it was made for, when, and
    the optional packages its archive lacked (the seat has no package lists to ask)."""
    for relative, content in recipe.seat_files:
        (rootfs / relative).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / relative).write_text(content)
    unavailable = rootfs / SEAT_UNAVAILABLE
    about = {
        "box": recipe.box_name,
        "provision": provision_digest,
        "unavailable": unavailable.read_text().split(),
        "made": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    unavailable.unlink()
    (rootfs / SEAT_DESCRIPTION).write_text(json.dumps(about, sort_keys=True) + "\n")


def keep_boot_files(rootfs: Path, folder: Path) -> None:
    """The kernel and initrd that /vmlinuz and /initrd.img name, kept beside the box: the libvirt
    engine boots them directly."""
    folder.mkdir()
    for link in ("vmlinuz", "initrd.img"):
        shutil.copyfile(rootfs / os.readlink(rootfs / link).lstrip("/"), folder / link)
    (folder / "kernel-release").write_text(os.readlink(rootfs / "vmlinuz").rsplit("vmlinuz-", 1)[1] + "\n")


@dataclass(frozen=True)
class BootFiles:
    """What the libvirt engine makes a VM of a local box from: the box file (its disk image
    inside), the kernel and initrd it boots, and their command line."""

    digest: str
    box_file: Path
    kernel: Path
    initrd: Path
    kernel_release: str
    cmdline: str

    @property
    def disk_gb(self) -> int:
        return json.loads((self.box_file.parent / "recipe.json").read_text())["disk_gb"]


def boot_files(box_name: str) -> BootFiles:
    """The boot files of a local box, by its name (which ends with its recipe's digest)."""
    digest = box_name.rsplit("-", 1)[-1]
    folder = cache_dir() / "boxes" / digest
    boot = folder / BOOT_FOLDER
    if not (folder / "bpflab.box").exists() or not (boot / "vmlinuz").exists():
        raise LabError(
            f"The box {box_name} is not in the cache ({folder}) with its kernel, which the libvirt engine "
            "boots. Run `invoke box.build` (or `invoke lab.up`, which builds it), then `invoke lab.up` again."
        )
    recipe = json.loads((folder / "recipe.json").read_text())
    return BootFiles(
        digest,
        folder / "bpflab.box",
        boot / "vmlinuz",
        boot / "initrd.img",
        (boot / "kernel-release").read_text().strip(),
        recipe["kernel_cmdline"],
    )


def install_boot_loader(disk: Path, workdir: Path, rootfs: Path) -> None:
    """Put GRUB for BIOS on the disk without loop devices or mounts.

    boot.img goes in the MBR (before the partition table) and core.img in the
    gap before the first partition, where boot.img looks for it (sector 1);
    GRUB's modules go in the root file system's /boot/grub/i386-pc.
    """
    modules = Path("/usr/lib/grub/i386-pc")
    if not (modules / "boot.img").exists():
        raise LabError("GRUB's BIOS files (/usr/lib/grub/i386-pc) are missing. Run `invoke host.setup`.")
    shutil.copytree(
        modules,
        rootfs / "boot/grub/i386-pc",
        ignore=shutil.ignore_patterns("*.image", "*.exec", "grub-bios-setup", "*.module"),
    )
    core = workdir / "core.img"
    run(
        [
            "grub-mkimage",
            "--format=i386-pc",
            f"--output={core}",
            "--prefix=(hd0,msdos1)/boot/grub",
            "biosdisk",
            "part_msdos",
            "ext2",
        ]
    )
    if core.stat().st_size > (PARTITION_START - 1) * 512:
        raise LabError(f"GRUB's core.img ({core.stat().st_size} bytes) does not fit before the partition.")
    with disk.open("r+b") as image:
        image.write((modules / "boot.img").read_bytes()[:MBR_CODE_BYTES])
        image.seek(512)
        image.write(core.read_bytes())


def partition(disk: Path, layout: str) -> None:
    answer = subprocess.run(["sfdisk", "--quiet", str(disk)], capture_output=True, text=True, input=layout)
    if answer.returncode:
        raise LabError(f"sfdisk could not partition {disk}: {answer.stderr.strip()}")


def root_file_system(disk: Path, rootfs: Path, root_uuid: str, start: int, sectors: int, current, log: Path) -> None:
    """The ext4 root partition, made from `rootfs` in place in the disk image (no loop device)."""
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "bpflab-root",
            "-U",
            root_uuid,
            "-d",
            str(rootfs),
            "-E",
            f"offset={start * 512}",
            str(disk),
            f"{sectors // 2}k",
        ],
        current=current,
        log=log,
    )


def bios_disk(disk: Path, workdir: Path, rootfs: Path, root_uuid: str, current, log: Path) -> None:
    """MBR, GRUB for BIOS before the one partition, the root file system in it."""
    partition(disk, f"label: dos\nstart={PARTITION_START}, type=83, bootable\n")
    install_boot_loader(disk, workdir, rootfs)
    root_file_system(
        disk, rootfs, root_uuid, PARTITION_START, disk.stat().st_size // 512 - PARTITION_START, current, log
    )


def uefi_disk(disk: Path, workdir: Path, rootfs: Path, root_uuid: str, current, log: Path) -> None:
    """GPT with a FAT EFI system partition and the root partition. The firmware starts GRUB from the
    removable-media path (EFI/BOOT/BOOTAA64.EFI), so the VM needs no boot entry in its NVRAM; GRUB
    finds the root by its UUID and reads the same grub.cfg as on BIOS."""
    for tool in ("mkfs.vfat", "mcopy"):
        require_tool(tool)
    modules = rootfs / "usr/lib/grub/arm64-efi"
    if not (modules / "linux.mod").exists():
        raise LabError(
            f"GRUB's arm64 UEFI modules are missing from the root file system ({modules}): the "
            "package grub-efi-arm64-bin did not install. See the build log, then run `invoke box.build`."
        )
    efi_sectors = EFI_PARTITION_MIB * 2048
    root_start = PARTITION_START + efi_sectors
    root_sectors = disk.stat().st_size // 512 - root_start - PARTITION_START  # the backup GPT lives at the end
    partition(
        disk,
        f"label: gpt\nstart={PARTITION_START}, size={efi_sectors}, type=U\n"
        f"start={root_start}, size={root_sectors}, type=L\n",
    )
    early = workdir / "early.cfg"
    early.write_text(
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        "set prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n"
    )
    grub = workdir / "BOOTAA64.EFI"
    run(
        [
            "grub-mkimage",
            "--format=arm64-efi",
            f"--directory={modules}",
            f"--output={grub}",
            f"--config={early}",
            "--prefix=/boot/grub",
            "part_gpt",
            "ext2",
            "fat",
            "search",
            "search_fs_uuid",
            "configfile",
            "normal",
            "linux",
            "gzio",
            "echo",
        ],
        log=log,
    )
    esp = workdir / "esp.img"
    run(["mkfs.vfat", "-n", "EFI", "-C", str(esp), str(EFI_PARTITION_MIB * 1024)], log=log)
    run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], log=log)
    run(["mcopy", "-i", str(esp), str(grub), "::/EFI/BOOT/BOOTAA64.EFI"], log=log)
    with disk.open("r+b") as image:
        image.seek(PARTITION_START * 512)
        image.write(esp.read_bytes())
    root_file_system(disk, rootfs, root_uuid, root_start, root_sectors, current, log)


def build_file(
    recipe: Recipe, workdir: Path, log: Path, provision_digest: str = "", artifact: Artifact | None = None
) -> None:
    """Build the .box file in `workdir` (mmdebstrap needs root; the disk steps do not); a ready
    seat records `provision_digest`, lab.yaml's provisioning settings it was made for, and gets
    `artifact`, the BCC build its recipe asks for."""
    for tool in ("mmdebstrap", "mkfs.ext4", "sfdisk", "grub-mkimage", "qemu-img"):
        require_tool(tool)
    emulated = recipe.architecture != arch.debian()
    if emulated:
        foreign_binaries(recipe.architecture)
    public_key = insecure_public_key()
    rootfs, disk = workdir / "rootfs", workdir / "disk.raw"
    root_uuid = str(uuid.uuid4())
    if not Path(recipe.keyring).exists():
        raise LabError(
            f"The {recipe.distribution} archive's keyring {recipe.keyring} is not on this host. "
            "Run `invoke host.setup` (it installs Debian's and Ubuntu's keyrings), or fix "
            f"local_box.archives.{recipe.distribution}.keyring in lab.yaml."
        )
    how_long = "its programs emulated: about 7 minutes" if emulated else "a few minutes"
    what = (
        "a ready seat: the labs' packages, BCC, bpftrace and the kernel's headers"
        if recipe.ready
        else "the base system; provisioning installs the rest in the VM"
    )
    with step(
        f"{recipe.distribution} {recipe.architecture} ({recipe.suite}) root file system, {what} "
        f"(mmdebstrap, {how_long})"
    ) as current:
        run(
            recipe.bootstrap_command(rootfs, tuple(artifact.runtime_packages) if artifact else ()),
            current=current,
            log=log,
            fix=f"Check that the archive in lab.yaml (local_box.archives.{recipe.distribution}) answers, and that "
            f"it has the packages of provision.distributions.{recipe.distribution}.",
        )
        write_guest_files(rootfs, root_uuid, public_key, recipe.kernel_cmdline)
        if recipe.ready:
            write_seat(rootfs, recipe, provision_digest)
        if artifact:
            install_bcc(rootfs, recipe, artifact, log)
        run((["chroot", str(rootfs), "chown", "-R", "vagrant:vagrant", "/home/vagrant"]), log=log)
        keep_boot_files(rootfs, workdir / BOOT_FOLDER)
        if not public_key:
            (workdir / WITHOUT_VAGRANT_KEY).write_text("Vagrant was not installed: no key for Vagrant's first login\n")
    with step(f"Bootable {recipe.disk_gb} GB disk (ext4 + GRUB for {'UEFI' if recipe.uefi else 'BIOS'})") as current:
        run(["truncate", "--size", str(recipe.disk_gb * 1024**3), str(disk)], log=log)
        (uefi_disk if recipe.uefi else bios_disk)(disk, workdir, rootfs, root_uuid, current, log)
    with step("Packing the box (qcow2 + metadata)") as current:
        run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(workdir / "box.img")], current=current, log=log)
        (workdir / "metadata.json").write_text(
            json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": recipe.disk_gb})
        )
        (workdir / "Vagrantfile").write_text(BOX_VAGRANTFILE)
        with tarfile.open(workdir / "bpflab.box", "w") as box:
            for name in ("metadata.json", "Vagrantfile", "box.img"):
                box.add(workdir / name, arcname=name)


def seat_bcc(config: Config, recipe: Recipe, log: Path) -> Artifact | None:
    """The BCC build a ready seat's recipe asks for: exported already, or built now on this host."""
    if not recipe.seat_bcc:
        return None
    built = dict(recipe.seat_bcc)
    unable = buildroot.unable_reason(recipe.architecture)
    if unable:
        raise LabError(
            f"The ready seat needs BCC {built['version']} built from source on this host "
            f"(provision.bcc.install: source), but {unable}. Set provision.bcc.build_on to vm (provisioning "
            "then builds it in the VM), or local_box.ready to false, in lab.yaml."
        )
    return Artifact.built_with(config.bcc_artifacts, built, recipe.distribution, recipe.architecture) or build_on_host(
        config, recipe.distribution, recipe.architecture, built, log
    )


def build(config: Config, for_vagrant: bool = True) -> Recipe:
    """Make sure the local box exists in the cache (and, `for_vagrant`, in Vagrant); build only when missing."""
    if os.geteuid() != 0:
        raise LabError(
            "Building the box needs root (mmdebstrap and chroot): run `sudo invoke box.build`, then `invoke lab.up`."
        )
    if arch.debian() != "amd64":
        raise LabError(
            "Boxes are built for amd64 hosts only. On this host use a catalog box: "
            f"set vm.box to catalog and vm.distribution to {CATALOG_DISTRIBUTION} in lab.yaml."
        )
    recipe = current_recipe(config)
    if recipe.box_file.exists():
        done(f"Box {recipe.box_name} is cached: {recipe.box_file}")
    else:
        recipe.box_file.parent.mkdir(parents=True, exist_ok=True)
        log = recipe.box_file.parent / "build.log"
        log.unlink(missing_ok=True)
        say(f"Building the local box {recipe.box_name} (log: {log})")
        artifact = seat_bcc(config, recipe, log)
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=recipe.box_file.parent))
        try:
            build_file(recipe, workdir, log, config.provision_digest, artifact)
            (recipe.box_file.parent / "recipe.json").write_text(recipe.to_json())
            for name in (BOOT_FOLDER, WITHOUT_VAGRANT_KEY):
                if (workdir / name).exists():
                    (workdir / name).replace(recipe.box_file.parent / name)
            (workdir / "bpflab.box").rename(recipe.box_file)
        finally:
            run((["rm", "-rf", "--one-file-system", str(workdir)]), check=False)
    if not for_vagrant:
        return recipe
    if (recipe.box_file.parent / WITHOUT_VAGRANT_KEY).exists():
        raise LabError(
            f"The box {recipe.box_name} was built while Vagrant was not installed, so Vagrant cannot log in to "
            f"its VMs. Remove {recipe.box_file.parent} and run `invoke box.build` again, or set vm.engine to "
            "libvirt in lab.yaml."
        )
    if (recipe.box_name, "libvirt") in vagrant.installed_boxes():
        done(f"Box {recipe.box_name} is registered with Vagrant")
    else:
        with step(f"Registering {recipe.box_name} with Vagrant") as current:
            vagrant.add_box(recipe.box_name, recipe.box_file, current)
    return recipe
