"""The lab VMs of this checkout: which ones, how they start, and their life cycle.

lab.yaml's `vm.count` asks for one VM (a learner's) or several (a lab server for a
class); tasks pick them by machine name or all at once, with Vagrant's defaults:
the life cycle covers every VM, everything else the primary one. An engine (`Engine`)
runs the life cycle; bpflab's side of it (the box, the acceleration, the cached
endpoint, a stale libvirt domain, a VM left beyond vm.count) is here, the same for any.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Protocol

from . import arch, box, libvirt, vagrant
from .config import Config
from .console import Step, done, say, step, warn
from .domain import Libvirt
from .errors import LabError
from .vagrant import SETUP_HINT, Endpoint, Machine, Status, Vagrant

# What a guest kernel prints when it is in trouble: an oops or panic, a lockup or stall, a task
# hung, memory gone.
KERNEL_TROUBLE = re.compile(
    r"Oops|BUG:|Kernel panic|general protection fault|soft lockup|hard LOCKUP|"
    r"rcu.*(stall|self-detected)|blocked for more than|hung_task|Out of memory|oom-kill|"
    r"invoked oom-killer|sysrq: Trigger a crash|Call Trace:|RIP: "
)
CONSOLE_TAIL_BYTES = 256 * 1024
READY_SNAPSHOT = "bpflab-ready"
KERNEL_TIMESTAMP = re.compile(r"^[^\[]*(?=\[\s*\d+\.\d+\])")


def console_trouble(path: Path, most: int = 12) -> list[str]:
    """The last lines of kernel trouble in a VM's console log (its end is read, not the whole);
    OSError when it cannot be read (libvirt writes it as root, mode 0600)."""
    with path.open("rb") as log:
        log.seek(max(0, log.seek(0, os.SEEK_END) - CONSOLE_TAIL_BYTES))
        text = log.read().decode(errors="replace")
    # A kernel line may follow a login prompt that ended without a newline: keep it from its timestamp.
    lines = [
        KERNEL_TIMESTAMP.sub("", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", line)).rstrip() for line in text.splitlines()
    ]
    return [line for line in lines if KERNEL_TROUBLE.search(line)][-most:]


def console_note(path: Path) -> str:
    """For a message about a VM that stopped answering: what its console shows, and where it is."""
    if not path.exists():
        return ""
    try:
        trouble = console_trouble(path)
    except OSError as error:
        return f"Its console log {path} may tell why, but cannot be read here ({error.strerror}): `sudo tail` it."
    if not trouble:
        return f"Its console log {path} shows no kernel trouble (no oops, lockup, hung task or out-of-memory)."
    return f"Its console log {path} shows the kernel in trouble:\n" + "\n".join(f"    {line}" for line in trouble)


class Engine(Protocol):
    """What runs lab VMs: their states, up (create or start), halt, reload, destroy, the SSH
    endpoint and an interactive shell. `vagrant.Vagrant` is one."""

    name: str

    def statuses(self, vms: list[Machine]) -> dict[str, Status]: ...

    def up(self, vms: list[Machine], provider: str, current: Step) -> None: ...

    def halt(self, vm: Machine, current: Step) -> None: ...

    def reload(self, vm: Machine, current: Step | None) -> None: ...

    def destroy(self, vm: Machine, current: Step) -> None: ...

    def forget(self, vm: Machine) -> None: ...

    def endpoint(self, vm: Machine) -> tuple[Endpoint, str]: ...

    def interactive_ssh(self, vm: Machine) -> None: ...


def vagrant_libvirt_installed() -> bool:
    """Whether Vagrant has its libvirt plugin, from where Debian's package or `vagrant plugin install`
    puts it (asking Vagrant takes seconds)."""
    home = Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))
    return bool(
        glob.glob("/usr/share/rubygems-integration/all/gems/vagrant-libvirt-*")
        or glob.glob(str(home / "gems" / "*" / "gems" / "vagrant-libvirt-*"))
    )


def choose_engine(setting: str, have_vagrant: bool, have_vagrant_libvirt: bool, have_virsh: bool) -> str:
    """lab.yaml's vm.engine for a VM to be made: auto takes Vagrant where it can run libvirt VMs (or
    where VirtualBox is the only hypervisor), else bpflab's own libvirt engine."""
    if setting != "auto":
        return setting
    if have_vagrant and (have_vagrant_libvirt or not have_virsh):
        return "vagrant"
    return "libvirt"


