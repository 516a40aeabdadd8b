"""The Vagrant engine: the VM life cycle (status, up, halt, reload, destroy, the SSH endpoint
and an interactive shell) through Vagrant's command line, with vagrant-libvirt or VirtualBox.

Each Vagrant start costs seconds (more under emulation), so it is asked about several
machines at once where it can. `vm.Engine` is the interface this implements.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from .commands import run
from .config import Config
from .console import Step
from .errors import LabError

# Vagrant without its update check (no network here) and without colour codes in logs.
QUIET = {"VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1"}
SETUP_HINT = "Run `invoke host.setup` (Debian/Ubuntu) or install Vagrant and a provider as the README says."


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


@dataclass(frozen=True)
class Endpoint:
    """Where SSH reaches a machine: as `vagrant ssh-config` or an Ansible inventory describes it."""

    host: str
    port: int
    user: str
    identity: str | None


def parse_ssh_config(text: str, machine: str) -> Endpoint:
    """The endpoint that `vagrant ssh-config` describes for one machine."""
    options = paramiko.SSHConfig.from_text(text).lookup(machine)
    if "hostname" not in options or options["hostname"] == machine:
        raise LabError(
            f"`vagrant ssh-config` did not describe the lab VM {machine} (no HostName). "
            "Run `invoke lab.status`; if the VM is running, `invoke lab.up` refreshes it."
        )
    return Endpoint(
        options["hostname"],
        int(options.get("port", 22)),
        options.get("user", "vagrant"),
        (options.get("identityfile") or [None])[0],
    )


def command(
    root: Path,
    *args: str,
    env: dict | None = None,
    log: Path | None = None,
    current=None,
    check: bool = True,
    fix: str = "",
) -> subprocess.CompletedProcess:
    """`vagrant ARGS` in the project folder `root`, streamed to the step and the log."""
    if shutil.which("vagrant") is None:
        raise LabError(f"Vagrant is not installed on this host. {SETUP_HINT}")
    return run(
        ["vagrant", *args],
        current=current,
        env={"VAGRANT_CWD": str(root), **QUIET, **(env or {})},
        cwd=root,
        check=check,
        log=log,
        what=f"vagrant {args[0]}",
        fix=fix,
    )


def parse_status(machine_readable: str, machine: str) -> dict[str, str]:
    """`vagrant status --machine-readable` -> {'state': ..., 'provider-name': ...} of one machine."""
    found = {}
    for line in machine_readable.splitlines():
        parts = line.split(",", 3)
        if len(parts) == 4 and parts[1] == machine:
            found[parts[2]] = parts[3]
    return found


def statuses(root: Path, machines: list[str], titles: dict[str, str], env: dict, log: Path) -> dict[str, Status]:
    """The machines' states from one `vagrant status`; `titles` name them in messages."""
    output = command(root, "status", *machines, "--machine-readable", env=env, log=log, check=False).stdout
    found = {}
    for machine in machines:
        fields = parse_status(output, machine)
        if "state" not in fields:
            reason = output.strip().splitlines()[-3:] if output.strip() else ["no output"]
            raise LabError(
                f"Vagrant could not tell the state of {titles[machine]}: "
                + " / ".join(reason)
                + f"\nFull log: {log}. {SETUP_HINT}"
            )
        found[machine] = Status(fields["state"], fields.get("provider-name", "?"))
    return found


def installed_boxes() -> set[tuple[str, str]]:
    """(name, provider) of every box Vagrant has."""
    listing = subprocess.run(
        ["vagrant", "box", "list", "--machine-readable"], capture_output=True, text=True, env={**os.environ, **QUIET}
    ).stdout
    names, providers = [], []
    for line in listing.splitlines():
        parts = line.split(",")
        if len(parts) >= 4 and parts[2] == "box-name":
            names.append(parts[3])
        elif len(parts) >= 4 and parts[2] == "box-provider":
            providers.append(parts[3])
    return set(zip(names, providers, strict=True))


def add_box(name: str, box_file: Path, current=None) -> None:
    run(["vagrant", "box", "add", "--force", "--name", name, str(box_file)], current=current, env=QUIET)


def exec_ssh(root: Path, machine: str, env: dict) -> None:
    """Replace this process with `vagrant ssh`, so the shell gets the real terminal."""
    os.chdir(root)
    os.execvpe("vagrant", ["vagrant", "ssh", machine], {**os.environ, "VAGRANT_CWD": str(root), **QUIET, **env})


class Machine(Protocol):
    """What an engine needs to know of one lab VM (a `vm.LabVM`)."""

    root: Path
    machine: str
    config: Config
    console_log: Path

    @property
    def domain(self) -> str: ...

    def remembered(self, key: str) -> str | None: ...

    @property
    def title(self) -> str: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def cpus(self) -> int: ...

    def environment(self) -> dict: ...


class Vagrant:
    """Vagrant as the engine of one checkout's VMs (the Vagrantfile's machines)."""

    name = "vagrant"

    def command(
        self, vm: Machine, *args: str, current: Step | None = None, check: bool = True, fix: str = ""
    ) -> subprocess.CompletedProcess:
        return command(
            vm.root,
            *args,
            env=vm.environment(),
            log=vm.state_dir / "vagrant.log",
            current=current,
            check=check,
            fix=fix,
        )

    def statuses(self, vms: list[Machine]) -> dict[str, Status]:
        return statuses(
            vms[0].root,
            [vm.machine for vm in vms],
            {vm.machine: vm.title for vm in vms},
            vms[0].environment(),
            vms[0].state_dir / "vagrant.log",
        )

    def up(self, vms: list[Machine], provider: str, current: Step) -> None:
        """Create or start these machines with one `vagrant up` (vagrant-libvirt starts several in parallel)."""
        self.command(
            vms[0],
            "up",
            *(vm.machine for vm in vms),
            f"--provider={provider}",
            current=current,
            fix=f"See the full log in {vms[0].state_dir / 'vagrant.log'}; `invoke lab.destroy` and "
            "`invoke lab.up` start again from scratch.",
        )

    def halt(self, vm: Machine, current: Step) -> None:
        self.command(vm, "halt", vm.machine, current=current)

    def reload(self, vm: Machine, current: Step | None) -> None:
        self.command(
            vm,
            "reload",
            vm.machine,
            current=current,
            fix=f"See {vm.state_dir / 'vagrant.log'}; `invoke lab.up` starts it if it stayed down.",
        )

    def destroy(self, vm: Machine, current: Step) -> None:
        self.command(vm, "destroy", "--force", vm.machine, current=current)

    def forget(self, vm: Machine) -> None:
        """Drop what Vagrant remembers of a machine that lab.yaml no longer defines."""
        shutil.rmtree(vm.root / ".vagrant" / "machines" / vm.machine, ignore_errors=True)

    def endpoint(self, vm: Machine) -> tuple[Endpoint, str]:
        """The machine's SSH endpoint, and the ssh_config text it came from (to keep)."""
        text = self.command(vm, "ssh-config", vm.machine, fix="`invoke lab.status` tells the VM's state.").stdout
        return parse_ssh_config(text, vm.machine), text

    def interactive_ssh(self, vm: Machine) -> None:
        exec_ssh(vm.root, vm.machine, vm.environment())
