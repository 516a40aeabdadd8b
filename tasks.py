"""Invoke tasks: argument parsing only; the work happens in the bpflab package.

`invoke --list` shows them all. Expected failures end with one message and a
non-zero exit (bpflab.errors.LabError -> invoke's Exit), never a traceback.
"""

import functools
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from invoke import Collection, Exit, task

from bpflab import box as box_stage
from bpflab import config, connection, fleet, host as host_stage, provision as provision_stage
from bpflab import run as run_stage
from bpflab import sync as sync_stage
from bpflab import vm as vm_stage
from bpflab.console import console, say
from bpflab.errors import LabError


def friendly(function):
    """Turn expected failures and Ctrl-C into a message and an exit code."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except LabError as error:
            raise Exit(f"error: {error}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("Interrupted.", code=130) from None
        except BrokenPipeError:  # output piped into `head` and the like
            sys.stderr.close()
            raise Exit(code=0) from None
    return wrapper


def settings():
    return config.load(os.environ.get("BPFLAB_CONFIG", config.DEFAULT_PATH))


# host ---------------------------------------------------------------------

@task
@friendly
def host_setup(c):
    """Install Vagrant, vagrant-libvirt, libvirt, qemu and the box tools; start libvirtd."""
    host_stage.setup()


@task
@friendly
def host_teardown(c):
    """Stop the libvirt daemons that host.setup started itself (none where systemd runs them)."""
    host_stage.teardown()


# box ----------------------------------------------------------------------

@task
@friendly
def box_build(c):
    """Build the local Debian box offline (cached by recipe) and add it to Vagrant."""
    box_stage.build(settings())


# lab ----------------------------------------------------------------------

VM_HELP = "a lab VM: lab (the primary), lab2, ... as lab.yaml's vm.count makes them; names with commas; or all"
INVENTORY_HELP = "an Ansible YAML inventory: do it on every host in it, at once"


def lab_vms(choice, everything_by_default=False):
    return vm_stage.select(settings(), choice, everything_by_default)


def one_vm(choice, task, for_all=""):
    return vm_stage.select_one(settings(), choice, task, for_all)


def room(inventory, choice, everything_by_default=False):
    """(fleet hosts, None) for --inventory or several VMs; (None, the VM) for one."""
    if inventory and choice:
        raise LabError("Give --inventory (hosts of a room) or --vm (this checkout's lab VMs), not both.")
    if inventory:
        return fleet.load_inventory(inventory), None
    vms = lab_vms(choice, everything_by_default)
    return (fleet.vm_hosts(vms), None) if len(vms) > 1 else (None, vms[0])


@task(help={"vm": VM_HELP + " (default: all)"})
@friendly
def up(c, vm=""):
    """Create or start the lab VMs (several at once in parallel)."""
    vm_stage.bring_up(lab_vms(vm, everything_by_default=True))


@task(help={"vm": VM_HELP + " (default: all)"})
@friendly
def halt(c, vm=""):
    """Shut the lab VMs down (their disks are kept)."""
    for each in lab_vms(vm, everything_by_default=True):
        each.halt()


@task(help={"vm": VM_HELP + " (default: all)"})
@friendly
def destroy(c, vm=""):
    """Delete the lab VMs and their disks (by default also VMs left beyond a lowered vm.count)."""
    for each in lab_vms(vm, everything_by_default=True):
        each.destroy()
    if vm in ("", "all"):
        vm_stage.remove_leftovers(settings())


@task(help={"vm": VM_HELP + " (default: all)"})
@friendly
def status(c, vm=""):
    """Show each lab VM: state, provider, acceleration, box, SSH endpoint."""
    vms = lab_vms(vm, everything_by_default=True)
    states = vm_stage.statuses(vms)
    for index, each in enumerate(vms):
        current = states[each.machine]
        rows = [("machine", each.machine), ("state", current.state), ("provider", current.provider),
                ("acceleration", each.remembered("acceleration") or "-"),
                ("box", each.remembered("box") or "-"), ("libvirt domain", each.domain)]
        if current.running:
            endpoint = connection.parse_ssh_config(each.ssh_config(), each.machine)
            rows.append(("ssh", f"{endpoint['user']}@{endpoint['host']}:{endpoint['port']}"))
        print("\n" * bool(index) + "\n".join(f"{name:<15}{value}" for name, value in rows))
    vm_stage.warn_of_leftovers(settings())


@task(help={"vm": VM_HELP})
@friendly
def ssh(c, vm=""):
    """Open an interactive shell in a lab VM."""
    one_vm(vm, "lab.ssh").interactive_ssh()


def provision_vm(vm):
    remote = connection.connect(vm)
    changed, _ = provision_stage.apply(remote, vm.config, vm.logs / "provision.log")
    say("Provisioning changed the VM." if changed else "Provisioning: nothing to do, the VM was up to date.")
    provision_stage.require_healthy(provision_stage.doctor(remote))
    return remote


@task(help={"vm": VM_HELP})
@friendly
def provision(c, vm=""):
    """Install the book's packages, BCC and bpftrace in the VM (only what is missing)."""
    provision_vm(one_vm(vm, "lab.provision", "`invoke lab.setup --vm all` provisions them all at once."))


