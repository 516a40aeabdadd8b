"""libvirt on the host, through virsh: the one place that builds virsh calls.

virsh sees whether libvirt answers, keeps its storage pool and the management network (named
for vagrant-libvirt, which made it first), makes the libvirt engine's volumes, takes and reverts
snapshots (of either engine's domains), and clears leftovers that an engine no longer knows about.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .commands import run
from .console import say

URI = "qemu:///system"
POOL = "default"  # vagrant-libvirt's and the libvirt engine's
BOOT_VOLUMES = ("vmlinuz", "initrd")  # what a domain of the libvirt engine boots, named for the domain


def virsh(*args: str) -> list[str]:
    return ["virsh", "-c", URI, *args]


def query(*args: str) -> subprocess.CompletedProcess:
    """A virsh call whose failure is an answer (no such domain, pool, ...), not an error."""
    return subprocess.run(virsh(*args), capture_output=True, text=True, timeout=60)


def answers() -> bool:
    return shutil.which("virsh") is not None and query("version").returncode == 0


def domains() -> list[str]:
    """Every domain libvirt has, running or not."""
    return query("list", "--all", "--name").stdout.split()


def remove_domain(name: str, stale: bool = True) -> None:
    """Remove a domain with its snapshots and storage, and the volumes named for it (its disk, the
    kernel and initrd it boots), where they exist; `stale`: left from an earlier run, and said so."""
    why = " (left from an earlier run)" if stale else ""
    state = query("domstate", name)
    if state.returncode == 0:
        if stale:
            say(f"Removing the stale libvirt domain {name} (left from an earlier run; Vagrant no longer knows it)")
        if state.stdout.strip() != "shut off":
            run(virsh("destroy", name), check=False)
        run(virsh("undefine", name, "--remove-all-storage", "--snapshots-metadata"))
    for volume in (f"{name}.img", *(f"{name}-{part}" for part in BOOT_VOLUMES)):
        if query("vol-info", "--pool", POOL, volume).returncode == 0:
            if stale and volume.endswith(".img"):
                say(f"Removing the stale libvirt volume {volume}{why}")
            run(virsh("vol-delete", "--pool", POOL, volume))


def volume_path(volume: str) -> str | None:
    found = query("vol-path", "--pool", POOL, volume)
    return found.stdout.strip() if found.returncode == 0 else None


def upload_volume(volume: str, source: Path, fmt: str = "raw", current=None) -> str:
    """A volume of the pool with `source`'s bytes (made anew); its path. Through libvirt, as
    vagrant-libvirt does, so a user without access to the pool's folder can make it."""
    if volume_path(volume):
        run(virsh("vol-delete", "--pool", POOL, volume))
    run(virsh("vol-create-as", POOL, volume, str(source.stat().st_size), "--format", fmt), current=current)
    run(virsh("vol-upload", "--pool", POOL, volume, str(source)), current=current)
    return volume_path(volume) or ""


def overlay_volume(volume: str, backing: str, size_gb: int) -> str:
    """A qcow2 volume that writes over the backing volume's image and leaves it unchanged; its path."""
    run(
        virsh(
            "vol-create-as", POOL, volume, f"{size_gb}G", "--format", "qcow2",
            "--backing-vol", backing, "--backing-vol-format", "qcow2",
        )
    )  # fmt: skip
    return volume_path(volume) or ""


def snapshots(domain: str) -> list[str]:
    return query("snapshot-list", domain, "--name").stdout.split()


def take_snapshot(domain: str, name: str, description: str, current=None) -> None:
    """A snapshot of the domain's disk and, while it runs, its memory (replacing one of that name)."""
    if name in snapshots(domain):
        run(virsh("snapshot-delete", domain, name), current=current)
    run(virsh("snapshot-create-as", domain, name, "--description", description, "--atomic"), current=current)


def delete_snapshots(domain: str, current=None) -> None:
    for name in snapshots(domain):
        run(virsh("snapshot-delete", domain, name), current=current)


def revert_snapshot(domain: str, name: str, current=None) -> None:
    run(virsh("snapshot-revert", domain, name, "--running"), current=current)


def ensure_storage_pool() -> None:
    """vagrant-libvirt keeps box images and disks in the pool named `default`."""
    info = query("pool-info", POOL)
    if info.returncode == 0:
        if "running" not in info.stdout:
            run(virsh("pool-start", POOL))
        return
    run(virsh("pool-define-as", POOL, "dir", "--target", "/var/lib/libvirt/images"))
    run(virsh("pool-build", POOL))
    run(virsh("pool-start", POOL))
    run(virsh("pool-autostart", POOL))


# vagrant-libvirt's management network, as it would make it (its defaults): made here, once, so
# that two `vagrant up` at once (two checkouts, a room's VMs) never race to create it.
MANAGEMENT_NETWORK = "vagrant-libvirt"
MANAGEMENT_NETWORK_XML = f"""<network>
  <name>{MANAGEMENT_NETWORK}</name>
  <forward mode='nat'/>
  <ip address='192.168.121.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.121.1' end='192.168.121.254'/></dhcp>
  </ip>
</network>
"""


def ensure_management_network() -> None:
    def active() -> bool:
        return "Active:         yes" in query("net-info", MANAGEMENT_NETWORK).stdout

    if query("net-info", MANAGEMENT_NETWORK).returncode != 0:
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as definition:
            definition.write(MANAGEMENT_NETWORK_XML)
            definition.flush()
            query("net-define", definition.name)  # another `host.setup` may have defined it meanwhile
    if not active() and query("net-start", MANAGEMENT_NETWORK).returncode != 0 and not active():
        run(virsh("net-start", MANAGEMENT_NETWORK))  # neither it nor another process started it: its error, shown


def stop_networks() -> None:
    """Stop libvirt's active networks (their dnsmasq and iptables rules) before its daemon."""
    for network in query("net-list", "--name").stdout.split():
        query("net-destroy", network)
