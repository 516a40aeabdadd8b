"""The lab VMs through Vagrant: provider and acceleration choice, life cycle, state.

lab.yaml's `vm.count` asks for one VM (a learner's) or several (a lab server for a
class); tasks pick them by machine name or all at once, with Vagrant's defaults:
the life cycle covers every VM, everything else the primary one. Vagrant is the
only thing that touches the VMs here; virsh is used just to find and clear
libvirt leftovers that Vagrant no longer knows about.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import box
from .config import Config
from .console import run, say, step, warn
from .errors import LabError
from .host import LIBVIRT_URI, QUIET_VAGRANT, libvirt_answers

SETUP_HINT = "Run `invoke host.setup` (Debian/Ubuntu) or install Vagrant and a provider as the README says."


def host_arch() -> str:
    return "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"


def hardware_virtualization(cpuinfo: str, machine: str, kvm_usable: bool) -> bool:
    """KVM works only with real CPU support; a /dev/kvm node alone proves nothing."""
    if not kvm_usable:
        return False
    if machine in ("aarch64", "arm64"):
        return True
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"vmx", "svm"})


def choose_acceleration(setting: str, hardware: bool) -> str:
    """kvm or tcg for libvirt, from lab.yaml's `vm.acceleration` and what the host offers."""
    if setting == "kvm" and not hardware:
        raise LabError("lab.yaml asks for vm.acceleration: kvm, but this host has no usable hardware "
                       "virtualization (no vmx/svm CPU flag, or /dev/kvm is not accessible). "
                       "Set vm.acceleration to auto or tcg.")
    if setting == "auto":
        return "kvm" if hardware else "tcg"
    return setting


def choose_provider(setting: str, have_libvirt: bool, have_virtualbox: bool) -> str:
    if setting == "libvirt" and not have_libvirt:
        raise LabError(f"lab.yaml asks for the libvirt provider, but vagrant-libvirt or libvirt is missing. {SETUP_HINT}")
    if setting == "virtualbox" and not have_virtualbox:
        raise LabError("lab.yaml asks for the virtualbox provider, but VirtualBox (VBoxManage) is not "
                       "installed. Install VirtualBox, or set vm.provider to libvirt.")
    if setting != "auto":
        return setting
    if have_libvirt:
        return "libvirt"
    if have_virtualbox:
        return "virtualbox"
    raise LabError(f"No Vagrant provider is installed (neither vagrant-libvirt nor VirtualBox). {SETUP_HINT}")


def parse_status(machine_readable: str, machine: str) -> dict[str, str]:
    """`vagrant status --machine-readable` -> {'state': ..., 'provider-name': ...} of one machine."""
    found = {}
    for line in machine_readable.splitlines():
        fields = line.split(",", 3)
        if len(fields) == 4 and fields[1] == machine:
            found[fields[2]] = fields[3]
    return found


