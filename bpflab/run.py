"""Run one lab program in the VM with live output, stop it cleanly, record it.

The program runs under a small shell supervisor in the VM that holds the
one-lab-at-a-time lock (the trace pipe is shared and reads are destructive)
and turns a stop request into SIGINT, then SIGTERM, then SIGKILL. Stop requests
arrive as a signal to that supervisor: from a timer in the VM for --duration,
or from a second SSH channel when the user presses Ctrl-C, since without a pty
SSH does not forward Ctrl-C.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from fabric import Connection
from . import sync
from .connection import remote_run
from rich.table import Table

from .console import console, say, warn
from .errors import LabError

READY = re.compile(r"Hit Ctrl-C to end")
STOP_MARK = "@@bpflab-stopped "
GRACE_SECONDS = 3
# --duration counts from "attached" (BCC compiles for seconds first); this VM-side
# fallback stops the program even if bpflab's host side is gone.
COMPILE_ALLOWANCE = 120
# After this long without a line, check with a new connection that the VM still answers.
SILENCE_PROBE_SECONDS = 20
SUPERVISOR = r"""
exec 9>/run/bpflab-lab.lock
if ! flock -n 9; then
  echo "bpflab: another lab program is running in this VM: $(cat /run/bpflab-lab.owner 2>/dev/null)"
  echo "@@bpflab-stopped busy 75 0"; exit 75
fi
echo "$PROGRAM (since $(date +%T))" > /run/bpflab-lab.owner
echo $$ > /run/bpflab-lab.pid
cd "$WORKDIR"
set -m  # job control: the program gets its own process group and does not ignore SIGINT
PYTHONDONTWRITEBYTECODE=1 python3 -u "$PROGRAM" "$@" 9>&- < /dev/null &
child=$!
set +m
reason=exited
finished=
stop() {
  [ "$reason" = exited ] && [ -z "$finished" ] || return 0
  reason=$1
  kill -INT $child 2>/dev/null
  ( for i in $(seq $((GRACE * 10))); do kill -0 $child 2>/dev/null || exit 0; sleep 0.1; done
    kill -TERM $child 2>/dev/null; sleep $GRACE; kill -KILL $child 2>/dev/null ) 9>&- &
}
trap 'stop interrupted' INT TERM HUP
trap 'stop duration' USR1
timer=
if [ "$DURATION" != 0 ]; then ( sleep "$DURATION"; kill -USR1 $$ ) 9>&- > /dev/null 2>&1 & timer=$!; fi
while :; do wait $child; status=$?; kill -0 $child 2>/dev/null || break; done
finished=1
# A timer still sleeping would hold the SSH channel open.
[ -z "$timer" ] || { pkill -P $timer; kill $timer; } 2>/dev/null
leaked=$(grep -c "bcc_$child" /sys/kernel/tracing/kprobe_events /sys/kernel/tracing/uprobe_events 2>/dev/null | awk -F: '{s+=$2} END {print s+0}')
rm -f /run/bpflab-lab.pid /run/bpflab-lab.owner
echo "@@bpflab-stopped $reason $status $leaked"
exit $status
"""


@dataclass
class Lab:
    name: str
    summary: str
    note: str
    probe: str
    trigger: str
    expect: list
    reject: list


def load_catalog(root: Path) -> dict[str, Lab]:
    path = root / "labs" / "catalog.yaml"
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise LabError(f"Cannot read the lab catalog {path}: {error}") from None
    return {name: Lab(name=name, **entry) for name, entry in entries.items()}


def resolve(catalog: dict[str, Lab], name: str) -> Lab:
    if name in catalog:
        return catalog[name]
    close = difflib.get_close_matches(name, catalog, n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise LabError(f"There is no lab named {name!r}.{hint} Labs: {', '.join(catalog)}. "
                   "To run your own program, give its path (for example labs/my-hello.py).")


def parse_stop(line: str) -> tuple[str, int, int] | None:
    """The supervisor's last line: (why it stopped, exit status, leaked probe count)."""
    if not line.startswith(STOP_MARK):
        return None
    reason, status, leaked = line[len(STOP_MARK):].split()
    return reason, int(status), int(leaked)


