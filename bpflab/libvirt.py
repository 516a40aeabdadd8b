"""libvirt on the host, through virsh: the one place that builds virsh calls.

Vagrant drives the VMs; virsh is used to see whether libvirt answers, to keep its
storage pool and Vagrant's management network, and to find and clear leftovers that
Vagrant no longer knows about.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

from .commands import run
from .console import say

URI = "qemu:///system"


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


def remove_domain(name: str) -> None:
    """Remove a domain and its storage, and a disk volume named for it, where they exist."""
    state = query("domstate", name)
    if state.returncode == 0:
        say(f"Removing the stale libvirt domain {name} (left from an earlier run; Vagrant no longer knows it)")
        if state.stdout.strip() != "shut off":
            run(virsh("destroy", name), check=False)
        run(virsh("undefine", name, "--remove-all-storage"))
    volume = f"{name}.img"
    if query("vol-info", "--pool", "default", volume).returncode == 0:
        say(f"Removing the stale libvirt volume {volume} (left from an earlier run)")
        run(virsh("vol-delete", "--pool", "default", volume))


def ensure_storage_pool() -> None:
    """vagrant-libvirt keeps box images and disks in the pool named `default`."""
    info = query("pool-info", "default")
    if info.returncode == 0:
        if "running" not in info.stdout:
            run(virsh("pool-start", "default"))
        return
    run(virsh("pool-define-as", "default", "dir", "--target", "/var/lib/libvirt/images"))
    run(virsh("pool-build", "default"))
    run(virsh("pool-start", "default"))
    run(virsh("pool-autostart", "default"))


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