def choose_machines(known: list[str], choice: str, everything_by_default: bool) -> list[str]:
    """The machines that `--vm` names: a name, names with commas, or `all`; '' is the default."""
    if choice == "all" or (not choice and everything_by_default):
        return list(known)
    if not choice:
        return known[:1]
    names = [name.strip() for name in choice.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise LabError(f"lab.yaml defines the lab VMs {', '.join(known)} (vm.count: {len(known)}); there is no "
                       f"VM named {', '.join(unknown) or repr(choice)}. Give --vm one of those names, names "
                       "separated by commas, or all.")
    return list(dict.fromkeys(names))


def beyond_count(instance: str, known: list[str], domains: list[str]) -> list[str]:
    """Machines of this checkout that libvirt still has but lab.yaml no longer defines."""
    pattern = re.compile(re.escape(instance) + r"-(lab\d+)")
    return [found.group(1) for domain in domains
            if (found := pattern.fullmatch(domain)) and found.group(1) not in known]


def leftovers(config: Config) -> list[LabVM]:
    """VMs left in libvirt after vm.count was lowered: Vagrant no longer sees them."""
    if shutil.which("virsh") is None or not libvirt_answers():
        return []
    domains = subprocess.run(["virsh", "-c", LIBVIRT_URI, "list", "--all", "--name"],
                             capture_output=True, text=True).stdout.split()
    return [LabVM(config, machine) for machine in beyond_count(LabVM(config).instance, config.machines, domains)]


def warn_of_leftovers(config: Config) -> None:
    for vm in leftovers(config):
        warn(f"libvirt still has {vm.domain}, a VM beyond vm.count: {config.vm.count} in lab.yaml. "
             "`invoke lab.destroy` removes it.")


def remove_leftovers(config: Config) -> None:
    for vm in leftovers(config):
        vm.clear_stale_libvirt()
        shutil.rmtree(vm.root / ".vagrant" / "machines" / vm.machine, ignore_errors=True)
        shutil.rmtree(vm.state_dir, ignore_errors=True)


def select(config: Config, choice: str = "", everything_by_default: bool = False) -> list[LabVM]:
    return [LabVM(config, machine) for machine in choose_machines(config.machines, choice, everything_by_default)]


def select_one(config: Config, choice: str, task: str, for_all: str) -> LabVM:
    """The one VM a single-VM task works on; several are refused with the task that takes them."""
    chosen = select(config, choice)
    if len(chosen) > 1:
        raise LabError(f"`invoke {task}` works on one VM at a time; give --vm one name. {for_all}")
    return chosen[0]


@dataclass
class Status:
    state: str
    provider: str

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def created(self) -> bool:
        return self.state != "not_created"


class LabVM:
    """One lab VM of one checkout (a machine of the Vagrantfile), as Vagrant sees it."""

    def __init__(self, config: Config, machine: str | None = None):
        self.config = config
        self.machine = machine or config.machines[0]
        self.root = config.root
        self.state_dir = self.root / ".vagrant" / "bpflab" / self.machine
        self.logs = self.root / "logs" / self.machine
        if self.machine == "lab":
            self.adopt_single_vm_state()

    def adopt_single_vm_state(self) -> None:
        """Move what bpflab remembered of the VM before there could be several into lab's folder:
        without its box name, Vagrant would look for the catalog box to start that VM."""
        old = self.root / ".vagrant" / "bpflab"
        for key in ("box", "acceleration", "ssh-config"):
            if (old / key).is_file():
                self.state_dir.mkdir(parents=True, exist_ok=True)
                (old / key).replace(self.state_dir / key)

    @property
    def title(self) -> str:
        """How messages name it: plain "the lab VM" when it is the only one."""
        return "the lab VM" if self.config.vm.count == 1 else f"the lab VM {self.machine}"

    @property
    def subject(self) -> str:
        """The title at the start of a sentence."""
        return self.title[0].upper() + self.title[1:]

    @property
    def instance(self) -> str:
        """Same name as the Vagrantfile's: lab.yaml's vm.name and a hash of this folder."""
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:8]
        return f"{self.config.vm.name}-{digest}"

    @property
    def domain(self) -> str:
        return f"{self.instance}-{self.machine}"

    def provider(self) -> str:
        plugins = self.vagrant("plugin", "list", check=False).stdout
        have_libvirt = "vagrant-libvirt" in plugins and shutil.which("virsh") is not None
        return choose_provider(self.config.vm.provider, have_libvirt, shutil.which("VBoxManage") is not None)

    def acceleration(self) -> str:
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
        return choose_acceleration(self.config.vm.acceleration,
                                   hardware_virtualization(cpuinfo, platform.machine(), usable))

    def remembered(self, key: str) -> str | None:
        path = self.state_dir / key
        return path.read_text().strip() if path.exists() else None

    def remember(self, key: str, value: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / key).write_text(value + "\n")

    def environment(self) -> dict:
        env = {"VAGRANT_CWD": str(self.root), **QUIET_VAGRANT}
        chosen_box = self.remembered("box")
        if chosen_box:
            env["BPFLAB_BOX"] = chosen_box
        if self.remembered("acceleration"):
            env["BPFLAB_LIBVIRT_DRIVER"] = "kvm" if self.remembered("acceleration") == "kvm" else "qemu"
        return env

    def vagrant(self, *args: str, current=None, check=True, fix="") -> subprocess.CompletedProcess:
        if shutil.which("vagrant") is None:
            raise LabError(f"Vagrant is not installed on this host. {SETUP_HINT}")
        return run(["vagrant", *args], current=current, env=self.environment(), cwd=self.root,
                   check=check, log=self.state_dir / "vagrant.log", what=f"vagrant {args[0]}", fix=fix)

    def status(self) -> Status:
        return statuses([self])[self.machine]

    def read_status(self, output: str, log: Path) -> Status:
        """This VM's state from the output of `vagrant status --machine-readable`."""
        fields = parse_status(output, self.machine)
        if "state" not in fields:
            reason = output.strip().splitlines()[-3:] if output.strip() else ["no output"]
            raise LabError(f"Vagrant could not tell the state of {self.title}: " + " / ".join(reason) +
                           f"\nFull log: {log}. {SETUP_HINT}")
        return Status(fields["state"], fields.get("provider-name", "?"))

    def require_running(self) -> Status:
        status = self.status()
        if not status.created:
            raise LabError(f"{self.subject} does not exist yet. Run `invoke lab.up` "
                           "(or `invoke lab.setup`) first.")
        if not status.running:
            raise LabError(f"{self.subject} is {status.state}, not running. Run `invoke lab.up` to start it.")
        return status

    def choose_box(self, provider: str) -> str:
        arch = host_arch()
        catalog_box = self.config.vm.boxes[provider][arch]
        kind, why = box.choose(self.config.vm.box, provider, arch, catalog_box,
                               box.installed_boxes(), box.catalog_reachable)
        if kind == "catalog":
            say(f"Box: {catalog_box} ({why})")
            return catalog_box
        recipe = box.build(self.config)
        say(f"Box: {recipe.box_name} ({why})")
        return recipe.box_name

    def clear_stale_libvirt(self) -> None:
        """Remove a domain or disk named for this VM that Vagrant has forgotten.

        The name contains a hash of this folder, so nothing else can own it; left
        in place, it makes `vagrant up` fail with "domain ... is already taken".
        """
        if not libvirt_answers():
            raise LabError("libvirt does not answer on qemu:///system (libvirtd not running?). "
                           "Run `invoke host.setup`, then `invoke lab.up` again.")
        virsh = ["virsh", "-c", LIBVIRT_URI]
        domain = subprocess.run([*virsh, "domstate", self.domain], capture_output=True, text=True)
        if domain.returncode == 0:
            say(f"Removing the stale libvirt domain {self.domain} (left from an earlier run; Vagrant no longer knows it)")
            if domain.stdout.strip() != "shut off":
                run([*virsh, "destroy", self.domain], check=False)
            run([*virsh, "undefine", self.domain, "--remove-all-storage"])
        volume = f"{self.domain}.img"
        if subprocess.run([*virsh, "vol-info", "--pool", "default", volume], capture_output=True).returncode == 0:
            say(f"Removing the stale libvirt volume {volume} (left from an earlier run)")
            run([*virsh, "vol-delete", "--pool", "default", volume])

    def prepare(self, status: Status, boxes: dict[str, str]) -> str | None:
        """Before `vagrant up`: the provider to start it with, or None when it runs already.
        A VM to be created gets its acceleration, a clean libvirt slot and its box first
        (`boxes`: the box per provider, chosen once for all the VMs being created)."""
        self.forget_endpoint()
        if status.running:
            say(f"[green]✓[/green] {self.subject} is already running ({status.provider})")
            return None
        provider = self.provider() if not status.created else status.provider
        if not status.created:
            if provider == "libvirt":
                self.remember("acceleration", self.acceleration())
                self.clear_stale_libvirt()
            if provider not in boxes:
                boxes[provider] = self.choose_box(provider)
            self.remember("box", boxes[provider])
        return provider

    def halt(self) -> None:
        self.forget_endpoint()
        if not self.status().running:
            say(f"{self.subject} is not running; nothing to halt.")
            return
        with step(f"Halting {self.title}", f"{self.subject} is halted") as current:
            self.vagrant("halt", self.machine, current=current)

    def destroy(self) -> None:
        self.forget_endpoint()
        if self.status().created:
            with step(f"Destroying {self.title}", f"{self.subject} is destroyed") as current:
                self.vagrant("destroy", "--force", self.machine, current=current)
        else:
            say(f"{self.subject} does not exist; nothing to destroy.")
        for key in ("box", "acceleration"):
            (self.state_dir / key).unlink(missing_ok=True)

    def ssh_config(self, refresh: bool = False) -> str:
        """Vagrant's ssh_config text for the VM, cached: Vagrant takes seconds to start.

        The cache lives until the VM goes up, halts or is destroyed, or a caller
        finds the endpoint dead and asks for a refresh.
        """
        path = self.state_dir / "ssh-config"
        if refresh or not path.exists():
            self.require_running()
            text = self.vagrant("ssh-config", self.machine, fix="`invoke lab.status` tells the VM's state.").stdout
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return path.read_text()

    def forget_endpoint(self) -> None:
        (self.state_dir / "ssh-config").unlink(missing_ok=True)

    def interactive_ssh(self) -> None:
        """Replace this process with `vagrant ssh`, so the shell gets the real terminal."""
        self.require_running()
        os.chdir(self.root)
        os.execvpe("vagrant", ["vagrant", "ssh", self.machine], {**os.environ, **self.environment()})


