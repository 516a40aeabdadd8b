"""Turn a fresh lab VM into an eBPF workstation, acting only on what is missing.

Like pyinfra operations: read the VM's facts in one round trip, compute the
gap between them and lab.yaml, run only the commands that close it. A
provisioned VM therefore re-provisions in seconds, and an interrupted run is
simply run again.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from fabric import Connection
from rich.table import Table

from .config import Config
from .connection import remote_run
from .console import console, say, step, warn
from .errors import LabError

STAMP = "/var/lib/bpflab/bcc.json"
# The distribution's BCC parts that collide with a source build (its Python
# bindings would load the other libbcc). libbpfcc itself stays: bpftrace needs it.
DISTRO_BCC = ["python3-bpfcc", "bpfcc-tools", "libbpfcc-dev"]
SOURCE_DIR = "/opt/bpflab/bcc"
APT_BUSY_NOW = "ps -eo comm= | grep -xE 'apt|apt-get|dpkg|unattended-upgr|apt.systemd.dai'"
FACTS_SCRIPT = r"""
. /etc/os-release
echo "distribution=$ID-$VERSION_ID"
echo "arch=$(dpkg --print-architecture)"
echo "kernel=$(uname -r)"
echo "cpus=$(nproc)"
echo "memory_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
echo "python_link=$(readlink /usr/bin/python || true)"
echo "stamp=$(tr -d '\n' < /var/lib/bpflab/bcc.json 2>/dev/null || true)"
if ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
  echo "no_candidate=$(for p in $OPTIONAL; do c=$(apt-cache policy $p | awk '/Candidate:/ {print $2}'); [ -z "$c" ] || [ "$c" = '(none)' ] && echo $p; done | tr '\n' ' ')"