@task(help={"vm": VM_HELP})
@friendly
def bcc_export(c, vm=""):
    """Copy the VM's source-built BCC to the host, for `bcc.install: artifact` on other VMs."""
    chosen = one_vm(vm, "lab.bcc-export")
    provision_stage.export_bcc(connection.connect(chosen), chosen.config, chosen.logs / "provision.log")


@task(help={"vm": VM_HELP + " (default: all)", "output": "where to write it"})
@friendly
def inventory(c, output="", vm=""):
    """Write the lab VMs as an Ansible inventory, for `ansible-playbook -i FILE ansible/site.yml`."""
    vms = lab_vms(vm, everything_by_default=True)
    path = Path(output) if output else vms[0].root / ".vagrant" / "bpflab" / "inventory.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(connection.ansible_inventory(vms), sort_keys=False))
    say(f"Wrote {path}. Provision with Ansible: ansible-playbook -i {path} ansible/site.yml")


@task(help={"vm": VM_HELP})
@friendly
def doctor(c, vm=""):
    """Check in the VM what the labs need: kernel features, headers, BCC, bpftrace."""
    chosen = one_vm(vm, "lab.doctor", "`invoke lab.setup --vm all` checks them all at once.")
    provision_stage.require_healthy(provision_stage.doctor(connection.connect(chosen)))


@task(help={"inventory": INVENTORY_HELP, "vm": VM_HELP + " (default: all)"})
@friendly
def setup(c, inventory="", vm=""):
    """Everything a learner needs: bring the lab VMs up, provision them, sync the labs."""
    if not inventory:
        vm_stage.bring_up(lab_vms(vm, everything_by_default=True))
    hosts, chosen = room(inventory, vm, everything_by_default=True)
    if hosts:
        results = fleet.setup(hosts, settings(), settings().root)
        fleet.require_all(results, [], "are ready")
        return
    sync_stage.push(provision_vm(chosen), chosen.root)
    hint = f" --vm {chosen.machine}" if chosen.config.vm.count > 1 else ""
    say(f"[green]✓[/green] {chosen.subject} is ready and the labs are in it. "
        f"Try `invoke lab.run hello{hint}`.")


@task(help={"vm": VM_HELP})
@friendly
def sync(c, vm=""):
    """Copy labs/ and bpf/ into the VM (only what changed; deletions too)."""
    chosen = one_vm(vm, "lab.sync", "`invoke lab.setup --vm all` syncs them all at once.")
    difference = sync_stage.push(connection.connect(chosen), chosen.root)
    say("Labs in the VM are up to date." if difference.empty else
        f"Synced: {len(difference.upload)} updated, {len(difference.delete)} deleted.")


@task(help={"name": "a lab from `invoke lab.list`, or the path of your own BCC program (.py)",
            "duration": "stop after this many seconds (0: run until Ctrl-C)",
            "trigger": "once attached, run the lab's trigger workload in the VM (default: on)",
            "args": "arguments passed to the program, as one string", "inventory": INVENTORY_HELP,
            "vm": VM_HELP + " (default: lab)"})
@friendly
def run(c, name, duration=0, trigger=True, args="", inventory="", vm=""):
    """Run a lab in the VM with live output; saved under runs/."""
    if duration < 0:
        raise LabError(f"--duration must be 0 (until Ctrl-C) or a number of seconds, not {duration}.")
    hosts, chosen = room(inventory, vm)
    if hosts:
        results, folder = fleet.run_everywhere(hosts, settings().root, name, duration, trigger,
                                               tuple(shlex.split(args)))
        fleet.require_all(results, fleet.run_problems(results, folder), f"ran {name}; output gathered in {folder}")
        return
    remote = connection.connect(chosen)
    target = run_stage.prepare(remote, chosen.root, name, run_stage.load_catalog(chosen.root))
    workload = target.lab.trigger if (trigger and target.lab) else None
    outcome = run_stage.execute(remote, lambda: connection.connect(chosen), target, chosen.root / "runs",
                                chosen.domain, duration=duration, trigger=workload, args=tuple(shlex.split(args)))
    run_stage.report(outcome)


