"""The libvirt engine: lab VMs as libvirt domains that bpflab defines and runs itself, no Vagrant.

A VM is a domain named as the Vagrantfile names it, on the same network, with its own qcow2
overlay on its box's image (one volume per box in libvirt's pool). It boots the box's kernel and
initrd directly: no firmware, no GRUB menu. Its SSH key is made here and handed over on the
kernel command line, where the box's sshd unit authorizes it before sshd starts: no cloud-init,
and no shared key ever opens the VM. `vm.Engine` is the interface this implements.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from . import box, libvirt
from .commands import run
from .console import Step
from .errors import LabError
from .host import cache_dir
from .vagrant import Endpoint, Machine, Status, parse_ssh_config

NETWORK = libvirt.MANAGEMENT_NETWORK
BOOT_TIMEOUT = 600  # seconds from start to an SSH login: minutes under software emulation at worst
SHUTDOWN_TIMEOUT = 120
KEY = "id_ed25519"  # in the machine's state folder
LEASE = re.compile(r"\bipv4\s+(\d+\.\d+\.\d+\.\d+)/")
STATES = {"shut off": "shutoff", "in shutdown": "shutting_down"}


@dataclass(frozen=True)
class DomainSpec:
    """What a domain is made of; `domain_xml` writes it as libvirt reads it."""

    name: str
    architecture: str  # amd64 | arm64
    acceleration: str  # kvm | tcg
    cpus: int
    memory_mib: int
    disk: str
    kernel: str
    initrd: str
    cmdline: str
    console_log: str
    network: str = NETWORK


def domain_xml(spec: DomainSpec) -> str:
    """The domain: direct kernel boot on a PC (amd64) or qemu's "virt" board (arm64, which reads
    qemu's device tree), a virtio disk, network and entropy source, the serial console to a file.
    Under TCG the emulated CPU is the cheapest to emulate that the guest kernel runs on."""
    arm = spec.architecture == "arm64"
    model = "cortex-a72" if arm else "qemu64"
    cpu = (
        "<cpu mode='host-passthrough'/>"
        if spec.acceleration == "kvm"
        else f"<cpu mode='custom' match='exact'><model fallback='allow'>{model}</model></cpu>"
    )
    machine = "arch='aarch64' machine='virt'" if arm else "arch='x86_64' machine='pc'"
    features = "" if arm else "<features><acpi/><apic/></features>"
    return f"""<domain type='{"kvm" if spec.acceleration == "kvm" else "qemu"}'>
  <name>{escape(spec.name)}</name>
  <metadata><bpflab xmlns='https://bpflab.dev/engine'>libvirt</bpflab></metadata>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.cpus}</vcpu>
  <os>
    <type {machine}>hvm</type>
    <kernel>{escape(spec.kernel)}</kernel>
    <initrd>{escape(spec.initrd)}</initrd>
    <cmdline>{escape(spec.cmdline)}</cmdline>
  </os>
  {features}
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file={quoteattr(spec.disk)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <source network={quoteattr(spec.network)}/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path={quoteattr(spec.console_log)}/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path={quoteattr(spec.console_log)}/>
      <target type='serial' port='0'/>
    </console>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def kernel_cmdline(box_cmdline: str, public_key: str) -> str:
    """The box's own kernel options, its root by label, and the VM's SSH key (TYPE:BASE64)."""
    kind, material = public_key.split()[:2]
    return f"root=LABEL=bpflab-root {box_cmdline} bpflab.ssh_key={kind}:{material}"


def ssh_config(machine: str, address: str, identity: Path) -> str:
    """The VM's endpoint as `ssh -F` and `vagrant ssh-config` write it. Its host key is new with each
    VM, so it is not recorded (as Vagrant does)."""
    return (
        f"Host {machine}\n  HostName {address}\n  User vagrant\n  Port 22\n"
        "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  PasswordAuthentication no\n"
        f"  IdentityFile {identity}\n  IdentitiesOnly yes\n  LogLevel FATAL\n"
    )


def box_volume(digest: str) -> str:
    """The pool's volume of a box's disk image, which the VMs of that box write over."""
    return f"bpflab-box-{digest}.qcow2"


def lease_address(domain: str) -> str | None:
    """The address the network's DHCP server leased to the domain, once it has one."""
    found = LEASE.findall(libvirt.query("domifaddr", domain, "--source", "lease").stdout)
    return found[-1] if found else None


def state_of(domain: str) -> str:
    answer = libvirt.query("domstate", domain)
    if answer.returncode:
        return "not_created"
    state = answer.stdout.strip()
    return STATES.get(state, state.replace(" ", "_"))


class Libvirt:
    """bpflab's own domains: made from the local box, started, stopped and removed with virsh."""

    name = "libvirt"

    def statuses(self, vms: list[Machine]) -> dict[str, Status]:
        self.require_libvirt()
        return {vm.machine: Status(state_of(vm.domain), "libvirt") for vm in vms}

    @staticmethod
    def require_libvirt() -> None:
        if not libvirt.answers():
            raise LabError(
                f"libvirt does not answer on {libvirt.URI} (libvirtd not running, or virsh missing). "
                "Run `invoke host.setup`, then this command again."
            )

    def up(self, vms: list[Machine], provider: str, current: Step) -> None:
        """Make the domains that do not exist, start every one, then wait for each one's SSH login. The
        network goes first: vagrant-libvirt removes it with the last of its own VMs."""
        libvirt.ensure_management_network()
        for vm in vms:
            if state_of(vm.domain) == "not_created":
                self.create(vm, current)
            if state_of(vm.domain) != "running":
                vm.console_log.parent.mkdir(parents=True, exist_ok=True)
                run(libvirt.virsh("start", vm.domain), current=current)
        for vm in vms:
            self.wait_for_login(vm, current)

    def create(self, vm: Machine, current: Step) -> None:
        """The domain of a new VM: an overlay on its box's image, its own copy of the kernel and initrd
        (provisioning may move it to another kernel), its key."""
        boot = box.boot_files(vm.remembered("box") or "")
        base = box_volume(boot.digest)
        locks = cache_dir() / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{base}.lock", "w") as lock:  # two checkouts may load it at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not libvirt.volume_path(base):
                current.update(f"loading the box's disk image into libvirt's pool as {base}")
                with tempfile.TemporaryDirectory(dir=boot.box_file.parent) as unpacked:
                    run(["tar", "-C", unpacked, "-xf", str(boot.box_file), "box.img"], current=current)
                    libvirt.upload_volume(base, Path(unpacked) / "box.img", "qcow2", current)
        disk = libvirt.overlay_volume(f"{vm.domain}.img", base, boot.disk_gb)
        kernel = libvirt.upload_volume(f"{vm.domain}-vmlinuz", boot.kernel)
        initrd = libvirt.upload_volume(f"{vm.domain}-initrd", boot.initrd)
        vm.state_dir.mkdir(parents=True, exist_ok=True)
        vm.state_dir.joinpath("kernel-release").write_text(boot.kernel_release + "\n")
        spec = DomainSpec(
            vm.domain,
            vm.remembered("arch") or "amd64",
            vm.remembered("acceleration") or "tcg",
            vm.cpus,
            vm.config.vm.memory,
            disk,
            kernel,
            initrd,
            kernel_cmdline(boot.cmdline, self.public_key(vm)),
            str(vm.console_log.resolve()),
        )
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as definition:
            definition.write(domain_xml(spec))
            definition.flush()
            run(libvirt.virsh("define", definition.name), current=current)

    @staticmethod
    def public_key(vm: Machine) -> str:
        """The VM's own key pair, made once in its state folder: the public half."""
        private = vm.state_dir / KEY
        if not private.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bpflab {vm.domain}", "-f", str(private)])
        return private.with_suffix(".pub").read_text()

    def wait_for_login(self, vm: Machine, current: Step | None) -> None:
        """Until the VM has an address and sshd takes its key; a VM that stops, or never answers, is an error."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            state = state_of(vm.domain)
            if state != "running":
                raise LabError(f"{vm.title[0].upper()}{vm.title[1:]} stopped while it booted (libvirt: {state}).")
            address = lease_address(vm.domain)
            if current:
                current.update(f"{vm.machine}: " + (f"waiting for sshd at {address}" if address else "booting"))
            if address and self.logs_in(vm, address):
                return
            time.sleep(1)
        raise LabError(
            f"{vm.title[0].upper()}{vm.title[1:]} did not answer SSH within {BOOT_TIMEOUT} s of its start. "
            "`invoke lab.destroy` and `invoke lab.up` make it again."
        )

    def logs_in(self, vm: Machine, address: str) -> bool:
        config = self.write_ssh_config(vm, address)
        answer = subprocess.run(
            ["ssh", "-F", str(config), "-o", "ConnectTimeout=5", "-o", "BatchMode=yes", vm.machine, "true"],
            capture_output=True,
            timeout=60,
        )
        return answer.returncode == 0

    @staticmethod
    def write_ssh_config(vm: Machine, address: str) -> Path:
        """The engine's own ssh_config (the VM's endpoint, as bpflab caches it, is not the engine's to keep)."""
        path = vm.state_dir / "engine-ssh-config"
        path.write_text(ssh_config(vm.machine, address, vm.state_dir / KEY))
        return path

    def halt(self, vm: Machine, current: Step) -> None:
        self.keep_guest_kernel(vm, current)
        self.shut_down(vm, current)

    def shut_down(self, vm: Machine, current: Step | None) -> None:
        """A clean shutdown (ACPI, the guest's own), forced off when the guest does not finish in time."""
        run(libvirt.virsh("shutdown", vm.domain), current=current, check=False)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while state_of(vm.domain) not in ("shutoff", "not_created"):
            if time.monotonic() > deadline:
                run(libvirt.virsh("destroy", vm.domain), current=current)
                break
            time.sleep(0.5)

    def reload(self, vm: Machine, current: Step | None) -> None:
        """Stop and start again, booting the kernel the guest now names (provisioning may have moved it)."""
        self.keep_guest_kernel(vm, current)
        self.shut_down(vm, current)
        libvirt.ensure_management_network()
        run(libvirt.virsh("start", vm.domain), current=current)
        self.wait_for_login(vm, current)

    def keep_guest_kernel(self, vm: Machine, current: Step | None) -> None:
        """When the guest's /vmlinuz names another kernel than the one the domain boots, that kernel
        and its initrd become the domain's (the guest installed it: a GRUB would boot it next)."""
        address = lease_address(vm.domain)
        if state_of(vm.domain) != "running" or not address:
            return
        ssh = ["ssh", "-F", str(self.write_ssh_config(vm, address)), "-o", "ConnectTimeout=10", vm.machine]
        named = subprocess.run(ssh + ["readlink -f /vmlinuz"], capture_output=True, text=True, timeout=60)
        release = named.stdout.strip().rsplit("vmlinuz-", 1)[-1]
        if named.returncode or not release or release == (vm.remembered("kernel-release") or ""):
            return
        if current:
            current.update(f"{vm.machine}: booting kernel {release} from now on")
        with tempfile.TemporaryDirectory() as folder:
            for part, path in (("vmlinuz", "/vmlinuz"), ("initrd", "/initrd.img")):
                with open(Path(folder) / part, "wb") as copy:
                    subprocess.run(ssh + [f"sudo cat {path}"], stdout=copy, check=True, timeout=300)
                libvirt.upload_volume(f"{vm.domain}-{part}", Path(folder) / part)
        vm.state_dir.joinpath("kernel-release").write_text(release + "\n")

    def destroy(self, vm: Machine, current: Step) -> None:
        libvirt.remove_domain(vm.domain, stale=False)
        for name in (KEY, f"{KEY}.pub", "engine-ssh-config"):
            (vm.state_dir / name).unlink(missing_ok=True)

    def forget(self, vm: Machine) -> None:
        """Nothing beyond the domain: what this engine knows of a VM is in its state folder."""

    def endpoint(self, vm: Machine) -> tuple[Endpoint, str]:
        address = lease_address(vm.domain)
        if not address:
            raise LabError(
                f"{vm.title[0].upper()}{vm.title[1:]} runs but has no address from libvirt's network "
                f"{NETWORK} yet. Wait a few seconds, or run `invoke lab.up`, which waits for it."
            )
        text = ssh_config(vm.machine, address, vm.state_dir / KEY)
        return parse_ssh_config(text, vm.machine), text

    def interactive_ssh(self, vm: Machine) -> None:
        endpoint, _ = self.endpoint(vm)
        os.execvp("ssh", ["ssh", "-F", str(self.write_ssh_config(vm, endpoint.host)), vm.machine])