fi
echo "installed=$(dpkg-query -W -f='${Package}:${db:Status-Status} ' | tr ' ' '\n' | sed -n 's/:installed$//p' | tr '\n' ' ')"
"""


@dataclass
class Facts:
    """What the VM has now: everything provisioning decides from."""
    distribution: str
    arch: str
    kernel: str
    cpus: int
    memory_kb: int
    python_link: str
    stamp: dict
    installed: set = field(default_factory=set)
    no_candidate: set = field(default_factory=set)

    @classmethod
    def parse(cls, text: str) -> Facts:
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        return cls(values["distribution"], values["arch"], values["kernel"], int(values["cpus"]),
                   int(values["memory_kb"]), values["python_link"],
                   json.loads(values["stamp"]) if values["stamp"].strip() else {},
                   set(values["installed"].split()), set(values.get("no_candidate", "").split()))


def gather(connection: Connection, optional: list[str]) -> Facts:
    """All facts in one round trip; `optional` packages are checked for an apt candidate."""
    script = f"OPTIONAL={shlex.quote(' '.join(optional))}\n{FACTS_SCRIPT}"
    return Facts.parse(remote_run(connection, script, what="reading the VM's state").stdout)


@dataclass
class Plan:
    """The gap between the facts and lab.yaml, as decisions."""
    bcc_mode: str
    packages: list[str]
    optional: set[str]
    skipped: list[str]
    remove: list[str]
    build_bcc: bool
    link_python: bool
    settings: dict


def bcc_mode(setting: str, distribution: str) -> str:
    if setting != "auto":
        return setting
    return "source" if distribution.startswith("ubuntu-") else "package"


def plan(config: Config, facts: Facts) -> Plan:
    distributions = config.provision.distributions
    if facts.distribution not in distributions:
        raise LabError(f"The VM runs {facts.distribution}, which lab.yaml has no packages for "
                       f"(provision.distributions has {', '.join(distributions)}). Use one of those boxes.")
    distro = distributions[facts.distribution]
    bcc = config.provision.bcc
    mode = bcc_mode(bcc["install"], facts.distribution)
    wanted = list(distro["packages"]) + [f"linux-headers-{facts.kernel}"]
    wanted += distro["bcc_build"] if mode == "source" else distro["bcc_package"]
    build_settings = {"mode": mode, "repository": bcc["repository"], "version": bcc["version"],
                      "llvm_dir": distro["llvm_dir"]}
    missing = [name for name in dict.fromkeys(wanted) if name not in facts.installed]
    skipped = [name for name in missing if name in distro["optional"] and name in facts.no_candidate]
    return Plan(
        bcc_mode=mode,
        packages=[name for name in missing if name not in skipped],
        optional=set(distro["optional"]),
        skipped=skipped,
        remove=[name for name in DISTRO_BCC if mode == "source" and name in facts.installed],
        build_bcc=mode == "source" and facts.stamp != build_settings,
        link_python=facts.python_link not in ("python3", "/usr/bin/python3"),
        settings=build_settings,
    )


def make_jobs(cpus: int, memory_kb: int) -> int:
    """Parallel compile jobs: one per CPU, but at most one per 1.5 GB (cc1plus on LLVM headers)."""
    return max(1, min(cpus, memory_kb // (1536 * 1024)))


def apt(command: str, timeout: int) -> str:
    """An apt-get command that waits for the dpkg lock, retries downloads, asks nothing."""
    return (f"DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout={timeout} "
            f"-o Acquire::Retries=3 {command}")


def wait_for_apt(connection: Connection, timeout: int) -> None:
    busy = remote_run(connection, f"{APT_BUSY_NOW} || true").stdout.split()
    if not busy:
        return
    with step(f"Waiting for apt/dpkg to be free (held by {busy[-1]}; up to {timeout}s)"):
        remote_run(connection, f"for i in $(seq {timeout}); do {APT_BUSY_NOW} >/dev/null || exit 0; "
                               "sleep 1; done; exit 1",
                   what="waiting for the apt/dpkg lock",
                   fix="Another apt run holds the lock for too long; see `ps aux | grep apt` in `invoke lab.ssh`.")


def install_packages(connection: Connection, config: Config, todo: Plan, log: Path) -> None:
    timeout = config.provision.apt_lock_timeout
    wait_for_apt(connection, timeout)
    with step(f"Installing {len(todo.packages)} packages") as current:
        remote_run(connection, apt("update", timeout), sudo=True, current=current, log=log,
                   what="apt-get update", fix="Check the VM's network (`invoke lab.ssh`) and run provision again.")
        names = " ".join(todo.packages)
        unavailable = remote_run(
            connection, f"for p in {names}; do c=$(apt-cache policy $p | awk '/Candidate:/ {{print $2}}'); "
                        "[ -z \"$c\" ] || [ \"$c\" = '(none)' ] && echo $p; done; true",
            log=log).stdout.split()
        skipped = [name for name in unavailable if name in todo.optional]
        required = [name for name in unavailable if name not in todo.optional]
        if required:
            raise LabError(f"These required packages do not exist on this distribution: {' '.join(required)}. "
                           "Fix provision.distributions in lab.yaml (or mark them optional).")
        for name in skipped:
            warn(f"{name} is not available on this distribution; skipped (it is marked optional)")
        install = [name for name in todo.packages if name not in skipped]
        if install:
            remote_run(connection, apt("install --no-install-recommends " + " ".join(install), timeout),
                       sudo=True, current=current, log=log, what="apt-get install",
                       fix="Run `invoke lab.provision` again; it retries what is still missing.")


def build_bcc(connection: Connection, facts: Facts, todo: Plan, log: Path) -> None:
    """Clone BCC at the pinned tag with its submodules, build, install, stamp."""
    settings = todo.settings
    jobs = make_jobs(facts.cpus, facts.memory_kb)
    source = f"{SOURCE_DIR}-{settings['version']}"
    with step(f"Building BCC {settings['version']} from source (make -j{jobs}; long under emulation)") as current:
        remote_run(connection,
                   f"rm -rf {source}.partial && git clone --quiet --depth 1 --branch {shlex.quote(settings['version'])} "
                   f"--recurse-submodules --shallow-submodules {shlex.quote(settings['repository'])} {source}.partial "
                   f"&& rm -rf {source} && mv {source}.partial {source}",
                   sudo=True, current=current, log=log, what=f"git clone of BCC {settings['version']}",
                   fix="Check provision.bcc.repository and version in lab.yaml, and the VM's network.")
        remote_run(connection,
                   f"mkdir -p {source}/build && cd {source}/build && "
                   f"cmake -DCMAKE_INSTALL_PREFIX=/usr -DPYTHON_CMD=python3 "
                   f"-DLLVM_DIR={shlex.quote(settings['llvm_dir'])} .. && make -j{jobs} && make install && ldconfig",
                   sudo=True, current=current, log=log, what="the BCC build",
                   fix="Fix the cause shown above and run `invoke lab.provision` again.")
        stamp = shlex.quote(json.dumps(settings, sort_keys=True))
        remote_run(connection, f"mkdir -p {Path(STAMP).parent} && echo {stamp} > {STAMP}", sudo=True, log=log)


def apply(connection: Connection, config: Config, log: Path) -> bool:
    """Provision the VM; True when something changed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with step("Reading the VM's state"):
        optional = sorted({name for distro in config.provision.distributions.values() for name in distro["optional"]})
        facts = gather(connection, optional)
    todo = plan(config, facts)
    for name in todo.skipped:
        warn(f"{name} is not available on {facts.distribution}; skipped (it is marked optional)")
    say(f"VM: {facts.distribution} {facts.arch}, kernel {facts.kernel}; BCC: {todo.bcc_mode}")
    changed = False
    if todo.remove:
        with step(f"Removing the distribution's BCC ({' '.join(todo.remove)}): it conflicts with a source build"):
            remote_run(connection, apt("purge " + " ".join(todo.remove), config.provision.apt_lock_timeout),
                       sudo=True, log=log, what="removing the distribution's BCC")
        changed = True
    if todo.packages:
        install_packages(connection, config, todo, log)
        changed = True
    else:
        say("[green]✓[/green] Packages: all installed")
    if todo.link_python:
        remote_run(connection, "ln -sfn python3 /usr/bin/python", sudo=True, log=log)
        say("[green]✓[/green] /usr/bin/python -> python3")
        changed = True
    if todo.build_bcc:
        build_bcc(connection, facts, todo, log)
        changed = True
    elif todo.bcc_mode == "source":
        say(f"[green]✓[/green] BCC {todo.settings['version']}: built from source already")
    return changed