@task(optional=["names"], iterable=["names"],
      help={"names": "labs to check (repeat --names; default: all)", "seconds": "how long each lab runs",
            "inventory": INVENTORY_HELP + " (a host x lab table)", "vm": VM_HELP + " (default: lab)"})
@friendly
def verify(c, names=None, seconds=12, inventory="", vm=""):
    """Run every lab with its trigger and check its expectations: a PASS/FAIL table."""
    hosts, chosen = room(inventory, vm)
    if hosts:
        results, folder = fleet.verify(hosts, settings().root, names or [], seconds)
        table, failed_cells = fleet.verify_matrix(results)
        console.print(table)
        fleet.require_all(results, failed_cells, f"passed every lab (summary: {folder / 'summary.json'})")
        return
    rows = run_stage.verify(connection.connect(chosen), lambda: connection.connect(chosen), chosen.root,
                            chosen.domain, names or [], seconds)
    summary = run_stage.verify_table(rows, chosen.root / "runs")
    failed = [row["lab"] for row in rows if row["result"] == "FAIL"]
    if failed:
        raise LabError(f"{len(failed)} of {len(rows)} labs failed: {', '.join(failed)}. Summary: {summary}")
    say(f"All {len(rows)} labs passed. Summary: {summary}")


@task(help={"name": "name of your program", "template": "the lab to start from (default: hello)"})
@friendly
def new(c, name, template="hello"):
    """Start your own exercise from a lab: exercises/NAME/NAME.py and NAME.bpf.c."""
    root = settings().root
    program = run_stage.new_exercise(root, name, template, run_stage.load_catalog(root))
    say(f"Created {program.relative_to(root)} and its .bpf.c. Edit them, then: "
        f"invoke lab.run {program.relative_to(root)}")


@task(name="probe-args", help={"probe": "for example tracepoint:syscalls:sys_enter_openat", "vm": VM_HELP})
@friendly
def probe_args(c, probe, vm=""):
    """The arguments of a probe in the VM (bpftrace -lv)."""
    print(run_stage.probe_arguments(connection.connect(one_vm(vm, "lab.probe-args")), probe), end="")


@task(help={"name": "a BCC tool: execsnoop, opensnoop, ...", "duration": "stop after this many seconds",
            "args": "arguments for the tool, as one string", "vm": VM_HELP})
@friendly
def tool(c, name, duration=0, args="", vm=""):
    """Run a tool that BCC ships, in the VM, gathered under runs/ like a lab."""
    chosen = one_vm(vm, "lab.tool")
    remote = connection.connect(chosen)
    outcome = run_stage.execute(remote, lambda: connection.connect(chosen), run_stage.tool_target(remote, name),
                                chosen.root / "runs", chosen.domain, duration=duration, args=tuple(shlex.split(args)))
    run_stage.report(outcome)


@task(name="list")
@friendly
def list_labs(c):
    """The lab catalog: name, probe kind, summary."""
    for lab in run_stage.load_catalog(settings().root).values():
        print(f"{lab.name:<26}{lab.probe:<16}{lab.summary}")


@task
@friendly
def runs(c):
    """The gathered runs, newest first."""
    for record in run_stage.list_runs(settings().root / "runs"):
        print(f"{record['folder']:<48}{record['stopped']:<14}exit {record['exit_status']}  {record['lines']} lines")


# tests --------------------------------------------------------------------

@task(help={"fast": "only the tests that need no VM (seconds instead of minutes)"})
def test(c, fast=False):
    """Run the test suite; without --fast this includes the real-VM tests."""
    command = [sys.executable, "-m", "pytest"] + (["-m", "not vm"] if fast else [])
    code = subprocess.run(command).returncode
    if code == 5:
        say("pytest collected no tests.")
        code = 0
    if code:
        raise Exit(code=code)


ns = Collection(test)
ns.add_collection(Collection("host", setup=host_setup, teardown=host_teardown))
ns.add_collection(Collection("box", build=box_build))
ns.add_collection(Collection("lab", setup, up, halt, destroy, status, ssh, provision, bcc_export, inventory, doctor,
                             sync, run, list_labs, runs, verify, new, probe_args, tool))
