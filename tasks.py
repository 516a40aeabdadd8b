"""Invoke tasks: argument parsing and one call into bpflab per task (`invoke --list`). Expected
failures end with one message and a non-zero exit (bpflab.errors.LabTask), never a traceback."""

import subprocess
import sys

from invoke import Collection, Exit, task

from bpflab import box, catalog, config, console, host, orchestrate, report
from bpflab.console import say
from bpflab.counts import run_to_plot
from bpflab.errors import LabTask
from bpflab.held import release_all
from bpflab.inventory import write_for_ansible
from bpflab.packaging import package
from bpflab.runs import list_runs
from bpflab.vm import bring_up, destroy_all, engine_for, halt_all, select, select_one, status_rows, warn_of_leftovers

HELP = {
    "vm": "a lab VM: lab (the primary), lab2, ... as lab.yaml's vm.count makes them; names with commas, or all "
    "(default: lab)",
    "vms": "lab VMs: a name, names with commas, or all (default: all)",
    "inventory": "an Ansible YAML inventory: do it on every host in it, at once",
    "duration": "stop after this many seconds of tracing, counted from attached (default 0: until Ctrl-C)",
    "trigger": "a shell command to run in the VM once attached (catalog labs have their own)",
    "no_trigger": "run no trigger, not even the lab's own",
    "args": "arguments passed to the program, as one string",
    "json": "JSON for scripts instead of a table",
    "hashicorp": "without a vagrant package: install HashiCorp's and build vagrant-libvirt (else: the steps)",
    "plot": "a counting lab: draw its counts at the end",
    "seconds": "how long each lab runs",
    "names": "labs to check (repeat --names; default: all)",
    "template": "the lab to start from (default: hello)",
    "exercise": "one of the book's chapter 2 exercises, 1-5 (lab.new: start from where it starts)",
    "probe": "for example tracepoint:syscalls:sys_enter_openat",
    "top": "how many keys (default 8)",
    "xlated": "a program id: dump its instructions as the verifier left them",
    "jited": "a program id: dump its machine code",
    "watch": "show it again every 2 s until Ctrl-C",
    "run": "a folder under runs/ (default: the newest counting run)",
}
HOSTS, RUN = ("inventory", "vm"), ("duration", "trigger", "no_trigger", "inventory", "vm")
COLLECTIONS: dict[str, list] = {"host": [], "box": [], "lab": []}


def lab_task(*options: str, collection: str = "lab", own: dict | None = None, **extra):
    """An invoke task of `collection` whose expected failures end as one message; the help of its
    `options` comes from HELP (`vms`: --vm where it covers every VM by default), or from `own`."""

    def register(function):
        shared = {("vm" if option == "vms" else option): HELP[option] for option in options}
        made = task(klass=LabTask, help=shared | (own or {}), **extra)(function)
        COLLECTIONS[collection].append(made)
        return made

    return register


settings = config.load  # lab.yaml, or $BPFLAB_CONFIG


def host_verb(name: str, action, summary: str, **fixed) -> None:
    """A lab task that does `action` on the hosts of --inventory or --vm (default: lab), as every verb
    that acts on a host does."""

    def verb(c, inventory="", vm=""):
        action(settings(), inventory, vm, **fixed)

    verb.__doc__ = summary
    lab_task(*HOSTS, name=name)(verb)


host_verb("reset", orchestrate.reset, "Put a lab VM back to its ready snapshot in seconds (--vm all: every seat).")
host_verb("snapshot", orchestrate.snapshot, "Take the lab VM's ready snapshot now (lab.setup takes one when ready).")
host_verb(
    "provision", orchestrate.set_up, "Install the book's packages, BCC and bpftrace: what is missing.", bring=False
)
host_verb("bcc-export", orchestrate.export_bcc, "Copy the VM's source-built BCC to the host (`bcc.install: artifact`).")
host_verb("doctor", orchestrate.doctor, "Check in the VM what the labs need: kernel features, headers, BCC, bpftrace.")
host_verb("sync", orchestrate.sync_labs, "Copy labs/ and bpf/ into the VM (only what changed; deletions too).")