DOCTOR_SCRIPT = r"""
k=$(uname -r); cfg=/boot/config-$k
check() { if eval "$2" >/dev/null 2>&1; then echo "$1|ok|$3"; else echo "$1|missing|$4"; fi; }
echo "kernel|ok|$k $(uname -m)"
check "BPF syscall" "grep -q '^CONFIG_BPF_SYSCALL=y' $cfg" "CONFIG_BPF_SYSCALL=y" "kernel built without BPF"
check "kprobes" "grep -q '^CONFIG_KPROBES=y' $cfg && test -e /sys/kernel/tracing/kprobe_events -o -e /sys/kernel/debug/tracing/kprobe_events" "CONFIG_KPROBES=y, kprobe_events" "no kprobes"
check "BTF" "test -e /sys/kernel/btf/vmlinux" "/sys/kernel/btf/vmlinux" "no /sys/kernel/btf/vmlinux"
check "tracefs" "test -e /sys/kernel/tracing/trace_pipe -o -e /sys/kernel/debug/tracing/trace_pipe" "trace_pipe" "mount -t tracefs nodev /sys/kernel/tracing"
check "kernel headers" "test -e /lib/modules/$k/build" "/lib/modules/$k/build" "apt-get install linux-headers-$k"
v=$(python3 -c 'import bcc; print(bcc.__version__)' 2>/dev/null)
check "import bcc" "test -n '$v'" "BCC $v" "python3 cannot import bcc"
b=$(bpftrace --version 2>/dev/null)
check "bpftrace" "test -n '$b'" "$b" "bpftrace not installed"
"""


def doctor(connection: Connection) -> list[tuple[str, bool, str]]:
    """Check what the labs need in the VM; print a table; return the rows."""
    output = remote_run(connection, DOCTOR_SCRIPT, sudo=True, what="the lab checks").stdout
    rows = []
    for line in output.splitlines():
        parts = line.split("|", 2)
        if len(parts) == 3:
            rows.append((parts[0], parts[1] == "ok", parts[2]))
    table = Table(title="What the labs need, checked in the VM")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for name, ok, detail in rows:
        table.add_row(name, "[green]ok[/green]" if ok else "[red]missing[/red]", detail)
    console.print(table)
    return rows


def require_healthy(rows) -> None:
    failed = [name for name, ok, _ in rows if not ok]
    if failed:
        raise LabError(f"The VM is not ready for the labs: {', '.join(failed)} (see the table). "
                       "Run `invoke lab.provision` to install what is missing.")
