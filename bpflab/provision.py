"""Turn a fresh lab VM into an eBPF workstation, acting only on what is missing.

Like pyinfra operations: read the VM's facts in one round trip, compute the
gap between them and lab.yaml, run only the commands that close it. A
provisioned VM therefore re-provisions in seconds, and an interrupted run is
simply run again.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from fabric import Connection

from . import arch, buildroot
from .artifacts import (
    INSTALLED_FILES,
    STAMP,
    Artifact,
    build_on_host,
    build_phases,
    build_script,
    build_settings,
    make_jobs,
    save_artifact,
    stamp_text,
)
from .commands import SCRIPTS, remote_run, script, with_variables
from .config import Config
from .console import done, say, step, warn
from .errors import LabError
from .vm import console_note

APT_UNAVAILABLE = (SCRIPTS / "apt-unavailable.sh").read_text()
# Keeps the doctor's slow answers in the VM, and gives them again while they stand.
ANSWERS = (SCRIPTS / "answers.sh").read_text()
# sshd notices a host that is gone (a dropped connection, a firewall) within about 10 s and
# ends its session: a lab program's supervisor then stops the program and frees the lock.
SSHD_KEEPALIVE = (SCRIPTS / "sshd-keepalive.conf").read_text()
# A VM's hardware stays as it is, so its initramfs needs only the modules it uses: with Debian's
# default (MODULES=most) a new kernel's initramfs takes over ten minutes under emulation.
SMALL_INITRAMFS = "/etc/initramfs-tools/conf.d/bpflab.conf"
# A lab VM is disposable: dpkg need not sync every file it unpacks (about a fifth of an install
# under emulation), as in Debian's own container images. bpflab's Ansible role writes the same.
UNSAFE_IO = "/etc/dpkg/dpkg.cfg.d/bpflab-unsafe-io"
APT_BUSY_NOW = "ps -eo comm= | grep -xE 'apt|apt-get|dpkg|unattended-upgr|apt.systemd.dai'"
# Builtins wherever they do: each command costs about 50 ms under emulation. apt's answer
# for the optional packages is kept in the VM until apt's lists change.
FACTS_SCRIPT = r"""
[ -z "$DOCTOR" ] || exec {checks}< <(sudo -n bash -c "$DOCTOR" 2>&1)  # meanwhile: a second or two
. /etc/os-release
file() { local text; read -r -d '' text < "$1"; printf %s "${text//$'\n'/$2}"; } 2>/dev/null
echo "distribution=$ID-$VERSION_ID"
echo "arch=$HOSTTYPE"
echo "kernel=$(file /proc/sys/kernel/osrelease)"
cpus=0; while read -r key _; do [ "$key" = processor ] && ((++cpus)); done < /proc/cpuinfo
echo "cpus=$cpus"
echo "virt=$(systemd-detect-virt 2>/dev/null || true)"
while read -r key value _; do [ "$key" = MemTotal: ] && echo "memory_kb=$value" && break; done < /proc/meminfo
echo "python_link=$([ /usr/bin/python -ef /usr/bin/python3 ] && echo python3)"
echo "sshd_keepalive=$(file /etc/ssh/sshd_config.d/bpflab.conf ' ')"
echo "stamp=$(file /var/lib/bpflab/bcc.json)"
echo "ready_box=$(file /etc/bpflab/box.json)"
lists=(/var/lib/apt/lists/*_Packages)
if [ -e "${lists[0]}" ]; then
  answer=~/.cache/bpflab-apt-unavailable  # the packages asked about, then apt's answer
  { [ "$answer" -nt /var/lib/apt/lists ] && { read -r asked; read -r unavailable; } < "$answer" \
    && [ "$asked" = "$OPTIONAL" ]; } 2>/dev/null || {
    unavailable=$(bash -c "$UNAVAILABLE" apt-unavailable $OPTIONAL) \
      && mkdir -p ~/.cache && printf '%s\n%s\n' "$OPTIONAL" "${unavailable//$'\n'/ }" > "$answer"
  }
  echo "no_candidate=${unavailable//$'\n'/ }"
fi
echo "statuses=$(dpkg-query -W -f='${Package}:${db:Status-Status} ')"
[ -z "$DOCTOR" ] || while read -r line; do echo "check|$line"; done <&$checks
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
    sshd_keepalive: str = ""
    ready_box: dict = field(default_factory=dict)
    virt: str = ""
    checks: list = field(default_factory=list)  # the doctor's rows, when asked for

    @classmethod
    def parse(cls, text: str) -> Facts:
        lines = text.splitlines()
        values = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("check|"))
        return cls(
            values["distribution"],
            arch.debian(values["arch"]),
            values["kernel"],
            int(values["cpus"]),
            int(values["memory_kb"]),
            values["python_link"],
            json.loads(values["stamp"]) if values["stamp"].strip() else {},
            {entry.rsplit(":", 1)[0] for entry in values["statuses"].split() if entry.endswith(":installed")},
            set(values.get("no_candidate", "").split()),
            values.get("sshd_keepalive", "").strip(),
            json.loads(values["ready_box"]) if values.get("ready_box", "").strip() else {},
            values.get("virt", "").strip(),
            checks_of([line.removeprefix("check|") for line in lines if line.startswith("check|")]),
        )


def gather(connection: Connection, optional: list[str], checks: bool = False) -> Facts:
    """All facts in one round trip; `optional` packages are checked for an apt candidate; with
    `checks`, the doctor runs at the same time (its rows are the answer when nothing changes)."""
    variables = {
        "OPTIONAL": " ".join(optional),
        "UNAVAILABLE": APT_UNAVAILABLE,
        "DOCTOR": ANSWERS + script("doctor.sh", REUSE="1") if checks else "",
    }
    return Facts.parse(
        remote_run(connection, with_variables(FACTS_SCRIPT, variables), what="reading the VM's state").stdout
    )


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
    sshd_keepalive: bool
    settings: dict
    artifact: Artifact | None = None
    build_on: str = "vm"
    build_why: str = ""


def build_place(setting: str, virt: str, unable: str | None) -> tuple[str, str]:
    """Where a source build runs, vm or host, and why. Under software emulation (systemd-detect-virt
    says qemu, not kvm) a build in the VM takes hours; on a host that can, minutes."""
    if setting == "host" and unable:
        raise LabError(
            f"lab.yaml asks for provision.bcc.build_on: host, but {unable}. Fix that, or set "
            "build_on to auto or vm in lab.yaml (a build in an emulated VM takes hours)."
        )
    if setting != "auto":
        return setting, f"build_on: {setting} in lab.yaml"
    if virt != "qemu":
        return "vm", f"the VM is not emulated ({virt or 'unknown'})"
    if unable:
        return "vm", f"the VM is emulated, but {unable}: expect hours"
    return "host", "the VM is emulated; the host builds at native speed"


def plan(config: Config, facts: Facts, host_unable: str | None = None) -> Plan:
    """`host_unable`: why this host cannot build BCC for the VM (None: it can)."""
    distributions = config.provision.distributions
    if facts.distribution not in distributions:
        raise LabError(
            f"The VM runs {facts.distribution}, which lab.yaml has no packages for "
            f"(provision.distributions has {', '.join(distributions)}). Use one of those boxes."
        )
    distro = distributions[facts.distribution]
    bcc = config.provision.bcc
    mode = config.bcc_mode(facts.distribution)
    settings = build_settings(config, facts.distribution)
    built = facts.stamp.get("built", {})
    artifact = None
    if mode == "artifact" and built.get("version") != bcc["version"]:
        artifact = Artifact.find(config.bcc_artifacts, bcc["version"], facts.distribution, facts.arch)
    build_bcc = mode == "source" and built != settings
    # Where BCC is (or was) built decides whether the VM needs the build tools at all.
    where, why = build_place(bcc["build_on"], facts.virt, host_unable) if mode == "source" else ("vm", "")
    if build_bcc and where == "host":  # the VM gets the build as an artifact, made now unless one exists
        artifact = Artifact.built_with(config.bcc_artifacts, settings, facts.distribution, facts.arch)
    wanted = list(distro["packages"]) + [f"linux-headers-{facts.kernel}"]
    wanted += {
        "source": distro["bcc_build"] if where == "vm" else [],
        "package": distro["bcc_package"],
        "artifact": [],
    }[mode] + (artifact.runtime_packages if artifact else [])
    missing = [name for name in dict.fromkeys(wanted) if name not in facts.installed]
    # A ready seat has no package lists to ask; its box recorded what the archive lacked.
    no_candidate = facts.no_candidate | set(facts.ready_box.get("unavailable", []))
    skipped = [name for name in missing if name in distro["optional"] and name in no_candidate]
    return Plan(
        bcc_mode=mode,
        packages=[name for name in missing if name not in skipped],
        optional=set(distro["optional"]),
        skipped=skipped,
        remove=[name for name in distro["bcc_conflicts"] if mode in ("source", "artifact") and name in facts.installed],
        build_bcc=build_bcc and artifact is None,
        link_python=facts.python_link not in ("python3", "/usr/bin/python3"),
        sshd_keepalive=facts.sshd_keepalive != " ".join(SSHD_KEEPALIVE.split()),
        settings=settings,
        artifact=artifact,
        build_on=where,
        build_why=why,
    )


def ready_box_note(config: Config, facts: Facts) -> str | None:
    """A line for a VM made from a ready box whose provisioning settings are no longer lab.yaml's."""
    made_with = facts.ready_box.get("provision")
    if not made_with or made_with == config.provision_digest:
        return None
    made = facts.ready_box.get("packaged") or facts.ready_box.get("made", "?")
    return (
        f"This VM comes from a ready box made on {made} with other "
        "provisioning settings than lab.yaml's now: provisioning closes the difference."
    )


def apt(command: str, timeout: int) -> str:
    """An apt-get command that waits for the dpkg lock, retries downloads, asks nothing (a
    configuration file changed here, such as the box's PAM file for sshd, is kept, as Ansible's
    apt module does)."""
    return (
        f"DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout={timeout} "
        f"-o Acquire::Retries=3 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
        f"{command}"
    )


def wait_for_apt(connection: Connection, timeout: int) -> None:
    busy = remote_run(connection, f"{APT_BUSY_NOW} || true").stdout.split()
    if not busy:
        return
    with step(f"Waiting for apt/dpkg to be free (held by {busy[-1]}; up to {timeout}s)"):
        remote_run(
            connection,
            f"for i in $(seq {timeout}); do {APT_BUSY_NOW} >/dev/null || exit 0; sleep 1; done; exit 1",
            what="waiting for the apt/dpkg lock",
            fix="Another apt run holds the lock for too long; see `ps aux | grep apt` in `invoke lab.ssh`.",
        )


def install_packages(connection: Connection, config: Config, facts: Facts, todo: Plan, log: Path) -> str:
    """Install what is missing. When the running kernel's headers are gone from the package sources,
    the distribution's current kernel and its headers come too: then its release, else ''."""
    timeout = config.provision.apt_lock_timeout
    wait_for_apt(connection, timeout)
    with step(f"Installing {len(todo.packages)} packages") as current:
        remote_run(
            connection,
            apt("update", timeout),
            sudo=True,
            current=current,
            log=log,
            what="apt-get update",
            fix="Check the VM's network (`invoke lab.ssh`) and run provision again.",
        )
        unavailable = remote_run(
            connection,
            f"bash -c {shlex.quote(APT_UNAVAILABLE)} apt-unavailable {' '.join(todo.packages)}",
            log=log,
            what="asking apt which packages it has",
            fix="Run `invoke lab.provision` again; if it fails the same way, see "
            "`sudo apt-get update` in `invoke lab.ssh`.",
        ).stdout.split()
        running_headers = f"linux-headers-{facts.kernel}"
        skipped = [name for name in unavailable if name in todo.optional]
        required = [name for name in unavailable if name not in todo.optional and name != running_headers]
        if required:
            raise LabError(
                f"These required packages do not exist on this distribution: {' '.join(required)}. "
                "Fix provision.distributions in lab.yaml (or mark them optional)."
            )
        for name in skipped:
            warn(f"{name} is not available on this distribution; skipped (it is marked optional)")
        install = [name for name in todo.packages if name not in skipped and name not in unavailable]
        target, retire = current_kernel(connection, facts, log) if running_headers in unavailable else ("", "")
        if target:
            install += [f"linux-image-{target}", f"linux-headers-{target}"]
            if facts.virt not in ("", "none"):
                remote_run(connection, f"printf 'MODULES=dep\\n' > {SMALL_INITRAMFS}", sudo=True, log=log)
        if install:
            fast = f"printf 'force-unsafe-io\\n' > {UNSAFE_IO} && " if facts.virt not in ("", "none") else ""
            remote_run(
                connection,
                fast + apt("install --no-install-recommends " + " ".join(install), timeout),
                sudo=True,
                current=current,
                log=log,
                what="apt-get install",
                fix="Run `invoke lab.provision` again; it retries what is still missing.",
            )
        if retire:  # it is newer, so it would boot again; its own headers are nowhere to be had
            remote_run(
                connection,
                "echo 'linux-base linux-base/removing-running-kernel boolean false' | "
                "debconf-set-selections && " + apt(f"purge {retire}", timeout),
                sudo=True,
                current=current,
                log=log,
                what=f"removing the kernel {facts.kernel}",
                fix="Run `invoke lab.provision` again.",
            )
    return target


def current_kernel(connection: Connection, facts: Facts, log: Path) -> tuple[str, str]:
    """The kernel to move to when the running one has no headers in the sources, and the package
    of the running one if it must go (see kernel-target.sh)."""
    output = remote_run(
        connection,
        script("kernel-target.sh"),
        sudo=True,
        log=log,
        what=f"looking for a kernel with headers (the running {facts.kernel} has none in the package sources)",
        fix="The machine's apt sources offer no kernel with its headers. Add the distribution's "
        "main archive to its apt sources, or install linux-headers for its kernel by hand.",
    )
    values = dict(line.split("=", 1) for line in output.stdout.splitlines() if "=" in line)
    return values["target"], values["retire"]


def write_stamp(connection: Connection, built: dict, via: str, facts: Facts, log: Path) -> None:
    stamp = stamp_text(built, via, facts.distribution, facts.arch)
    remote_run(connection, f"mkdir -p {Path(STAMP).parent} && echo {shlex.quote(stamp)} > {STAMP}", sudo=True, log=log)


def build_bcc(connection: Connection, facts: Facts, todo: Plan, log: Path) -> None:
    """Clone BCC at the pinned tag with its submodules, build, install and record its files in the VM; stamp."""
    settings, build_log = todo.settings, log.with_name("bcc-build.log")
    jobs = make_jobs(facts.cpus, facts.memory_kb)
    with step(f"Building BCC {settings['version']} from source in the VM (make -j{jobs}; log: {build_log})") as current:
        for phase, what, fix in build_phases(settings, "vm"):
            remote_run(
                connection,
                build_script(phase, settings, jobs),
                sudo=True,
                current=current,
                log=build_log,
                what=what,
                fix=fix,
            )
        write_stamp(connection, settings, "source", facts, log)


def export_bcc(
    connection: Connection, config: Config, log: Path, facts: Facts | None = None, built: dict | None = None
) -> Path:
    """Copy the VM's BCC built from source to the host's artifact folder; return the tarball's path.
    Right after a build, provisioning passes the facts it has and what it built."""
    facts = facts or gather(connection, [])
    built = built or facts.stamp.get("built")
    if not built:
        raise LabError(
            "The VM has no BCC built from source to export (its BCC comes from the distribution's "
            "package, or provisioning has not run). Build it once with `bcc.install: source` in "
            "lab.yaml and `invoke lab.provision`."
        )
    with step(f"Exporting BCC {built['version']} ({facts.distribution} {facts.arch}) to {config.bcc_artifacts}"):
        output = remote_run(
            connection,
            script("bcc-export.sh"),
            sudo=True,
            log=log,
            what="packing BCC's files in the VM",
            fix="Run `invoke lab.provision` so the VM's BCC install is complete, then export again.",
        )

        def fetch(partial: Path) -> None:
            connection.get("/tmp/bpflab-bcc.tar.gz", str(partial))
            remote_run(connection, "rm -f /tmp/bpflab-bcc.tar.gz /tmp/bpflab-bcc.list", sudo=True, log=log)

        return save_artifact(config, facts.distribution, facts.arch, built, output.stdout, fetch, "vm", facts.kernel)


def install_artifact(
    connection: Connection, facts: Facts, artifact: Artifact, log: Path, via: str = "artifact"
) -> None:
    """Unpack an exported BCC build into the VM: the seconds-long alternative to a source build."""
    with step(f"Installing BCC {artifact.built['version']} from {artifact.tarball.name}"):
        connection.put(str(artifact.tarball), "/tmp/bpflab-bcc.tar.gz")
        remote_run(
            connection,
            f"tar -C / -xzf /tmp/bpflab-bcc.tar.gz && mkdir -p {Path(INSTALLED_FILES).parent} && "
            f"tar -tzf /tmp/bpflab-bcc.tar.gz | sed 's|^|/|; s|/$||' > {INSTALLED_FILES} && "
            "rm -f /tmp/bpflab-bcc.tar.gz && ldconfig",
            sudo=True,
            log=log,
            what="unpacking the BCC artifact",
            fix="Run `invoke lab.provision` again; if it fails again, export the artifact again.",
        )
        write_stamp(connection, artifact.built, via, facts, log)


@dataclass
class Outcome:
    """What provisioning did: whether something changed, how BCC was installed, and the kernel
    the machine must restart into before it can go on (a new kernel's headers are installed)."""

    changed: bool
    bcc_mode: str
    restart_into: str = ""
    checks: list = field(default_factory=list)  # the doctor's rows from before, if nothing changed


def apply(connection: Connection, config: Config, log: Path) -> Outcome:
    """Provision the VM, or stop where it must restart into a new kernel (then run again)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with step("Reading the VM's state"):
        optional = sorted({name for distro in config.provision.distributions.values() for name in distro["optional"]})
        facts = gather(connection, optional, checks=True)
    todo = plan(config, facts, buildroot.unable_reason(facts.arch))
    for name in todo.skipped:
        warn(f"{name} is not available on {facts.distribution}; skipped (it is marked optional)")
    where = f", built on the {todo.build_on} ({todo.build_why})" if todo.build_bcc else ""
    say(f"VM: {facts.distribution} {facts.arch}, kernel {facts.kernel}; BCC: {todo.bcc_mode}{where}")
    note = ready_box_note(config, facts)
    if note:
        say(note)
    changed = False
    built_here = todo.build_bcc and todo.build_on == "host"
    if built_here:  # first: the artifact names the packages its files need in the VM
        artifact = build_on_host(config, facts.distribution, facts.arch, todo.settings, log)
        extra = [
            name for name in artifact.runtime_packages if name not in facts.installed and name not in todo.packages
        ]
        todo = dataclasses.replace(todo, build_bcc=False, artifact=artifact, packages=todo.packages + extra)
    if todo.remove:
        with step(f"Removing the distribution's BCC ({' '.join(todo.remove)}): it conflicts with a source build"):
            remote_run(
                connection,
                apt("purge " + " ".join(todo.remove), config.provision.apt_lock_timeout),
                sudo=True,
                log=log,
                what="removing the distribution's BCC",
            )
        changed = True
    if todo.packages:
        new_kernel = install_packages(connection, config, facts, todo, log)
        if new_kernel:
            say(
                f"The running kernel {facts.kernel} has no headers in the package sources any more (BCC needs "
                f"them): installed the distribution's current kernel {new_kernel} and its headers."
            )
            return Outcome(True, todo.bcc_mode, new_kernel)
        changed = True
    else:
        done("Packages: all installed")
    if todo.sshd_keepalive:
        remote_run(
            connection,
            f"printf %s {shlex.quote(SSHD_KEEPALIVE)} > /etc/ssh/sshd_config.d/bpflab.conf && "
            "{ systemctl reload ssh || service ssh reload || true; } 2>/dev/null",
            sudo=True,
            log=log,
            what="setting sshd's keepalive",
        )
        done("sshd ends sessions whose host is gone (ClientAliveInterval 2)")
        changed = True
    if todo.link_python:
        remote_run(connection, "ln -sfn python3 /usr/bin/python", sudo=True, log=log)
        done("/usr/bin/python -> python3")
        changed = True
    if todo.build_bcc:
        build_bcc(connection, facts, todo, log)
        changed = True
        try:
            export_bcc(connection, config, log, facts, todo.settings)
        except LabError as error:
            warn(f"BCC is built, but exporting it as an artifact failed: {error}")
    elif todo.artifact:
        install_artifact(connection, facts, todo.artifact, log, via="host" if built_here else "artifact")
        changed = True
    elif todo.bcc_mode in ("source", "artifact"):
        done(f"BCC {todo.settings['version']}: installed already")
    return Outcome(changed, todo.bcc_mode, checks=[] if changed else facts.checks)


def doctor(connection: Connection) -> list[tuple[str, bool, str]]:
    """What the labs need, checked in the VM: (check, ok, detail) rows."""
    return checks_of(
        remote_run(connection, ANSWERS + script("doctor.sh"), sudo=True, what="the lab checks").stdout.splitlines()
    )


def checks_of(lines: list[str]) -> list[tuple[str, bool, str]]:
    return [
        (name, state == "ok", detail)
        for name, state, detail in (line.split("|", 2) for line in lines if line.count("|") >= 2)
    ]


def require_quiet_console(path: Path | None) -> None:
    """A kernel that reported trouble on its console (an oops, a lockup, a hung task, out of memory) makes
    the labs' results doubtful even where every check passes."""
    note = console_note(path) if path else ""
    if "in trouble" in note:
        raise LabError(
            f"{note}\nThe VM still answers, but its kernel is not sound: `invoke lab.halt` then "
            "`invoke lab.up` restart it (the console log starts afresh)."
        )


def require_healthy(rows) -> None:
    failed = [name for name, ok, _ in rows if not ok]
    if failed:
        raise LabError(
            f"The VM is not ready for the labs: {', '.join(failed)} (see the table). "
            "Run `invoke lab.provision` to install what is missing."
        )