def statuses(vms: list[LabVM]) -> dict[str, Status]:
    """The VMs' states from one `vagrant status`: each Vagrant start costs seconds."""
    result = vms[0].vagrant("status", *(vm.machine for vm in vms), "--machine-readable", check=False)
    return {vm.machine: vm.read_status(result.stdout, vms[0].state_dir / "vagrant.log") for vm in vms}


def bring_up(vms: list[LabVM]) -> None:
    """Create or start these VMs with one `vagrant up` per provider: vagrant-libvirt
    then brings several up in parallel."""
    waiting: dict[str, list[LabVM]] = {}
    boxes: dict[str, str] = {}
    current = statuses(vms)
    for vm in vms:
        provider = vm.prepare(current[vm.machine], boxes)
        if provider:
            waiting.setdefault(provider, []).append(vm)
    for provider, group in waiting.items():
        names = ", ".join(vm.machine for vm in group)
        what = group[0].title if len(group) == 1 else f"the lab VMs {names}"
        accel = group[0].remembered("acceleration") or "-"
        with step(f"Starting {what} ({provider}, {accel}; a few minutes under software emulation)",
                  f"{what[0].upper()}{what[1:]} {'is' if len(group) == 1 else 'are'} up") as current:
            group[0].vagrant("up", *(vm.machine for vm in group), f"--provider={provider}", current=current,
                             fix=f"See the full log in {group[0].state_dir / 'vagrant.log'}; `invoke lab.destroy` "
                                 "and `invoke lab.up` start again from scratch.")