def vm_verb(name: str, action, summary: str) -> None:
    """A lab task that does `action` on the lab VMs of --vm (default: all of them)."""

    def verb(c, vm=""):
        action(select(settings(), vm, everything_by_default=True))

    verb.__doc__ = summary
    lab_task("vms", name=name)(verb)


vm_verb("up", bring_up, "Create or start the lab VMs (several at once in parallel).")
vm_verb("halt", halt_all, "Shut the lab VMs down (their disks are kept).")
vm_verb("destroy", destroy_all, "Delete the lab VMs and their disks (all of them: also VMs beyond a lowered vm.count).")


@lab_task("hashicorp", collection="host", name="setup")
def host_setup(c, hashicorp=False):
    """Install libvirt, qemu, the box tools and (for its engine) Vagrant; start libvirtd."""
    host.setup(hashicorp, settings().vm.arch, settings().vm.engine)


@lab_task(collection="host", name="teardown")
def host_teardown(c):
    """Stop the kept SSH connections, and the libvirt daemons that host.setup started itself."""
    if kept := release_all():
        say(f"Stopped {kept} kept SSH connection(s).")
    host.teardown()


@lab_task(collection="box", name="build")
def box_build(c):
    """Build vm.distribution's box from its own archive (cached by recipe); add it to Vagrant for its engine."""
    box.build(settings(), for_vagrant=engine_for(settings()).name == "vagrant")


@lab_task("vm", collection="box", name="package", own={"output": "the box file (default: ~/.cache/bpflab/ready/...)"})
def box_package(c, vm="", output=""):
    """Pack a provisioned lab VM as a ready box for every seat of a room (the VM is left halted)."""
    package(select_one(settings(), vm, "box.package", ""), output)


@lab_task("vms")
def status(c, vm=""):
    """Show each lab VM: state, engine, provider, acceleration, box, ready snapshot, SSH endpoint."""
    console.fields(status_rows(select(settings(), vm, everything_by_default=True)))
    warn_of_leftovers(settings())


@lab_task("vm")
def ssh(c, vm=""):
    """Open an interactive shell in a lab VM."""
    select_one(settings(), vm, "lab.ssh", "").interactive_ssh()


@lab_task("vms", own={"output": "where to write it (default: .vagrant/bpflab/inventory.yml)"})
def inventory(c, output="", vm=""):
    """Write the lab VMs as an Ansible inventory, for `ansible-playbook -i FILE ansible/site.yml`."""
    path = write_for_ansible(settings(), vm, output)
    say(f"Wrote {path}. Provision with Ansible: ansible-playbook -i {path} ansible/site.yml")


@lab_task("inventory", "vms")
def setup(c, inventory="", vm=""):
    """Everything a learner needs: bring the lab VMs up, provision them, sync the labs."""
    orchestrate.set_up(settings(), inventory, vm)


@lab_task(*RUN, "args", "plot", name="run", own={"name": "a lab from `invoke lab.list`, or your own program's path"})
def run_lab(c, name, duration="0", trigger="", no_trigger=False, args="", inventory="", vm="", plot=False):
    """Run a lab or your own program (BCC .py or bpftrace .bt) in the VM with live output; saved under runs/."""
    orchestrate.run_and_report(settings(), name, inventory, vm, duration, trigger, no_trigger, args, draw=plot)


@lab_task(*RUN, own={"program": "a bpftrace program, for example 'kprobe:do_nanosleep { @[comm] = count(); }'"})
def trace(c, program, duration="0", trigger="", no_trigger=False, inventory="", vm=""):
    """Run a bpftrace one-liner in the VM like a lab: live output, saved under runs/."""
    orchestrate.run_and_report(settings(), program, inventory, vm, duration, trigger, no_trigger, kind="one-liner")


