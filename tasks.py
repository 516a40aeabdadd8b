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
from bpflab.console import console, say
from bpflab.errors import LabError
from bpflab.vm import LabVM


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


def lab_vm():
    return LabVM(settings())


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

@task
@friendly
def up(c):
    """Create or start the lab VM."""
    lab_vm().up()


@task
@friendly
def halt(c):
    """Shut the lab VM down (its disk is kept)."""
    lab_vm().halt()


@task
@friendly
def destroy(c):
    """Delete the lab VM and its disk."""
    lab_vm().destroy()


@task
@friendly
def status(c):
    """Show the lab VM: state, provider, acceleration, box, SSH endpoint."""
    vm = lab_vm()
    current = vm.status()
    rows = [("state", current.state), ("provider", current.provider),
            ("acceleration", vm.remembered("acceleration") or "-"),
            ("box", vm.remembered("box") or "-"), ("libvirt domain", vm.domain)]
    if current.running:
        endpoint = connection.parse_ssh_config(vm.ssh_config())
        rows.append(("ssh", f"{endpoint['user']}@{endpoint['host']}:{endpoint['port']}"))
    for name, value in rows:
        print(f"{name:<15}{value}")


@task
@friendly
def ssh(c):
    """Open an interactive shell in the lab VM."""
    lab_vm().interactive_ssh()


def provision_vm(vm):
    remote = connection.connect(vm)
    log = vm.root / "logs" / "provision.log"
    changed, _ = provision_stage.apply(remote, vm.config, log)
    say("Provisioning changed the VM." if changed else "Provisioning: nothing to do, the VM was up to date.")
    provision_stage.require_healthy(provision_stage.doctor(remote))
    return remote


@task
@friendly
def provision(c):
    """Install the book's packages, BCC and bpftrace in the VM (only what is missing)."""
    provision_vm(lab_vm())


@task
@friendly
def bcc_export(c):
    """Copy the VM's source-built BCC to the host, for `bcc.install: artifact` on other VMs."""
    vm = lab_vm()
    provision_stage.export_bcc(connection.connect(vm), vm.config, vm.root / "logs" / "provision.log")


@task
@friendly
def inventory(c, output=""):
    """Write the lab VM as an Ansible inventory, for `ansible-playbook -i FILE ansible/site.yml`."""
    vm = lab_vm()
    path = Path(output) if output else vm.state_dir / "inventory.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(connection.ansible_inventory(vm), sort_keys=False))
    say(f"Wrote {path}. Provision with Ansible: ansible-playbook -i {path} ansible/site.yml")


@task
@friendly
def doctor(c):
    """Check in the VM what the labs need: kernel features, headers, BCC, bpftrace."""
    provision_stage.require_healthy(provision_stage.doctor(connection.connect(lab_vm())))


INVENTORY_HELP = "an Ansible YAML inventory: do it on every host in it, at once"


@task(help={"inventory": INVENTORY_HELP})
@friendly
def setup(c, inventory=""):
    """Everything a learner needs: bring the lab VM up, provision it, sync the labs."""
    if inventory:
        results = fleet.setup(fleet.load_inventory(inventory), settings(), settings().root)
        fleet.require_all(results, [], "are ready")
        return
    vm = lab_vm()
    vm.up()
    remote = provision_vm(vm)
    sync_stage.push(remote, vm.root)
    say("[green]✓[/green] The lab VM is ready and the labs are in it. Try `invoke lab.run hello`.")


@task
@friendly
def sync(c):
    """Copy labs/ and bpf/ into the VM (only what changed; deletions too)."""
    vm = lab_vm()
    difference = sync_stage.push(connection.connect(vm), vm.root)
    say("Labs in the VM are up to date." if difference.empty else
        f"Synced: {len(difference.upload)} updated, {len(difference.delete)} deleted.")


@task(help={"name": "a lab from `invoke lab.list`, or the path of your own BCC program (.py)",
            "duration": "stop after this many seconds (0: run until Ctrl-C)",
            "trigger": "once attached, run the lab's trigger workload in the VM (default: on)",
            "args": "arguments passed to the program, as one string", "inventory": INVENTORY_HELP})
@friendly
def run(c, name, duration=0, trigger=True, args="", inventory=""):
    """Run a lab in the VM with live output; saved under runs/."""
    if duration < 0:
        raise LabError(f"--duration must be 0 (until Ctrl-C) or a number of seconds, not {duration}.")
    if inventory:
        results, folder = fleet.run_everywhere(fleet.load_inventory(inventory), settings().root, name, duration,
                                               trigger, tuple(shlex.split(args)))
        fleet.require_all(results, fleet.run_problems(results, folder), f"ran {name}; output gathered in {folder}")
        return
    vm = lab_vm()
    remote = connection.connect(vm)
    target = run_stage.prepare(remote, vm.root, name, run_stage.load_catalog(vm.root))
    workload = target.lab.trigger if (trigger and target.lab) else None
    outcome = run_stage.execute(remote, lambda: connection.connect(vm), target, vm.root / "runs", vm.domain,
                                duration=duration, trigger=workload, args=tuple(shlex.split(args)))
    run_stage.report(outcome)


@task(optional=["names"], iterable=["names"],
      help={"names": "labs to check (repeat --names; default: all)", "seconds": "how long each lab runs",
            "inventory": INVENTORY_HELP + " (a host x lab table)"})
@friendly
def verify(c, names=None, seconds=12, inventory=""):
    """Run every lab with its trigger and check its expectations: a PASS/FAIL table."""
    if inventory:
        results, folder = fleet.verify(fleet.load_inventory(inventory), settings().root, names or [], seconds)
        table, failed_cells = fleet.verify_matrix(results)
        console.print(table)
        fleet.require_all(results, failed_cells, f"passed every lab (summary: {folder / 'summary.json'})")
        return
    vm = lab_vm()
    rows = run_stage.verify(connection.connect(vm), lambda: connection.connect(vm), vm.root, vm.domain,
                            names or [], seconds)
    summary = run_stage.verify_table(rows, vm.root / "runs")
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


@task(name="probe-args", help={"probe": "for example tracepoint:syscalls:sys_enter_openat"})
@friendly
def probe_args(c, probe):
    """The arguments of a probe in the VM (bpftrace -lv)."""
    print(run_stage.probe_arguments(connection.connect(lab_vm()), probe), end="")


@task(help={"name": "a BCC tool: execsnoop, opensnoop, ...", "duration": "stop after this many seconds",
            "args": "arguments for the tool, as one string"})
@friendly
def tool(c, name, duration=0, args=""):
    """Run a tool that BCC ships, in the VM, gathered under runs/ like a lab."""
    vm = lab_vm()
    remote = connection.connect(vm)
    outcome = run_stage.execute(remote, lambda: connection.connect(vm), run_stage.tool_target(remote, name),
                                vm.root / "runs", vm.domain, duration=duration, args=tuple(shlex.split(args)))
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
