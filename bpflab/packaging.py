"""A ready box: one provisioned lab VM packed as a Vagrant box for every seat of a room.

An instructor provisions and checks one VM, then packs it; a seat's VM made from
that box is ready once it boots, and `lab.setup` finds nothing to do. The box
says what it was provisioned from (bpflab.json in the box, /etc/bpflab/box.json in
the VM), so provisioning on a seat notices a lab.yaml that changed since.
Like `vagrant package`, the box carries the VM's SSH key (the source VM keeps
working) and the VM is left halted.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from . import libvirt, provision
from .box import BOX_VAGRANTFILE
from .commands import remote_run, run, script
from .config import Config, digest_of
from .console import done, say, step
from .domain import KEY as ENGINE_KEY
from .errors import LabError
from .host import cache_dir, require_tool
from .hosts import Host
from .vm import LabVM

# The box's Vagrantfile adds the key that the source VM accepts, as `vagrant package` does.
KEY_IN_BOX = "vagrant_private_key"
SSH_KEY_LINE = '  config.ssh.private_key_path = File.expand_path("../vagrant_private_key", __FILE__)\n'
SHUTDOWN_SECONDS = 180


def description(config: Config, facts: provision.Facts, source_box: str) -> dict:
    """What the box was made from; its id names the box in Vagrant."""
    made = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = {
        "distribution": facts.distribution,
        "arch": facts.arch,
        "kernel": facts.kernel,
        "made_from_box": source_box,
        "provision": config.provision_digest,
        "packaged": made,
    }
    return {"id": digest_of(fields), **fields}


def box_vagrantfile(with_key: bool) -> str:
    if not with_key:
        return BOX_VAGRANTFILE
    opening = 'Vagrant.configure("2") do |config|\n'
    return BOX_VAGRANTFILE.replace(opening, opening + SSH_KEY_LINE, 1)


def disk_of(domain: str) -> Path:
    """The VM's disk image, as libvirt has it."""
    listing = libvirt.query("domblklist", domain, "--details")
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[:2] == ["file", "disk"]:
            return Path(fields[3])
    raise LabError(
        f"libvirt shows no disk for {domain} ({listing.stderr.strip() or 'empty list'}). "
        "`invoke lab.status` tells the VM's state."
    )


def wait_until_off(domain: str) -> None:
    for _ in range(SHUTDOWN_SECONDS):
        if libvirt.query("domstate", domain).stdout.strip() == "shut off":
            return
        time.sleep(1)
    raise LabError(
        f"{domain} did not power off within {SHUTDOWN_SECONDS} s after packaging was prepared. "
        "Run `invoke lab.halt`, then `invoke box.package` again."
    )


def package(vm: LabVM, output: str = "") -> Path:
    """Pack a provisioned, healthy VM as a ready box; return the box file's path."""
    status = vm.require_running()
    if status.provider != "libvirt":
        raise LabError(
            f"box.package packs libvirt VMs; {vm.title} runs on {status.provider}. "
            "VirtualBox has `vagrant package` for that."
        )
    require_tool("qemu-img")
    log = vm.logs / "package.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with Host.of_vm(vm).connect() as connection:
        facts = provision.gather(connection, [])
        provision.require_healthy(provision.doctor(connection))
        about = description(vm.config, facts, vm.remembered("box") or "-")
        with step(f"Cleaning {vm.title} for packaging (apt lists, logs, host keys, machine-id), then powering off"):
            remote_run(
                connection,
                script("box-clean.sh", DESCRIPTION=json.dumps(about, sort_keys=True)),
                sudo=True,
                log=log,
                what="cleaning the VM for packaging",
                fix="Run `invoke box.package` again on a running VM.",
            )
    vm.state.forget("ssh-config")
    wait_until_off(vm.domain)
    target = (
        Path(output).expanduser()
        if output
        else cache_dir() / "ready" / f"{about['distribution']}-ready-{about['id']}.box"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    # The key that logs in to it: Vagrant's for its VM, the libvirt engine's for one of its own.
    keys = (vm.root / ".vagrant" / "machines" / vm.machine / "libvirt" / "private_key", vm.state_dir / ENGINE_KEY)
    key = next((path for path in keys if path.exists()), keys[0])
    workdir = Path(tempfile.mkdtemp(prefix="package-", dir=target.parent))
    try:
        with step(f"Packing the disk of {vm.title} as a box (qemu-img convert)") as current:
            run(
                ["qemu-img", "convert", "-O", "qcow2", str(disk_of(vm.domain)), str(workdir / "box.img")],
                current=current,
                log=log,
            )
            size = json.loads(run(["qemu-img", "info", "--output=json", str(workdir / "box.img")]).stdout)
            (workdir / "metadata.json").write_text(
                json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": size["virtual-size"] // 1024**3})
            )
            (workdir / "Vagrantfile").write_text(box_vagrantfile(key.exists()))
            (workdir / "bpflab.json").write_text(json.dumps(about, indent=2, sort_keys=True) + "\n")
            names = ["bpflab.json", "metadata.json", "Vagrantfile", "box.img"]
            if key.exists():
                shutil.copy2(key, workdir / KEY_IN_BOX)
                names.append(KEY_IN_BOX)
            partial = target.with_name(target.name + ".partial")
            with tarfile.open(partial, "w") as packed:
                for name in names:  # bpflab.json first: reading what a box is never reads its disk
                    packed.add(workdir / name, arcname=name)
            partial.replace(target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    done(
        f"Ready box: {target} ({target.stat().st_size // 1024**2} MiB; {about['distribution']}, "
        f"kernel {about['kernel']})"
    )
    say(
        f"On each seat: set `vm.box: {target}` in lab.yaml, then `invoke lab.setup`. "
        f"{vm.subject} is halted; `invoke lab.up` starts it again."
    )
    return target
