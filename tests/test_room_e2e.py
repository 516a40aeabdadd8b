"""Ready seats and a room of them, for real: two lab VMs of one lab.yaml (vm.count: 2) from the
ready Debian 12 box built here, on bpflab's own libvirt engine (Vagrant is never called). Ansible
checks the second and installs nothing; the two set up and verify as a fleet (by --vm all and by
an inventory, host keys checked, a host lost mid-way); BCC from source (a stand-in) is built once,
on this host, and installed in both; last, the second VM's life cycle by name (halt and up, a
reset to its ready snapshot), made again as a ready seat whose BCC came from source. (The VM
that Fabric provisions from a plain box, and the learner's loop: test_labs_e2e.py.)"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bpflab import box, config
from bpflab.sync import REMOTE_ROOT
from bpflab.vm import LabVM

from ansible_run import ansible_playbook
from boxes import forget_cached_box
from conftest import copy_project
from fakebcc import stand_in_settings

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """The checkout's lab.yaml with vm.count: 2 on bpflab's own libvirt engine (its ready box: Debian
    12's packages and BCC), both VMs up; nothing provisioned yet. A `vagrant` first on PATH only
    records that it was called: the libvirt engine must never call it."""
    project = copy_project(tmp_path_factory.mktemp("room-project"))
    project.edit_lab_yaml("  count: 1", "  count: 2")
    project.edit_lab_yaml("  engine: auto", "  engine: libvirt")
    no_vagrant = tmp_path_factory.mktemp("no-vagrant")
    project.vagrant_calls = no_vagrant / "calls"
    (no_vagrant / "vagrant").write_text(f'#!/bin/sh\necho "vagrant $*" >> {project.vagrant_calls}\nexit 97\n')
    (no_vagrant / "vagrant").chmod(0o755)
    project.env = {"PATH": f"{no_vagrant}:{os.environ['PATH']}"}
    project.invoke("host.setup")
    up = project.invoke("lab.up")
    assert "(libvirt engine, libvirt," in up.stdout
    yield project
    project.invoke("lab.destroy", check=False)
    for cleanup in project.cleanups:
        cleanup()


@pytest.mark.timeout(1800)  # the ready box is built first
def test_ansible_on_a_ready_seat(room):
    """lab2, checked by `ansible-playbook` (package mode): its first run installs nothing and
    moves no kernel (the seat has Debian 12's current kernel), the checks pass, and a second run
    changes nothing. (Its labs pass `lab.verify` in the fleet tests below.)"""
    booted = room.shell("uname -r", "lab2").strip()
    first = ansible_playbook(room, "lab2")
    assert not {
        "Install the book's packages, bpftrace and the running kernel's headers",
        "Move to the distribution's current kernel, whose headers the sources have",
    } & set(first), first
    assert room.shell("uname -r", "lab2").strip() == booted == room.shell("uname -r", "lab").strip()
    doctor = room.invoke("lab.doctor", "--vm", "lab2").stdout
    assert "missing" not in doctor and "import bcc" in doctor
    assert ansible_playbook(room, "lab2") == []


def write_room(folder, project):
    """The lab VMs as one Ansible inventory of seats, with their host keys recorded and checked."""
    project.invoke("lab.inventory", "--output", str(folder / "vms.yml"))
    machines = yaml.safe_load((folder / "vms.yml").read_text())["all"]["hosts"]
    hosts, known = {}, []
    for seat, machine in (("seat-a", "lab"), ("seat-b", "lab2")):
        host = machines[machine]
        host["ansible_ssh_common_args"] = f"-o UserKnownHostsFile={folder / 'known_hosts'}"
        hosts[seat] = host
        known.append(
            subprocess.run(
                ["ssh-keyscan", "-p", str(host["ansible_port"]), host["ansible_host"]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    (folder / "known_hosts").write_text("".join(known))
    (folder / "room.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return folder


@pytest.fixture(scope="module")
def inventory(room, tmp_path_factory):
    return write_room(tmp_path_factory.mktemp("room"), room)


def test_all_vms_of_the_checkout_set_up_and_verify_as_a_fleet(room):
    """`lab.setup` covers every VM of lab.yaml at once (Fabric finds nothing to do on either ready
    seat, the one Ansible checked too), `lab.status` shows both, and `lab.verify --vm all` makes a
    host x lab table."""
    setup = room.invoke("lab.setup")
    assert "lab: ready (nothing to provision)" in setup.stdout
    assert "lab2: ready (nothing to provision)" in setup.stdout and "All 2 hosts are ready" in setup.stdout
    status = room.invoke("lab.status").stdout
    assert re.search(r"machine\s+lab\n", status) and re.search(r"machine\s+lab2\n", status)
    assert status.count("running") == 2
    verify = room.invoke("lab.verify", "--vm", "all", "--names", "hello", "--names", "hello-tail", "--seconds", "5")
    assert "All 2 hosts passed every lab" in verify.stdout
    matrix = [line for line in verify.stdout.splitlines() if line.count("PASS") == 2]
    assert len(matrix) == 2, verify.stdout
    wrong = room.invoke("lab.run", "hello", "--vm", "lab3", check=False)
    assert wrong.returncode == 1 and "defines the lab VMs lab, lab2 (vm.count: 2)" in wrong.stdout


def test_fleet_run_streams_and_gathers_per_host(room, inventory):
    result = room.invoke("lab.run", "hello", "--duration", "4", "--inventory", str(inventory / "room.yml"))
    assert re.search(r"seat-a\s*\| .*Hello World!", result.stdout)
    assert re.search(r"seat-b\s*\| .*Hello World!", result.stdout)
    folder = sorted((room.path / "runs").glob("*-hello-fleet"))[-1]
    for seat in ("seat-a", "seat-b"):
        record = json.loads((folder / seat / "run.json").read_text())
        assert record["vm"] == seat and record["stopped"] == "duration" and record["lines"] >= 1
        assert "Hello World!" in (folder / seat / "output.log").read_text()


def test_fleet_refuses_a_changed_or_unknown_host_key(room, inventory, tmp_path):
    """A host whose key differs from known_hosts, or is not in it, is an error naming it; the other still runs."""
    text = (inventory / "room.yml").read_text()
    seat_b = yaml.safe_load(text)["all"]["hosts"]["seat-b"]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    impostor = (tmp_path / "other.pub").read_text().split()[:2]
    lines = (inventory / "known_hosts").read_text().splitlines()
    seat_b_address = (
        f"[{seat_b['ansible_host']}]:{seat_b['ansible_port']}"
        if seat_b["ansible_port"] != 22
        else seat_b["ansible_host"]
    )
    kept = [line for line in lines if not line.startswith(seat_b_address + " ")]
    (tmp_path / "known_hosts").write_text("\n".join(kept + [f"{seat_b_address} {' '.join(impostor)}"]) + "\n")
    (tmp_path / "room.yml").write_text(text.replace(str(inventory / "known_hosts"), str(tmp_path / "known_hosts")))
    result = room.invoke(
        "lab.verify", "--inventory", str(tmp_path / "room.yml"), "--names", "hello", "--seconds", "4", check=False
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert "seat-b" in result.stdout and "host key is not the one recorded" in result.stdout
    assert "seat-a:   PASS" in result.stdout

    # A host not recorded at all: refused with the line that records it.
    (tmp_path / "known_hosts").write_text("\n".join(kept) + "\n")
    unknown = room.invoke("lab.run", "hello", "--duration", "3", "--inventory", str(tmp_path / "room.yml"), check=False)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stdout
    assert (
        f"ssh-keyscan -p {seat_b['ansible_port']} {seat_b['ansible_host']} >> {tmp_path / 'known_hosts'}"
        in " ".join(unknown.stdout.split())
    )
    assert re.search(r"seat-a\s*\| .*Hello World!", unknown.stdout)


def test_fleet_goes_on_when_a_host_goes_down_mid_way(room, inventory):
    """seat-b is switched off during its first lab: it is reported, seat-a completes."""
    command = [
        sys.executable,
        "-m",
        "invoke",
        "lab.verify",
        "--inventory",
        str(inventory / "room.yml"),
        "--names",
        "hello",
        "--names",
        "hello-map",
        "--seconds",
        "5",
    ]
    process = subprocess.Popen(
        command,
        cwd=room.path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(room.path), **room.env},
    )
    domain = LabVM(config.load(room.path / "lab.yaml"), "lab2").domain
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("seat-b: hello") and len([o for o in output if o.startswith("seat-b: hello")]) == 1:
            time.sleep(3)  # mid-way through its first lab
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", domain], check=True, capture_output=True)
    process.wait(timeout=900)
    text = "".join(output)
    print(text)
    assert process.returncode == 1 and "Traceback" not in text
    assert text.count("seat-a:   PASS") == 2
    assert re.search(r"stopped:\s+connection-lost", text) and "seat-b stopped answering SSH; 1 lab(s) not run" in text


# BCC from source (a stand-in), built once on this host, installed everywhere. --------


@pytest.fixture(scope="module")
def fake_bcc(room, tmp_path_factory):
    use = stand_in_settings(room.path / "lab.yaml", tmp_path_factory.mktemp("fake-bcc"))
    yield use
    use.restore()


def test_a_room_builds_bcc_once_on_this_host_and_installs_it_everywhere(room, fake_bcc):
    """`bcc.install: source` across the checkout's VMs under software emulation (`build_on: auto`):
    BCC (the stand-in's v1, from a repository on the host) is built once, on this host in a Debian
    12 root; both VMs install that build in place of the distribution's and get none of the build
    tools; the export is the same as a VM's, and provisioning again changes nothing. lab2 was
    switched off above: `lab.setup` starts it."""
    fake_bcc("source", "v1", build_on="auto")
    result = room.invoke("lab.setup").stdout
    assert "BCC: source, built on the host (the VM is emulated; the host builds at native speed)" in result
    assert re.findall(r"(\S+): ✓ Building BCC v1 on this host for debian-12", result) == ["lab"], result
    for machine in ("lab", "lab2"):
        assert f"{machine}: ✓ Removing the distribution's BCC" in result
        assert f"{machine}: ✓ Installing BCC v1 from bcc-v1-debian-12-amd64.tar.gz" in result
    assert "Building BCC v1 from" not in result and "All 2 hosts are ready" in result
    metadata = json.loads((fake_bcc.artifacts / "bcc-v1-debian-12-amd64.json").read_text())
    assert metadata["built_on"] == "host" and "zlib1g" in metadata["runtime_packages"]
    assert (room.path / "logs" / "lab" / "bcc-build.log").exists()
    for machine, via in (("lab", "host"), ("lab2", "artifact")):  # lab2 takes lab's export
        stamp = json.loads(room.shell("cat /var/lib/bpflab/bcc.json", machine))
        assert stamp["built"] == metadata["built"] and stamp["via"] == via
        assert room.shell("command -v cmake || true", machine).strip() == ""
    assert "BCC fake-v1" in room.invoke("lab.doctor", "--vm", "lab2").stdout
    for machine in ("lab", "lab2"):
        assert "nothing to do" in room.invoke("lab.provision", "--vm", machine).stdout


def test_artifact_mode_refuses_a_version_it_does_not_have(room, fake_bcc):
    """`bcc.install: artifact` on lab2: v1 is there already; v9 was never exported."""
    fake_bcc("artifact", "v1")
    assert "nothing to do" in room.invoke("lab.provision", "--vm", "lab2").stdout
    fake_bcc("artifact", "v9")
    refused = room.invoke("lab.provision", "--vm", "lab2", check=False)
    assert refused.returncode == 1 and "has no BCC v9 built for debian-12 amd64" in refused.stdout
    assert "bcc-v1-debian-12-amd64" in refused.stdout and "Traceback" not in refused.stdout


# The second VM's life cycle, addressed by name; then fewer VMs in lab.yaml. --------

VIRSH = ["virsh", "-c", "qemu:///system"]


def domain_state(domain):
    result = subprocess.run([*VIRSH, "domstate", domain], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def volume_exists(name):
    return subprocess.run([*VIRSH, "vol-info", "--pool", "default", name], capture_output=True).returncode == 0


def qemu_processes(domain):
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"guest={domain}".encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


@pytest.mark.timeout(1200)
def test_vm_life_cycle_by_name_then_a_lowered_count(room, inventory, fake_bcc):
    """lab2 alone (--vm lab2) while lab runs on: halted and started again; broken by a learner and
    put back to its ready snapshot, where a lab runs; destroyed, then made again as a ready seat
    whose BCC comes from source (the stand-in's v1, built on this host above): nothing to
    provision; then vm.count lowered to 1: lab.status warns of lab2, and lab.destroy removes lab
    and that leftover too, leaving nothing of either."""
    settings_file = room.path / "lab.yaml"
    settings = config.load(settings_file)
    vm, first = LabVM(settings, "lab2"), LabVM(settings, "lab")
    timings = {}

    def timed(name, *args):
        started = time.monotonic()
        result = room.invoke(*args)
        timings[name] = round(time.monotonic() - started, 1)
        return result

    assert domain_state(vm.domain) == "running"
    kernel = room.shell("uname -r", "lab2").strip()
    timed("lab.halt", "lab.halt", "--vm", "lab2")
    assert domain_state(vm.domain) == "shut off" and domain_state(first.domain) == "running"
    assert not (vm.state_dir / "ssh-config").exists()
    timed("lab.up (halted)", "lab.up", "--vm", "lab2")
    assert room.shell("uname -r", "lab2").strip() == kernel

    room.shell(f"rm -rf {REMOTE_ROOT} && touch /etc/broken-by-a-learner", "lab2")
    refused = room.invoke("lab.reset", "--inventory", str(inventory / "room.yml"), check=False)
    assert refused.returncode == 1 and "not VMs that bpflab runs" in refused.stdout
    assert "Traceback" not in refused.stdout
    timed("lab.reset", "lab.reset", "--vm", "lab2")
    back = room.shell(f"test -e /etc/broken-by-a-learner && echo broken; test -d {REMOTE_ROOT} && echo labs", "lab2")
    assert back.split() == ["labs"]
    program = 'tracepoint:syscalls:sys_enter_execve { printf("exec %s\\n", str(args->filename)); }'
    traced = room.invoke("lab.trace", program, "--vm", "lab2", "--duration", "3", "--trigger", "/bin/true")
    assert "exec /bin/true" in traced.stdout  # (its BCC is the stand-in's: a bpftrace program)

    timed("lab.destroy --vm lab2", "lab.destroy", "--vm", "lab2")
    assert domain_state(vm.domain) is None and domain_state(first.domain) == "running"
    assert not any(volume_exists(f"{vm.domain}{part}") for part in (".img", "-vmlinuz", "-initrd"))
    fake_bcc("source", "v1", build_on="auto")
    timed("lab.up (a new ready seat)", "lab.up", "--vm", "lab2")
    seat_recipe = box.current_recipe(config.load(settings_file))
    room.cleanups.append(lambda: forget_cached_box(seat_recipe))  # its recipe names a folder of this run
    assert room.shell("uname -r", "lab2").strip() == kernel  # Debian 12's current kernel, as before
    provisioned = room.invoke("lab.provision", "--vm", "lab2").stdout
    assert "BCC: source" in provisioned and "nothing to do" in provisioned and "Installing" not in provisioned
    stamp = json.loads(room.shell("cat /var/lib/bpflab/bcc.json", "lab2"))
    assert stamp["built"]["version"] == "v1" and stamp["via"] == "host"
    assert "BCC fake-v1" in room.invoke("lab.doctor", "--vm", "lab2").stdout

    text = settings_file.read_text()
    settings_file.write_text(text.replace("  count: 2", "  count: 1", 1))
    try:
        status = room.invoke("lab.status").stdout
        assert f"libvirt still has {vm.domain}" in " ".join(status.split()) and not re.search(r"machine\s+lab2", status)
        timed("lab.destroy (lab and the leftover lab2)", "lab.destroy")
    finally:
        settings_file.write_text(text)
    for domain in (vm.domain, first.domain):
        assert domain_state(domain) is None and not volume_exists(f"{domain}.img") and qemu_processes(domain) == []
    assert not room.vagrant_calls.exists(), room.vagrant_calls.read_text()
    print("timings (s):", timings)
