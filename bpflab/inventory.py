"""Which hosts a command works on: this checkout's lab VMs (--vm) or a room's (--inventory).
Inventories are Ansible's YAML format, so one file describes a room for `ansible-playbook` and
for bpflab; they are read and written here."""

from __future__ import annotations

import getpass
import shlex
from pathlib import Path

import yaml

from .config import Config, load_yaml
from .errors import LabError
from .hosts import Host
from .vagrant import Endpoint
from .vm import select

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts").expanduser()
# What an inventory says for a host whose key is not checked (a local Vagrant VM).
UNCHECKED_HOST_KEY = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
# Ansible's SSH (a ControlPersist master) must notice a machine that went away, as in a reboot:
# otherwise its reboot module can wait forever on a dead connection (ansible/ansible#84573).
KEEPALIVE = "-o ServerAliveInterval=5 -o ServerAliveCountMax=6"


def choose(config: Config, inventory: str, choice: str, everything_by_default: bool = False) -> list[Host]:
    """The hosts of --inventory, or this checkout's lab VMs that --vm names."""
    if inventory and choice:
        raise LabError("Give --inventory (hosts of a room) or --vm (this checkout's lab VMs), not both.")
    if inventory:
        return read_inventory(inventory)
    return [Host.of_vm(vm) for vm in select(config, choice, everything_by_default)]


def write_for_ansible(config: Config, vm: str, output: str) -> Path:
    """lab.inventory: the lab VMs that --vm names (all by default) as an inventory file."""
    return save_inventory(
        choose(config, "", vm, everything_by_default=True),
        Path(output) if output else config.root / ".vagrant" / "bpflab" / "inventory.yml",
    )


def save_inventory(hosts: list[Host], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(write_inventory(hosts), sort_keys=False))
    return path


def write_inventory(hosts: list[Host]) -> dict:
    """Hosts as an Ansible YAML inventory: the endpoints bpflab uses, for `ansible-playbook -i`."""
    entries = {}
    for host in hosts:
        endpoint = host.endpoint
        entries[host.name] = {
            "ansible_host": endpoint.host,
            "ansible_port": endpoint.port,
            "ansible_user": endpoint.user,
            "ansible_ssh_private_key_file": endpoint.identity,
        }
        checks = UNCHECKED_HOST_KEY if host.known_hosts is None else f"-o UserKnownHostsFile={host.known_hosts}"
        entries[host.name]["ansible_ssh_common_args"] = f"{checks} {KEEPALIVE}"
    return {"all": {"hosts": entries}}


def ssh_options(arguments: str) -> dict[str, str]:
    """`-o Key=Value` pairs of ansible_ssh_common_args / ansible_ssh_extra_args, keys lowercased."""
    words, options = shlex.split(arguments), {}
    for index, word in enumerate(words):
        if word == "-o":
            value = words[index + 1] if index + 1 < len(words) else ""
        else:
            value = word[2:] if word.startswith("-o") else ""
        if "=" in value:
            key, _, setting = value.partition("=")
            options[key.strip().lower()] = setting.strip()
    return options


def host_variables(data: dict) -> dict[str, dict]:
    """Every host with its variables: group vars, then child groups', then the host's own."""
    hosts: dict[str, dict] = {}

    def walk(group, inherited):
        group = group or {}
        variables = {**inherited, **(group.get("vars") or {})}
        for name, own in (group.get("hosts") or {}).items():
            hosts[str(name)] = {**hosts.get(str(name), {}), **variables, **(own or {})}
        for child in (group.get("children") or {}).values():
            walk(child, variables)

    for group in data.values():
        walk(group, {})
    return hosts


def read_inventory(path: Path | str) -> list[Host]:
    """The hosts of an Ansible YAML inventory, or a message naming the file and the problem."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except OSError as error:
        raise LabError(
            f"Cannot read the inventory {path}: {error.strerror}. Give the path of an Ansible "
            "YAML inventory (hosts with ansible_host, ansible_port, ansible_user)."
        ) from None
    except yaml.YAMLError as error:
        raise LabError(f"The inventory {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict) or not all(isinstance(group, (dict, type(None))) for group in data.values()):
        raise LabError(
            f"The inventory {path} is not in Ansible's YAML format: expected groups such as "
            "`all: {hosts: {NAME: {ansible_host: ..., ansible_port: ...}}}`."
        )
    hosts = [inventory_host(name, variables, path) for name, variables in host_variables(data).items()]
    if not hosts:
        raise LabError(f"The inventory {path} lists no hosts.")
    return hosts


def inventory_host(name: str, variables: dict, path: Path) -> Host:
    """One inventory host; a relative key path starts at the inventory's folder."""
    port = variables.get("ansible_port", 22)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise LabError(f"{path}: host {name}: ansible_port: expected a port number, got {port!r}.")
    options = ssh_options(
        f"{variables.get('ansible_ssh_common_args', '')} {variables.get('ansible_ssh_extra_args', '')}"
    )
    identity = variables.get("ansible_ssh_private_key_file")
    checked = options.get("stricthostkeychecking", "yes").lower() != "no"
    known_hosts = options.get("userknownhostsfile")
    endpoint = Endpoint(
        str(variables.get("ansible_host", name)),
        port,
        str(variables.get("ansible_user", getpass.getuser())),
        str(path.parent / Path(identity).expanduser()) if identity else None,
    )
    return Host(
        name,
        endpoint,
        (Path(known_hosts).expanduser() if known_hosts else DEFAULT_KNOWN_HOSTS) if checked else None,
        f"the host {name}",
    )
