"""A room of lab hosts: the stages above, on every host of an Ansible inventory, or on
every lab VM of this checkout, at once.

The inventory is Ansible's YAML format, so one file describes the room for
`ansible-playbook` and for bpflab. Fleet hosts are real machines: their SSH host
keys are checked against known_hosts (a local Vagrant VM's are not). Each host
works in its own thread with one progress line; a host that is down or fails is
named in the summary and never stops the others.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import paramiko
import yaml
from fabric import Connection
from rich.table import Table

from . import provision, run, sync
from .config import Config
from .connection import CONNECT_TIMEOUT, UNREACHABLE, ansible_inventory
from .console import Board, escape, for_host, say
from .errors import LabError
from .vm import LabVM

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts").expanduser()


@dataclass(frozen=True)
class Host:
    """One SSH endpoint of the room, as the inventory describes it."""
    name: str
    address: str
    port: int
    user: str
    identity: str | None
    check_host_key: bool
    known_hosts: Path


def ssh_options(arguments: str) -> dict[str, str]:
    """`-o Key=Value` pairs of ansible_ssh_common_args / ansible_ssh_extra_args, keys lowercased."""
    words, options = shlex.split(arguments), {}
    for index, word in enumerate(words):
        value = words[index + 1] if word == "-o" and index + 1 < len(words) else word[2:] if word.startswith("-o") else ""
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


def load_inventory(path: Path | str) -> list[Host]:
    """The hosts of an Ansible YAML inventory, or a message naming the file and the problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise LabError(f"Cannot read the inventory {path}: {error.strerror}. Give the path of an Ansible "
                       "YAML inventory (hosts with ansible_host, ansible_port, ansible_user).") from None
    except yaml.YAMLError as error:
        raise LabError(f"The inventory {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict) or not all(isinstance(group, (dict, type(None))) for group in data.values()):
        raise LabError(f"The inventory {path} is not in Ansible's YAML format: expected groups such as "
                       "`all: {hosts: {NAME: {ansible_host: ..., ansible_port: ...}}}`.")
    return inventory_hosts(data, path)


def inventory_hosts(data: dict, path: Path) -> list[Host]:
    """The hosts of inventory data; relative key paths start at the inventory's folder."""
    hosts = []
    for name, variables in host_variables(data).items():
        port = variables.get("ansible_port", 22)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise LabError(f"{path}: host {name}: ansible_port: expected a port number, got {port!r}.")
        options = ssh_options(f"{variables.get('ansible_ssh_common_args', '')} "
                              f"{variables.get('ansible_ssh_extra_args', '')}")
        identity = variables.get("ansible_ssh_private_key_file")
        known_hosts = options.get("userknownhostsfile")
        hosts.append(Host(
            name=name, address=str(variables.get("ansible_host", name)), port=port,
            user=str(variables.get("ansible_user", getpass.getuser())),
            identity=str((path.parent / Path(identity).expanduser())) if identity else None,
            check_host_key=options.get("stricthostkeychecking", "yes").lower() != "no",
            known_hosts=Path(known_hosts).expanduser() if known_hosts else DEFAULT_KNOWN_HOSTS))
    if not hosts:
        raise LabError(f"The inventory {path} lists no hosts.")
    return hosts


def vm_hosts(vms: list[LabVM]) -> list[Host]:
    """This checkout's lab VMs as fleet hosts: the inventory `lab.inventory` writes for them."""
    return inventory_hosts(ansible_inventory(vms), vms[0].root / "lab.yaml")


def connect(host: Host) -> Connection:
    """An open connection to a fleet host; its host key must be the one known_hosts records."""
    connection = Connection(host.address, user=host.user, port=host.port, connect_timeout=CONNECT_TIMEOUT,
                            connect_kwargs={"key_filename": [host.identity]} if host.identity else {})
    if host.check_host_key:
        connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if host.known_hosts.exists():
            connection.client.get_host_keys().load(str(host.known_hosts))
    where = f"{host.name} ({host.address}:{host.port})"
    try:
        connection.open()
    except paramiko.BadHostKeyException:
        raise LabError(f"{where}: its SSH host key is not the one recorded in {host.known_hosts}. If the machine "
                       "was re-created, replace the old key (`ssh-keygen -R` then `ssh-keyscan`); otherwise do "
                       "not connect: something may sit in between.") from None
    except paramiko.AuthenticationException as error:
        raise LabError(f"{where}: SSH login as {host.user} was refused ({error}). Check ansible_user and "
                       "ansible_ssh_private_key_file in the inventory.") from None
    except paramiko.SSHException as error:
        if "known_hosts" in str(error):
            raise LabError(f"{where}: its SSH host key is not in {host.known_hosts}. Record it once after "
                           f"checking it: ssh-keyscan -p {host.port} {host.address} >> {host.known_hosts}") from None
        raise LabError(f"{where} does not answer SSH ({error}).") from None
    except UNREACHABLE as error:
        raise LabError(f"{where} does not answer SSH ({error or type(error).__name__}).") from None
    return connection


@dataclass
class Result:
    host: str
    ok: bool
    value: object = None
    error: str = ""


def each(hosts: list[Host], job) -> dict[str, Result]:
    """job(host, connection) on every host at once, one progress line each; failures are collected."""
    results: dict[str, Result] = {}
    board = Board([host.name for host in hosts])

    def work(host: Host) -> None:
        with for_host(host.name, board):
            try:
                results[host.name] = Result(host.name, True, job(host, connect(host)))
                board.show(host.name, "[green]done[/green]")
            except LabError as error:
                results[host.name] = Result(host.name, False, error=str(error))
                board.show(host.name, f"[red]failed[/red] {escape(str(error).splitlines()[0][:100])}")
            except Exception as error:  # a dropped connection mid-way surfaces as many exception types
                results[host.name] = Result(host.name, False, error=f"{type(error).__name__}: {error}")
                board.show(host.name, f"[red]failed[/red] {escape(type(error).__name__)}")

    # Daemon threads, polled: Ctrl-C ends the command at once instead of waiting for every host.
    threads = [threading.Thread(target=work, args=(host,), daemon=True) for host in hosts]
    with board:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            time.sleep(0.2)
    return {host.name: results[host.name] for host in hosts}


def require_all(results: dict[str, Result], problems: list[str], done: str) -> None:
    """Name every host (or cell) that failed and why, or say that all went well."""
    problems = [f"{name}: {result.error.splitlines()[0]}" for name, result in results.items()
                if not result.ok] + problems
    if problems:
        listing = "\n".join(f"  {line}" for line in problems)
        raise LabError(f"{len(problems)} problem(s) across {len(results)} hosts:\n{listing}\nThe other hosts "
                       "finished. Fix these and run the same command again.")
    say(f"[green]✓[/green] All {len(results)} hosts {done}.")


def setup(hosts: list[Host], config: Config, root: Path) -> dict[str, Result]:
    """Provision, check and sync every host. A source build happens once, on the first
    host; the others then install it as an artifact."""
    def job_with(settings: Config):
        def job(host: Host, connection: Connection) -> str:
            changed, mode = provision.apply(connection, settings, root / "logs" / host.name / "provision.log")
            provision.require_healthy(provision.doctor(connection, show=False))
            sync.push(connection, root)
            say("ready" + (" (provisioned)" if changed else " (nothing to provision)"))
            return mode
        return job

    results = {}
    rest = hosts
    if builds_from_source(config, hosts[0]):
        first = each(hosts[:1], job_with(config))
        results.update(first)
        if first[hosts[0].name].ok and first[hosts[0].name].value == "source":
            bcc = {**config.provision.bcc, "install": "artifact"}
            config = dataclasses.replace(config, provision=dataclasses.replace(config.provision, bcc=bcc))
        rest = hosts[1:]
    if rest:
        results.update(each(rest, job_with(config)))
    return results


def builds_from_source(config: Config, host: Host) -> bool:
    """Whether BCC comes from source here (for `auto`, the first host's distribution decides)."""
    install = config.provision.bcc["install"]
    if install != "auto":
        return install == "source"
    try:
        return provision.bcc_mode(install, provision.gather(connect(host), []).distribution) == "source"
    except LabError:
        return False


def verify(hosts: list[Host], root: Path, names: list[str], seconds: int) -> tuple[dict[str, Result], Path]:
    """lab.verify on every host at once; each host's runs go to its own folder of one fleet run."""
    folder = run.run_folder(root / "runs", "verify-fleet", datetime.now(timezone.utc))

    def job(host: Host, connection: Connection) -> list[dict]:
        return run.verify(connection, lambda: connect(host), root, host.name, names, seconds,
                          runs=folder / host.name)

    results = each(hosts, job)
    matrix = {name: {row["lab"]: row for row in result.value} for name, result in results.items() if result.ok}
    (folder / "summary.json").write_text(json.dumps(
        {"hosts": matrix, "failed_hosts": {name: r.error for name, r in results.items() if not r.ok}}, indent=2) + "\n")
    return results, folder


def verify_matrix(results: dict[str, Result]) -> tuple[Table, list[str]]:
    """A lab x host table of PASS/FAIL (or why a host has no results) and the failing cells."""
    labs = list(dict.fromkeys(row["lab"] for result in results.values() if result.ok for row in result.value))
    table = Table(title="lab.verify across the fleet")
    table.add_column("lab \\ host")
    for name in results:
        table.add_column(name)
    failed = []
    for lab in labs:
        cells = []
        for name, result in results.items():
            row = next((row for row in result.value if row["lab"] == lab), None) if result.ok else None
            if row is None:
                cells.append("[red]–[/red]")
                continue
            cells.append("[green]PASS[/green]" if row["result"] == "PASS" else "[red]FAIL[/red]")
            if row["result"] != "PASS":
                failed.append(f"{lab} on {name}: {'; '.join(row['problems'])}")
        table.add_row(lab, *cells)
    return table, failed


def run_problems(results: dict[str, Result], folder: Path) -> list[str]:
    """Say how each host's run ended; the hosts whose program did not exit cleanly."""
    for host, result in results.items():
        if result.ok:
            say(f"[dim]{host}: {result.value['stopped']}, exit {result.value['exit_status']}, "
                f"{result.value['lines']} lines[/dim]")
    return [f"{host}: exit status {result.value['exit_status']} (see {folder / host / 'output.log'})"
            for host, result in results.items() if result.ok and result.value["exit_status"] != 0]


def run_everywhere(hosts: list[Host], root: Path, what: str, duration: int, trigger: bool,
                   args: tuple) -> tuple[dict[str, Result], Path]:
    """One lab on every host at once; lines are prefixed with the host, each host's run
    is gathered in its own folder of one fleet run. Ctrl-C stops it everywhere."""
    catalog = run.load_catalog(root)
    folder = run.run_folder(root / "runs", f"{Path(what).stem}-fleet", datetime.now(timezone.utc))
    stop = threading.Event()
    printing = threading.Lock()
    width = max(len(host.name) for host in hosts)

    def job(host: Host, connection: Connection) -> dict:
        target = run.prepare(connection, root, what, catalog)
        workload = target.lab.trigger if (trigger and target.lab) else None

        def echo(line: str) -> None:
            with printing:
                sys.stdout.write(f"{host.name:<{width}} | {line}\n")
                sys.stdout.flush()

        outcome = run.execute(connection, lambda: connect(host), target, folder, host.name, duration=duration,
                              trigger=workload, args=args, echo=echo, folder=folder / host.name, stop=stop)
        return outcome.record

    results: dict[str, Result] = {}
    finished = threading.Event()

    def everywhere():
        try:
            results.update(each(hosts, job))
        finally:
            finished.set()

    threading.Thread(target=everywhere, daemon=True).start()
    while not finished.is_set():
        try:
            finished.wait(0.2)
        except KeyboardInterrupt:
            say("\nStopping the lab on every host...")
            stop.set()
    return results, folder