def run_folder(runs: Path, name: str, now: datetime) -> Path:
    folder = runs / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"
    suffix = 1
    candidate = folder
    while candidate.exists():
        suffix += 1
        candidate = folder.with_name(f"{folder.name}-{suffix}")
    candidate.mkdir(parents=True)
    return candidate


@dataclass
class Target:
    """What to run: a catalog lab (in the synced tree) or a learner's own file."""
    name: str
    workdir: str
    program: str
    lab: Lab | None = None
    ready: re.Pattern = READY


def prepare(connection: Connection, root: Path, what: str, catalog: dict[str, Lab]) -> Target:
    """Sync the labs, or the learner's file with the .c files beside it, into the VM."""
    path = Path(what)
    if what.endswith(".py") or "/" in what:
        if not path.is_file():
            raise LabError(f"{what} does not exist (or is not a file). Give the path of a BCC Python program, "
                           "or a lab name from `invoke lab.list`.")
        sync.push(connection, root)
        folder = path.resolve().parent
        files = [item.name for item in sorted(folder.iterdir())
                 if item.is_file() and (item == path.resolve() or item.suffix in (".c", ".h"))]
        remote = f"{sync.REMOTE_ROOT}/user/{path.stem}"
        sync.push_files(connection, folder, remote, files, extra={"labkit.py": root / "labs" / "labkit.py"})
        return Target(path.stem, remote, path.name)
    lab = resolve(catalog, what)
    sync.push(connection, root)
    return Target(lab.name, f"{sync.REMOTE_ROOT}/labs", f"{lab.name}.py", lab)


def vm_facts(connection: Connection) -> dict:
    """Kernel and BCC version, which also proves the VM is provisioned."""
    output = remote_run(connection, "uname -r; python3 -c 'import bcc; print(bcc.__version__)' 2>/dev/null || "
                                    "echo none", what="reading the kernel and BCC version").stdout.split()
    if len(output) < 2 or output[-1] == "none":
        raise LabError("BCC is not installed in the lab VM (python3 cannot import bcc). "
                       "Run `invoke lab.provision` (or `invoke lab.setup`) first.")
    return {"kernel": output[0], "bcc": output[-1]}


@dataclass
class Outcome:
    folder: Path
    record: dict
    lines: list = field(default_factory=list)


def print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def answers(open_connection) -> bool:
    try:
        open_connection().close()
        return True
    except LabError:
        return False