def engine_for(config: Config, remembered: str | None = None) -> Engine:
    """The engine of a VM: the one that made it (until it is destroyed), else lab.yaml's choice."""
    name = remembered or choose_engine(
        config.vm.engine,
        shutil.which("vagrant") is not None,
        vagrant_libvirt_installed(),
        shutil.which("virsh") is not None,
    )
    return Libvirt() if name == "libvirt" else Vagrant()


def hardware_virtualization(cpuinfo: str, machine: str, kvm_usable: bool) -> bool:
    """KVM works only with real CPU support; a /dev/kvm node alone proves nothing."""
    if not kvm_usable:
        return False
    if arch.is_arm(machine):
        return True
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"vmx", "svm"})


def choose_acceleration(setting: str, hardware: bool, foreign: bool = False) -> str:
    """kvm or tcg for libvirt, from lab.yaml's `vm.acceleration` and what the host offers. A VM of
    another architecture (`foreign`) is always emulated: KVM runs only the host's own."""
    if foreign:
        if setting == "kvm":
            raise LabError(
                "lab.yaml asks for vm.acceleration: kvm, but vm.arch is not this host's architecture, "
                "and KVM cannot run another architecture's VM. Set vm.acceleration to auto or tcg "
                "(or vm.arch to auto)."
            )
        return "tcg"
    if setting == "kvm" and not hardware:
        raise LabError(
            "lab.yaml asks for vm.acceleration: kvm, but this host has no usable hardware "
            "virtualization (no vmx/svm CPU flag, or /dev/kvm is not accessible). "
            "Set vm.acceleration to auto or tcg."
        )
    if setting == "auto":
        return "kvm" if hardware else "tcg"
    return setting


def vcpus(wanted: int, guest_arch: str, acceleration: str) -> int:
    """An x86 guest under software emulation gets one vCPU. With several, qemu's vCPU threads see
    the kernel's live code patching (int3 first, then the new bytes) late: an `Oops: int3` in
    __x64_sys_getrandom at boot, and VMs gone silent as BPF attached (tracepoints are static keys).
    An arm64 kernel patches with every CPU stopped."""
    return 1 if acceleration == "tcg" and guest_arch == "amd64" else wanted


def choose_provider(setting: str, have_libvirt: bool, have_virtualbox: bool) -> str:
    if setting == "libvirt" and not have_libvirt:
        raise LabError(
            "lab.yaml asks for the libvirt provider, but vagrant-libvirt or libvirt is missing. " + SETUP_HINT
        )
    if setting == "virtualbox" and not have_virtualbox:
        raise LabError(
            "lab.yaml asks for the virtualbox provider, but VirtualBox (VBoxManage) is not "
            "installed. Install VirtualBox, or set vm.provider to libvirt."
        )
    if setting != "auto":
        return setting
    if have_libvirt:
        return "libvirt"
    if have_virtualbox:
        return "virtualbox"
    raise LabError(f"No Vagrant provider is installed (neither vagrant-libvirt nor VirtualBox). {SETUP_HINT}")


def host_provider(config: Config) -> str:
    plugins = vagrant.command(config.root, "plugin", "list", check=False).stdout
    have_libvirt = "vagrant-libvirt" in plugins and shutil.which("virsh") is not None
    return choose_provider(config.vm.provider, have_libvirt, shutil.which("VBoxManage") is not None)


def host_acceleration(config: Config) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    return choose_acceleration(
        config.vm.acceleration,
        hardware_virtualization(cpuinfo, arch.machine(), usable),
        arch.is_foreign(config.vm.arch),
    )


def box_for(config: Config, provider: str, engine: str) -> str:
    """The box new VMs of this provider start from: built here (if needed), the catalog's, or a ready
    box; the libvirt engine boots local boxes only."""
    kind, why = box.choose(config, provider, arch.debian())
    if kind != "local" and engine == "libvirt":
        raise LabError(
            f"The libvirt engine makes VMs from the box that bpflab builds here (vm.box: local); lab.yaml asks "
            f"for {why}. Set vm.box to local, or vm.engine to vagrant (with Vagrant installed), in lab.yaml."
        )
    if kind == "local":
        name = box.build(config, for_vagrant=engine == "vagrant").box_name
    elif kind == "packaged":
        name = box.register_packaged(config)
    else:
        name = config.vm.boxes[provider][arch.guest(config.vm.arch)]
    say(f"Box: {name} ({why})")
    return name