@lab_task(*HOSTS, "seconds", "names", optional=["names"], iterable=["names"])
def verify(c, names=None, seconds="12", inventory="", vm=""):
    """Run every lab with its trigger and check its expectations: a PASS/FAIL table."""
    orchestrate.verify(settings(), names or [], seconds, inventory=inventory, vm=vm)


@lab_task("template", "exercise", own={"name": "name of your program"})
def new(c, name, template="hello", exercise=""):
    """Start your own program from a lab, or from where one of the book's exercises starts."""
    root = settings().root
    task = exercise and catalog.exercise(catalog.load_exercises(root), exercise)
    program = catalog.new_exercise(root, name, template, catalog.load_catalog(root), task or None).relative_to(root)
    say(f"Created {program} and its .bpf.c. Edit them, then: invoke lab.{'check' if task else 'run'} {program}")


@lab_task(*HOSTS, "exercise", own={"program": "your program (exercises/NAME/NAME.py), or `exercises`: each seat's own"})
def check(c, program, exercise="", inventory="", vm=""):
    """Grade a program for one of the book's chapter 2 exercises: PASS, or FAIL with a hint."""
    orchestrate.check(settings(), program, exercise, inventory, vm)


@lab_task(*HOSTS, "xlated", "jited", "watch", "json")
def inspect(c, inventory="", vm="", xlated="", jited="", watch=False, json=False):
    """While a lab runs: its BPF programs (attached where, run how often) and maps with their entries."""
    orchestrate.inspect(settings(), inventory, vm, xlated, jited, watch, json)


@lab_task(*HOSTS, "probe", name="probe-args")
def probe_args(c, probe, inventory="", vm=""):
    """The arguments of a probe in the VM (bpftrace -lv)."""
    orchestrate.probe_arguments(settings(), probe, inventory, vm)


@lab_task(*HOSTS, "args", own={"name": "a BCC tool: execsnoop, opensnoop, ...", "duration": "stop after N seconds"})
def tool(c, name, duration="0", args="", inventory="", vm=""):
    """Run a tool that BCC ships, in the VM, gathered under runs/ like a lab."""
    orchestrate.run_and_report(settings(), name, inventory, vm, duration, no_trigger=True, args=args, kind="tool")


@lab_task("json", name="list")
def list_labs(c, json=False):
    """The lab catalog: name, kind, probe, summary."""
    console.labs(catalog.load_catalog(settings().root), json)


@lab_task("json", name="runs")
def gathered_runs(c, json=False):
    """The gathered runs, newest first."""
    console.gathered_runs(list_runs(settings().root / "runs"), json)


@lab_task("run", "top")
def plot(c, run="", top=8):
    """Draw a counting lab's counts over time (PNG and SVG in the run's folder)."""
    root, labs = settings().root, catalog.load_catalog(settings().root)
    say(f"Plot: {', '.join(map(str, report.plot_run(run_to_plot(root, run, labs), labs, top)))}")


@lab_task(name="report")
def write_report(c):
    """One HTML file under runs/ for an instructor: newest verify, the runs, the counting labs' plots."""
    say(f"Report: {report.write(settings().root / 'runs', catalog.load_catalog(settings().root))} (opens offline)")


@task(help={"fast": "only the tests that need no VM and no browser", "arm64": "only the arm64 VM's tests (9-16 min)"})
def test(c, fast=False, arm64=False):
    """Run the test suite (real VMs and a browser too, unless --fast).

    Two files at a time in tests/conftest.py's order: a VM test is mostly one emulated vCPU, the
    host's second core takes another file's VM meanwhile."""
    every = ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"]
    selection = ["-m", "not vm and not browser"] if fast else ["-m", "arm64"] if arm64 else every
    if (code := subprocess.run([sys.executable, "-m", "pytest", *selection]).returncode) == 5:
        say("pytest collected no tests.")
    elif code:
        raise Exit(code=code)


ns = Collection(test)
for collection, tasks in COLLECTIONS.items():
    ns.add_collection(Collection(collection, *tasks))