def execute(connection: Connection, open_connection, target: Target, runs: Path, vm_name: str, *,
            duration: int = 0, trigger: str | None = None, args: tuple = (), echo=print_line,
            folder: Path | None = None, stop: threading.Event | None = None) -> Outcome:
    """Run the target, stream and save its output, and always write run.json.

    `open_connection` makes a second connection for stop requests and the trigger.
    `echo` shows each line (None: silent); `folder` overrides the run's folder under
    `runs`; setting `stop` from another thread stops the program as Ctrl-C does.
    """
    facts = vm_facts(connection)
    started_at = datetime.now(timezone.utc)
    if folder:
        folder.mkdir(parents=True)
    else:
        folder = run_folder(runs, target.name, started_at)
    log = (folder / "output.log").open("w")
    lines: list[str] = []
    state = {"stop": None, "ready_at": None, "first_event_at": None, "trigger_error": None}
    started = time.monotonic()
    heard = {"at": started, "probe_at": started + SILENCE_PROBE_SECONDS}

    def fire_trigger():
        try:
            remote_run(open_connection(), trigger, what="the trigger", check=True)
        except LabError as error:
            state["trigger_error"] = str(error)

    def on_line(line: str):
        heard["at"] = time.monotonic()
        stop = parse_stop(line)
        if stop:
            state["stop"] = stop
            return
        lines.append(line)
        log.write(line + "\n")
        log.flush()
        if echo:
            echo(line)
        now = time.monotonic()
        if state["ready_at"] is None and target.ready.search(line):
            state["ready_at"] = now
            if trigger:
                threading.Thread(target=fire_trigger, daemon=True).start()
        elif state["ready_at"] is not None and state["first_event_at"] is None:
            state["first_event_at"] = now

    fallback = int(duration) + COMPILE_ALLOWANCE if duration else 0
    env = f"WORKDIR={shlex.quote(target.workdir)} PROGRAM={shlex.quote(target.program)} " \
          f"DURATION={fallback} GRACE={GRACE_SECONDS}"
    command = f"{env} bash -c {shlex.quote(SUPERVISOR)} supervisor {' '.join(shlex.quote(a) for a in args)}"
    outcome = {"error": None}
    # An Event, not Thread.join: a join interrupted by Ctrl-C can report the
    # thread as finished while it still runs.
    finished = threading.Event()

    def body():
        try:
            remote_run(connection, command, sudo=True, check=False, on_line=on_line, what=f"lab {target.name}")
        except LabError as error:
            outcome["error"] = error
        except Exception:  # the connection was closed under it: recorded as connection-lost below
            pass
        finally:
            finished.set()

    def signal_supervisor(name: str):
        try:
            remote_run(open_connection(), f"test -f /run/bpflab-lab.pid && kill -{name} "
                                          "$(cat /run/bpflab-lab.pid) || true", sudo=True)
        except LabError as error:
            warn(str(error))

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    interrupts = 0
    duration_sent = False
    while not finished.is_set():
        try:
            finished.wait(0.2)
            ready_at = state["ready_at"]
            if duration and ready_at and not duration_sent and time.monotonic() - ready_at >= duration:
                duration_sent = True
                signal_supervisor("USR1")
            if stop is not None and stop.is_set() and not interrupts:
                interrupts = 1
                signal_supervisor("INT")
            now = time.monotonic()
            if now - heard["at"] > SILENCE_PROBE_SECONDS and now >= heard["probe_at"]:
                # A VM that vanished never closes the TCP connection: after a silence,
                # check with a new connection and give up on the old one if that fails.
                heard["probe_at"] = now + SILENCE_PROBE_SECONDS
                if not answers(open_connection):
                    connection.close()
        except KeyboardInterrupt:
            interrupts += 1
            signal_name = "INT" if interrupts == 1 else "KILL"
            say(f"\nStopping {target.name} in the VM (SIG{signal_name} to its supervisor)...")
            signal_supervisor(signal_name)
    log.close()
    ended_at = datetime.now(timezone.utc)
    # No status line from the supervisor: the SSH channel ended under it.
    reason, status, leaked = state["stop"] or ("connection-lost", None, None)
    record = {
        "lab": target.name, "program": target.program, "vm": vm_name, **facts,
        "start": started_at.isoformat(timespec="seconds"), "end": ended_at.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 2), "stopped": reason, "exit_status": status,
        "lines": len(lines), "leaked_probes": leaked, "trigger": trigger, "trigger_error": state["trigger_error"],
        "time_to_attach_s": round(state["ready_at"] - started, 2) if state["ready_at"] else None,
        "time_to_first_event_s": round(state["first_event_at"] - state["ready_at"], 2)
        if state["first_event_at"] else None,
    }
    (folder / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    if outcome["error"]:
        raise LabError(f"{outcome['error']}\nThe output so far is kept in {folder}.")
    return Outcome(folder, record, lines)


def list_runs(runs: Path) -> list[dict]:
    """The gathered runs, newest first."""
    found = []
    for record in sorted(runs.glob("*/run.json"), reverse=True):
        try:
            found.append({"folder": record.parent.name, **json.loads(record.read_text())})
        except (OSError, json.JSONDecodeError):
            continue
    return found


COMPILER_ERROR = re.compile(r"^(/\S+?|\S+\.c):(\d+):(\d+): (error|fatal error): ")


def compiler_errors(lines: list[str], context: int = 2) -> list[str]:
    """clang's `file:line:col: error: ...` lines with the source line and caret after each."""
    shown = []
    for index, line in enumerate(lines):
        match = COMPILER_ERROR.match(line)
        if match:
            location = f"{Path(match.group(1)).name}:{match.group(2)}:{match.group(3)}"
            shown.append(f"{location}: {line[match.end() - len(match.group(4)) - 2:].lstrip(': ')}")
            shown.extend(lines[index + 1:index + 1 + context])
    return shown


def report(outcome: Outcome) -> None:
    """One closing line; an error (non-zero exit) for a failed program or a leak."""
    record = outcome.record
    say(f"[dim]{record['lab']}: {record['stopped']}, exit {record['exit_status']}, {record['lines']} lines, "
        f"{record['duration_s']}s. Saved in {outcome.folder}[/dim]")
    if record["stopped"] == "busy":
        raise LabError("Another lab program is running in the VM (one at a time: they share the trace pipe). "
                       "Wait for it to finish or stop it, then run again.")
    if record["leaked_probes"]:
        raise LabError(f"{record['leaked_probes']} probe(s) of {record['lab']} were left attached in the VM "
                       "after it stopped. `invoke lab.halt` and `invoke lab.up` clear them.")
    if record["exit_status"] not in (0, None) and record["stopped"] == "exited":
        errors = compiler_errors(outcome.lines)
        if errors:
            raise LabError(f"{record['lab']}: the BPF program did not compile (BCC calls the .bpf.c file main.c):\n" +
                           "\n".join(f"    {line}" for line in errors) +
                           f"\nFix the C code and run it again (full output: {outcome.folder / 'output.log'}).")
        raise LabError(f"{record['lab']} exited with status {record['exit_status']}: see its output above "
                       f"(also in {outcome.folder / 'output.log'}).")
    if record["exit_status"] is None:
        raise LabError(f"The connection to the lab VM ended before {record['lab']} reported its status (the VM "
                       f"stopped or the network dropped). The output so far is kept in {outcome.folder}. "
                       "`invoke lab.status` tells whether the VM still runs; `invoke lab.up` starts it.")


def check_expectations(lab: Lab, outcome: Outcome) -> list[str]:
    """Why a verify run failed (empty when it passed)."""
    record, problems = outcome.record, []
    for pattern in lab.expect:
        if not any(re.search(pattern, line) for line in outcome.lines):
            problems.append(f"no line matched {pattern!r}")
    for pattern in lab.reject:
        bad = next((line for line in outcome.lines if re.search(pattern, line)), None)
        if bad is not None:
            problems.append(f"unwanted line {bad.strip()[:60]!r} matched {pattern!r}")
    if record["stopped"] != "duration":
        problems.append(f"stopped: {record['stopped']}")
    if record["exit_status"] != 0:
        problems.append(f"exit status {record['exit_status']}")
    if record["leaked_probes"]:
        problems.append(f"{record['leaked_probes']} probe(s) left attached")
    if record["trigger_error"]:
        problems.append("the trigger failed")
    return problems


def verify(connection: Connection, open_connection, root: Path, vm_name: str, names: list[str],
           seconds: int, runs: Path | None = None) -> list[dict]:
    """Run each lab with its trigger for `seconds` and check the catalog's expectations."""
    catalog = load_catalog(root)
    labs = [resolve(catalog, name) for name in names] if names else list(catalog.values())
    sync.push(connection, root)
    rows = []
    for lab in labs:
        say(f"[bold]{lab.name}[/bold] …")
        target = Target(lab.name, f"{sync.REMOTE_ROOT}/labs", f"{lab.name}.py", lab)
        try:
            outcome = execute(connection, open_connection, target, runs or root / "runs", vm_name,
                              duration=seconds, trigger=lab.trigger, echo=None)
            problems = check_expectations(lab, outcome)
            record = outcome.record
        except LabError as error:
            problems, record = [str(error).splitlines()[0]], {}
        rows.append({"lab": lab.name, "result": "FAIL" if problems else "PASS", "problems": problems,
                     "duration_s": record.get("duration_s"), "time_to_attach_s": record.get("time_to_attach_s"),
                     "time_to_first_event_s": record.get("time_to_first_event_s")})
        say(f"  {rows[-1]['result']}" + (f": {'; '.join(problems)}" if problems else ""))
        if problems and not answers(open_connection):
            skipped = labs[len(rows):]
            rows += [{"lab": other.name, "result": "FAIL", "problems": [f"not run: {vm_name} stopped answering SSH"],
                      "duration_s": None, "time_to_attach_s": None, "time_to_first_event_s": None}
                     for other in skipped]
            say(f"  {vm_name} stopped answering SSH; {len(skipped)} lab(s) not run")
            break
    return rows


def verify_table(rows: list[dict], runs: Path) -> Path:
    """Print the PASS/FAIL table and write it under runs/; return the summary path."""
    table = Table(title="lab.verify")
    for column in ("lab", "result", "attach s", "first event s", "total s", "why"):
        table.add_column(column)
    for row in rows:
        colour = "green" if row["result"] == "PASS" else "red"
        table.add_row(row["lab"], f"[{colour}]{row['result']}[/{colour}]", str(row["time_to_attach_s"]),
                      str(row["time_to_first_event_s"]), str(row["duration_s"]), "; ".join(row["problems"]))
    console.print(table)
    folder = run_folder(runs, "verify", datetime.now(timezone.utc))
    summary = folder / "summary.json"
    summary.write_text(json.dumps(rows, indent=2) + "\n")
    return summary


def new_exercise(root: Path, name: str, template: str, catalog: dict[str, Lab]) -> Path:
    """Copy a lab (both sides) into exercises/<name>/ as the learner's own program."""
    lab = resolve(catalog, template)
    if not re.fullmatch(r"[A-Za-z][\w-]*", name):
        raise LabError(f"{name!r} is not a usable program name: use letters, digits, '-' and '_'.")
    folder = root / "exercises" / name
    if folder.exists():
        raise LabError(f"{folder} already exists: pick another name, or run it with "
                       f"`invoke lab.run exercises/{name}/{name}.py`.")
    folder.mkdir(parents=True)
    program = (root / "labs" / f"{lab.name}.py").read_text()
    (folder / f"{name}.py").write_text(program.replace(f'labkit.source("{lab.name}")', f'labkit.source("{name}")'))
    (folder / f"{name}.bpf.c").write_text((root / "bpf" / f"{lab.name}.bpf.c").read_text())
    return folder / f"{name}.py"


def tool_target(connection: Connection, name: str) -> Target:
    """A BCC tool in the VM: /usr/share/bcc/tools (source build) or <name>-bpfcc (Debian/Ubuntu)."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise LabError(f"{name!r} is not a BCC tool name (for example execsnoop, opensnoop).")
    found = remote_run(connection, f"for p in /usr/share/bcc/tools/{name} /usr/sbin/{name}-bpfcc; do "
                                   "[ -f $p ] && echo $p && break; done; true").stdout.strip()
    if not found:
        raise LabError(f"BCC has no tool named {name!r} in the VM. `invoke lab.ssh`, then "
                       "`ls /usr/share/bcc/tools /usr/sbin/*-bpfcc` lists them.")
    folder, program = found.rsplit("/", 1)
    # BCC's tools print their column header once attached; some never say "Hit Ctrl-C".
    return Target(name, folder, program, ready=re.compile(r"\S"))


def probe_arguments(connection: Connection, probe: str) -> str:
    if not re.fullmatch(r"[\w:*./-]+", probe):
        raise LabError(f"{probe!r} is not a probe name such as tracepoint:syscalls:sys_enter_openat.")
    result = remote_run(connection, f"bpftrace -lv {shlex.quote(probe)}", sudo=True, check=False)
    if result.exited or not result.stdout.strip():
        raise LabError(f"bpftrace knows no probe {probe!r} in the VM. List some with "
                       "`invoke lab.probe-args 'tracepoint:syscalls:*openat*'`.")
    return result.stdout