def choose_machines(known: list[str], choice: str, everything_by_default: bool) -> list[str]:
    """The machines that `--vm` names: a name, names with commas, or `all`; '' is the default."""
    if choice == "all" or (not choice and everything_by_default):
        return list(known)
    if not choice:
        return known[:1]
    names = [name.strip() for name in choice.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise LabError(
            f"lab.yaml defines the lab VMs {', '.join(known)} (vm.count: {len(known)}); there is no "
            f"VM named {', '.join(unknown) or repr(choice)}. Give --vm one of those names, names "
            "separated by commas, or all."
        )
    return list(dict.fromkeys(names))


def instance_name(config: Config) -> str:
    """What this checkout's VMs' names start with: lab.yaml's vm.name and a hash of the folder,
    so that two checkouts never share (or destroy) each other's VMs."""
    digest = hashlib.sha256(str(config.root.resolve()).encode()).hexdigest()[:8]
    return f"{config.vm.name}-{digest}"


class MachineState:
    """What bpflab remembers of one VM between commands (its box, architecture, acceleration
    and cached ssh-config), as small files in .vagrant/bpflab/<machine>/."""

    def __init__(self, folder: Path):
        self.folder = folder

    def get(self, key: str) -> str | None:
        path = self.folder / key
        return path.read_text().strip() if path.exists() else None

    def set(self, key: str, value: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / key).write_text(value + "\n")

    def forget(self, *keys: str) -> None:
        for key in keys:
            (self.folder / key).unlink(missing_ok=True)


def adopt_single_vm_state(root: Path) -> None:
    """Move what bpflab remembered of the VM before there could be several into lab's folder:
    without its box name, Vagrant would look for the catalog box to start that VM."""
    old = root / ".vagrant" / "bpflab"
    for key in ("box", "acceleration", "ssh-config"):
        if (old / key).is_file():
            (old / "lab").mkdir(parents=True, exist_ok=True)
            (old / key).replace(old / "lab" / key)


class LabVM:
    """One lab VM of one checkout (a machine of the Vagrantfile) and its life cycle."""

    def __init__(self, config: Config, machine: str | None = None):
        self.config = config
        self.machine = machine or config.machines[0]
        self.root = config.root
        self.state = MachineState(self.root / ".vagrant" / "bpflab" / self.machine)
        self.logs = self.root / "logs" / self.machine
        self.console_log = self.logs / "console.log"  # the guest's serial console
        # A VM made before engines were remembered was Vagrant's.
        self.engine = engine_for(config, self.remembered("engine") or (self.remembered("box") and "vagrant"))

    @property
    def state_dir(self) -> Path:
        return self.state.folder

    def remembered(self, key: str) -> str | None:
        return self.state.get(key)

    @property
    def title(self) -> str:
        """How messages name it: plain "the lab VM" when it is the only one."""
        return "the lab VM" if self.config.vm.count == 1 else f"the lab VM {self.machine}"

    @property
    def subject(self) -> str:
        """The title at the start of a sentence."""
        return self.title[0].upper() + self.title[1:]

    @property
    def domain(self) -> str:
        """The libvirt domain, named as the Vagrantfile names it."""
        return f"{instance_name(self.config)}-{self.machine}"

    @property
    def cpus(self) -> int:
        return vcpus(self.config.vm.cpus, self.remembered("arch") or "amd64", self.remembered("acceleration") or "-")

    def environment(self) -> dict:
        """What the Vagrantfile reads besides lab.yaml and the remembered box: the driver chosen when
        the VM was made, and its vCPUs."""
        env = {"BPFLAB_CPUS": str(self.cpus)}
        if self.remembered("acceleration"):
            env["BPFLAB_LIBVIRT_DRIVER"] = "kvm" if self.remembered("acceleration") == "kvm" else "qemu"
        return env

    def require_running(self) -> Status:
        status = statuses([self])[self.machine]
        if not status.created:
            raise LabError(f"{self.subject} does not exist yet. Run `invoke lab.up` (or `invoke lab.setup`) first.")
        if not status.running:
            raise LabError(f"{self.subject} is {status.state}, not running. Run `invoke lab.up` to start it.")
        return status

    def prepare(self, status: Status, boxes: dict[str, str]) -> str | None:
        """Before `vagrant up`: the provider to start it with, or None when it runs already.
        A VM to be created gets its acceleration, a clean libvirt slot and its box first
        (`boxes`: the box per provider, chosen once for all the VMs being created)."""
        self.state.forget("ssh-config")
        if status.running:
            done(f"{self.subject} is already running ({status.provider})")
            return None
        if status.created:
            return status.provider
        provider = host_provider(self.config) if self.engine.name == "vagrant" else "libvirt"
        self.state.set("engine", self.engine.name)
        self.state.set("arch", arch.guest(self.config.vm.arch))
        if provider == "libvirt":
            self.state.set("acceleration", host_acceleration(self.config))
            self.clear_stale_libvirt()
        if provider not in boxes:
            boxes[provider] = box_for(self.config, provider, self.engine.name)
        self.state.set("box", boxes[provider])
        return provider

    def clear_stale_libvirt(self) -> None:
        """Remove a domain or disk named for this VM that Vagrant has forgotten: the name holds
        a hash of this folder, so nothing else owns it, and it would block `vagrant up`."""
        if not libvirt.answers():
            raise LabError(
                f"libvirt does not answer on {libvirt.URI} (libvirtd not running?). "
                "Run `invoke host.setup`, then `invoke lab.up` again."
            )
        libvirt.remove_domain(self.domain)

    def halt(self) -> None:
        self.state.forget("ssh-config")
        if not statuses([self])[self.machine].running:
            say(f"{self.subject} is not running; nothing to halt.")
            return
        with step(f"Halting {self.title}", f"{self.subject} is halted") as current:
            self.engine.halt(self, current)

    def reload(self, current=None) -> Endpoint:
        """Restart the VM through its engine (so the engine's view of it stays right); its endpoint after."""
        self.state.forget("ssh-config")
        self.engine.reload(self, current)
        return self.endpoint(refresh=True)

    def destroy(self) -> None:
        self.state.forget("ssh-config")
        status = statuses([self])[self.machine]
        if status.created:
            with step(f"Destroying {self.title}", f"{self.subject} is destroyed") as current:
                if status.provider == "libvirt":  # a domain with snapshots cannot be removed
                    libvirt.delete_snapshots(self.domain, current)
                self.engine.destroy(self, current)
        else:
            say(f"{self.subject} does not exist; nothing to destroy.")
        self.state.forget("box", "acceleration", "arch", "engine", "kernel-release")

    def endpoint(self, refresh: bool = False) -> Endpoint:
        """Where SSH reaches the VM, kept as an ssh_config file (`ssh -F` takes it): an engine may take
        seconds to answer. It is asked again when the VM goes up, halts or is destroyed, or a caller
        finds the endpoint dead and asks for a refresh."""
        if refresh or self.remembered("ssh-config") is None:
            self.require_running()
            endpoint, text = self.engine.endpoint(self)
            self.state.set("ssh-config", text)
            return endpoint
        return vagrant.parse_ssh_config((self.state_dir / "ssh-config").read_text(), self.machine)

    def interactive_ssh(self) -> None:
        self.require_running()
        self.engine.interactive_ssh(self)

    def snapshots_supported(self, status: Status) -> None:
        """Snapshots are libvirt's, whichever engine made the domain; VirtualBox's are not used."""
        if not status.created:
            raise LabError(f"{self.subject} does not exist yet. Run `invoke lab.setup` first.")
        if status.provider != "libvirt":
            raise LabError(
                f"{self.subject} runs on {status.provider}; bpflab takes and restores snapshots of libvirt VMs "
                "only. Use VirtualBox's own snapshots, or `invoke lab.destroy` and `invoke lab.setup`."
            )

    def has_ready_snapshot(self) -> bool:
        return READY_SNAPSHOT in libvirt.snapshots(self.domain)

    def take_ready_snapshot(self, status: Status) -> None:
        """The VM as it is now, memory included while it runs: what `lab.reset` goes back to."""
        self.snapshots_supported(status)
        with step(f"Snapshot of {self.title} as ready (lab.reset goes back to it)") as current:
            libvirt.take_snapshot(self.domain, READY_SNAPSHOT, "bpflab: the seat as it became ready", current)

    def reset(self, status: Status) -> None:
        """Back to the ready snapshot, running (where it was taken running, its memory too)."""
        self.snapshots_supported(status)
        if not self.has_ready_snapshot():
            raise LabError(
                f"{self.subject} has no ready snapshot to go back to. `invoke lab.setup` takes one when the VM "
                "becomes ready, and `invoke lab.snapshot` takes one of it as it is now."
            )
        self.state.forget("ssh-config")
        libvirt.ensure_management_network()  # gone with vagrant-libvirt's last VM, maybe
        with step(f"Putting {self.title} back to its ready snapshot") as current:
            libvirt.revert_snapshot(self.domain, READY_SNAPSHOT, current)


def select(config: Config, choice: str = "", everything_by_default: bool = False) -> list[LabVM]:
    adopt_single_vm_state(config.root)
    return [LabVM(config, machine) for machine in choose_machines(config.machines, choice, everything_by_default)]


def select_one(config: Config, choice: str, task: str, for_all: str) -> LabVM:
    """The one VM a single-VM task works on; several are refused with the task that takes them."""
    chosen = select(config, choice)
    if len(chosen) > 1:
        raise LabError(f"`invoke {task}` works on one VM at a time; give --vm one name. {for_all}")
    return chosen[0]


def statuses(vms: list[LabVM]) -> dict[str, Status]:
    """The VMs' states, from one question to each engine."""
    found: dict[str, Status] = {}
    for name in dict.fromkeys(vm.engine.name for vm in vms):
        group = [vm for vm in vms if vm.engine.name == name]
        found.update(group[0].engine.statuses(group))
    return {vm.machine: found[vm.machine] for vm in vms}


def status_rows(vms: list[LabVM]) -> list[list[tuple[str, str]]]:
    """What lab.status shows of each VM."""
    current = statuses(vms)
    blocks = []
    for vm in vms:
        now = current[vm.machine]
        rows = [
            ("machine", vm.machine),
            ("state", now.state),
            ("engine", vm.engine.name),
            ("provider", now.provider),
            ("arch", vm.remembered("arch") or "-"),
            ("acceleration", vm.remembered("acceleration") or "-"),
            (
                "vCPUs",
                f"{vm.cpus}{' (one for emulated x86: see vm.cpus in the README)' * (vm.cpus < vm.config.vm.cpus)}",
            ),
            ("box", vm.remembered("box") or "-"),
            ("libvirt domain", vm.domain),
        ]
        if now.provider == "libvirt" and now.created:
            rows.append(("ready snapshot", "yes (lab.reset goes back to it)" if vm.has_ready_snapshot() else "none"))
        if now.running:
            endpoint = vm.endpoint()
            rows.append(("ssh", f"{endpoint.user}@{endpoint.host}:{endpoint.port}"))
        blocks.append(rows)
    return blocks


def bring_up(vms: list[LabVM]) -> None:
    """Create or start these VMs, one call per engine and provider: vagrant-libvirt then brings
    several up in parallel."""
    waiting: dict[tuple[str, str], list[LabVM]] = {}
    boxes: dict[str, str] = {}
    current = statuses(vms)
    for vm in vms:
        provider = vm.prepare(current[vm.machine], boxes)
        if provider:
            waiting.setdefault((vm.engine.name, provider), []).append(vm)
    for (engine, provider), group in waiting.items():
        what = group[0].title if len(group) == 1 else f"the lab VMs {', '.join(vm.machine for vm in group)}"
        accel = group[0].remembered("acceleration") or "-"
        slow = "; a few minutes under software emulation" if accel == "tcg" and engine == "vagrant" else ""
        with step(
            f"Starting {what} ({engine} engine, {provider}, {accel}{slow})",
            f"{what[0].upper()}{what[1:]} {'is' if len(group) == 1 else 'are'} up",
        ) as current:
            try:
                group[0].engine.up(group, provider, current)
            except LabError as error:  # a guest that never answered may say why on its console
                notes = [note for vm in group if (note := console_note(vm.console_log))]
                raise LabError("\n".join([str(error), *notes]), error.code) from None


def halt_all(vms: list[LabVM]) -> None:
    for vm in vms:
        vm.halt()


def destroy_all(vms: list[LabVM]) -> None:
    """Destroy these VMs and, when they are every VM of vm.count, those left beyond a lowered count."""
    for vm in vms:
        vm.destroy()
    if {vm.machine for vm in vms} == set(vms[0].config.machines):
        remove_leftovers(vms[0].config)


def beyond_count(instance: str, known: list[str], domains: list[str]) -> list[str]:
    """Machines of this checkout that libvirt still has but lab.yaml no longer defines."""
    pattern = re.compile(re.escape(instance) + r"-(lab\d+)")
    return [
        found.group(1) for domain in domains if (found := pattern.fullmatch(domain)) and found.group(1) not in known
    ]


def leftovers(config: Config) -> list[LabVM]:
    """VMs left in libvirt after vm.count was lowered: Vagrant no longer sees them."""
    if not libvirt.answers():
        return []
    return [
        LabVM(config, machine) for machine in beyond_count(instance_name(config), config.machines, libvirt.domains())
    ]


def warn_of_leftovers(config: Config) -> None:
    for vm in leftovers(config):
        warn(
            f"libvirt still has {vm.domain}, a VM beyond vm.count: {config.vm.count} in lab.yaml. "
            "`invoke lab.destroy` removes it."
        )


def remove_leftovers(config: Config) -> None:
    for vm in leftovers(config):
        vm.clear_stale_libvirt()
        vm.engine.forget(vm)
        shutil.rmtree(vm.state_dir, ignore_errors=True)
