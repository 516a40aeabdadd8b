"""Provisioning times side by side, on two fresh VMs of its own (issues: provisioning, fleets).

    .venv/bin/python benchmarks/provision_times.py

Copies the project to two temporary folders (so the VMs are its own, never your lab
VM) and measures in one run, with bcc.install: package:
- cold `lab.provision` of one VM, then of the other: one after the other;
- the same two VMs re-created and provisioned at once by `lab.setup --inventory`;
- no-op re-provision: `lab.provision` against `ansible-playbook ansible/site.yml`, for
  one VM and for both (`lab.setup --inventory` against ansible-playbook on the room);
- BCC from source against the same BCC from an artifact. BCC's own source is not
  reachable here, so both use the stand-in from tests/fakebcc.py (a tiny CMake
  project): the figures show the fixed costs of each path, not a real BCC build.
Prints a table, writes benchmarks/results/provision_times.json, destroys both VMs.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bpflab import config  # noqa: E402
from bpflab.commands import remote_run  # noqa: E402
from bpflab.hosts import Host  # noqa: E402
from bpflab.vm import LabVM  # noqa: E402

from benchkit import copy_project, destroy_vms, report  # noqa: E402
from fakebcc import fake_repository_tarball, use_fake_bcc  # noqa: E402


def timed(command, cwd, env=None):
    started = time.monotonic()
    result = subprocess.run(
        command,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    if result.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stdout}")
    return round(time.monotonic() - started, 1), result.stdout


def invoke(project, *args):
    return timed([sys.executable, "-m", "invoke", *args], project, {"PYTHONPATH": str(project)})


def ansible_playbook(project, inventory):
    seconds, output = timed(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), "ansible/site.yml"],
        project,
        {"ANSIBLE_NOCOLOR": "1"},
    )
    return seconds, sum(int(count) for count in re.findall(r"changed=(\d+)", output))


def room_inventory(projects, path):
    hosts = {}
    for index, project in enumerate(projects, 1):
        invoke(project, "lab.inventory")
        inventory = yaml.safe_load((project / ".vagrant" / "bpflab" / "inventory.yml").read_text())
        hosts[f"seat{index}"] = next(iter(inventory["all"]["hosts"].values()))
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return path


def main():
    work = Path(tempfile.mkdtemp(prefix="bpflab-bench-"))
    projects = [copy_project(work / "seat1"), copy_project(work / "seat2")]
    for project in projects:  # what is timed is provisioning itself: a plain box, whose VMs need it all
        path = project / "lab.yaml"
        path.write_text(path.read_text().replace("  ready: true", "  ready: false", 1))
    first = projects[0]
    settings = first / "lab.yaml"
    original = settings.read_text()
    figures = {}
    try:
        invoke(first, "host.setup")
        figures["lab.up, create"] = invoke(first, "lab.up")[0]
        invoke(projects[1], "lab.up")
        one = invoke(first, "lab.provision")[0]
        other = invoke(projects[1], "lab.provision")[0]
        figures["lab.provision, cold, one VM"] = one
        figures["two VMs cold, one after the other (lab.provision twice)"] = round(one + other, 1)
        figures["lab.provision, no-op, one VM"] = invoke(first, "lab.provision")[0]
        invoke(first, "lab.inventory")
        seconds, changed = ansible_playbook(first, ".vagrant/bpflab/inventory.yml")
        figures["ansible-playbook, no-op, one VM"] = seconds
        figures["ansible-playbook, no-op, one VM: changed tasks"] = changed

        remote = Host.of_vm(LabVM(config.load(settings))).connect()
        remote.put(str(fake_repository_tarball(work)), "/tmp/repo.tar.gz")
        remote_run(remote, "mkdir -p /srv && tar -xzf /tmp/repo.tar.gz -C /srv", sudo=True)
        use_fake_bcc(settings, original, "source", "v1", work / "artifacts")
        figures["stand-in BCC: source build + export"] = invoke(first, "lab.provision")[0]
        # Forget the build in the VM, then install the same version from the artifact.
        remote_run(remote, "rm -f /var/lib/bpflab/bcc.json", sudo=True)
        use_fake_bcc(settings, original, "artifact", "v1", work / "artifacts")
        seconds, output = invoke(first, "lab.provision")
        assert "Installing BCC v1 from" in output, output
        figures["stand-in BCC: artifact install"] = seconds
        settings.write_text(original)

        for project in projects:
            invoke(project, "lab.destroy")
            invoke(project, "lab.up")
        room = room_inventory(projects, work / "room.yml")
        figures["two VMs cold, at once (lab.setup --inventory)"] = invoke(first, "lab.setup", "--inventory", str(room))[
            0
        ]
        figures["lab.setup --inventory, no-op, two VMs"] = invoke(first, "lab.setup", "--inventory", str(room))[0]
        seconds, changed = ansible_playbook(first, room)
        figures["ansible-playbook, no-op, two VMs"] = seconds
        figures["ansible-playbook, no-op, two VMs: changed tasks"] = changed
    finally:
        settings.write_text(original)
        for project in projects:
            destroy_vms(project)
        shutil.rmtree(work, ignore_errors=True)
    report(figures, "provision_times")


if __name__ == "__main__":
    main()
