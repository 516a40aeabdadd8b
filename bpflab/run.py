"""Run one program in a lab machine with live output, stop it cleanly, record it.

The program runs under a small shell supervisor in the machine that holds the
one-lab-at-a-time lock (the trace pipe is shared and reads are destructive)
and turns a stop request into SIGINT, then SIGTERM, then SIGKILL. Stop requests
arrive as a signal to that supervisor: from a timer in the machine for --duration,
or over a second SSH connection when the user presses Ctrl-C, since without a pty
SSH does not forward Ctrl-C.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import re
import shlex
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import paramiko
from fabric import Connection

from . import grading, sync
from .catalog import EXERCISE_FILE, Exercise, Lab, load_catalog, resolve
from .commands import LineSink, in_background, open_channel, remote_run, responsive, wait_for
from .console import note, output, say, step, warn
from .errors import LabError, shorten
from .hosts import Host
from .provision import ANSWERS
from .runs import RunRecord

READY = re.compile(r"Hit Ctrl-C to end")
MARK = "@@bpflab-"
STOP_MARK = f"{MARK}stopped "
GRACE_SECONDS = 3
# --duration counts from "attached" (BCC compiles for seconds first); a program that has
# attached nothing after this long is stopped.
COMPILE_ALLOWANCE = 120
# After this long without a line, ask the connection whether the machine still answers.
SILENCE_PROBE_SECONDS = 5
# An unbuffered program's lines arrive a packet of a few at a time, and each block costs Python
# work on the host, which shares its cores with an emulated VM: after a small block, the next
# one gathers for this long (a delay no reader sees).
COALESCE_BYTES, COALESCE_SECONDS = 1 << 15, 0.02
SUPERVISOR = (Path(__file__).parent / "scripts" / "supervisor.sh").read_text()
ATTACHED = (Path(__file__).parent / "scripts" / "attached.py").read_text()
# BCC's version without importing bcc (which loads LLVM: seconds under emulation); "none" without BCC.
BCC_VERSION = (Path(__file__).parent / "scripts" / "bcc-version.py").read_text()
FACTS_MARK = f"{MARK}facts "


def parse_stop(line: str) -> tuple[str, int, int, float | None] | None:
    """The supervisor's last line: (why it stopped, exit status, leaked probe count, seconds the
    program took to exit once asked to stop: its own cleanup, None when it ended by itself)."""
    if not line.startswith(STOP_MARK):
        return None
    reason, status, leaked, exit_seconds = line[len(STOP_MARK) :].split()
    return reason, int(status), int(leaked), None if exit_seconds == "-" else float(exit_seconds)


def free_folder(runs: Path, name: str, now: datetime) -> Path:
    """runs/<UTC time>-<name>[-N] for one run (or one verify or fleet run), not yet used:
    it is made when there is something to keep in it."""
    folder = runs / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"
    suffix = 1
    candidate = folder
    while candidate.exists():
        suffix += 1
        candidate = folder.with_name(f"{folder.name}-{suffix}")
    return candidate


@dataclass
class Target:
    """What to run: a catalog lab, a learner's own BCC or bpftrace file, a bpftrace one-liner,
    or a BCC tool. `ready` is the line a program prints once attached. `says_ready`: it
    surely prints one (catalog labs, bpftrace, BCC's tools), so the kernel is not asked.
    `files`: what the VM must hold for it, checked (and synced if need be) as it starts."""

    name: str
    workdir: str
    program: str
    kind: str = "bcc"
    lab: Lab | None = None
    ready: re.Pattern = READY
    files: sync.Tree | None = None

    @property
    def says_ready(self) -> bool:
        return self.lab is not None or self.kind != "bcc"

    def argv(self, args: tuple) -> list[str]:
        if self.kind == "one-liner":
            return ["bpftrace", "-B", "none", "-e", self.program]
        if self.kind == "bpftrace":
            return ["bpftrace", "-B", "none", self.program, *args]
        return ["python3", "-u", self.program, *args]


BPFTRACE_READY = re.compile(r"^Attaching \d+ probes?")
PROGRAM_SUFFIXES = {".py": "bcc", ".bt": "bpftrace"}


def check_target(root: Path, what: str, catalog: dict[str, Lab]) -> None:
    """Refuse a misspelled lab or a missing file before any VM is touched."""
    if Path(what).suffix in PROGRAM_SUFFIXES or "/" in what:
        if not Path(what).is_file():
            raise LabError(
                f"{shorten(what)} does not exist (or is not a file). Give the path of a BCC Python "
                "program (.py) or a bpftrace script (.bt), or a lab name from `invoke lab.list`."
            )
        if Path(what).suffix not in PROGRAM_SUFFIXES:
            raise LabError(f"{shorten(what)} is neither a BCC Python program (.py) nor a bpftrace script (.bt).")
    else:
        resolve(catalog, what)


def seconds(value: str | int, option: str) -> int:
    """A number of seconds given on the command line, or a message that says what to give."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise LabError(f"{option} takes a whole number of seconds, not {shorten(str(value))!r}.") from None
    if number < 0:
        raise LabError(f"{option} must be 0 (until Ctrl-C) or a number of seconds, not {number}.")
    return number


def prepare(root: Path, what: str, catalog: dict[str, Lab]) -> Target:
    """A lab, with the labs as the files it needs; or the learner's file, with the .c and .h
    files beside it (and the exercise it is for) and labkit.py, in a folder of its own in the
    machine."""
    check_target(root, what, catalog)
    path = Path(what)
    if path.suffix in PROGRAM_SUFFIXES or "/" in what:
        folder = path.resolve().parent
        files = {
            item.name: item
            for item in sorted(folder.iterdir())
            if item.is_file() and (item == path.resolve() or item.suffix in (".c", ".h") or item.name == EXERCISE_FILE)
        }
        remote = f"{sync.REMOTE_ROOT}/user/{path.stem}"
        kind = PROGRAM_SUFFIXES[path.suffix]
        return Target(
            path.stem,
            remote,
            path.name,
            kind,
            ready=BPFTRACE_READY if kind == "bpftrace" else READY,
            files=sync.Tree({**files, "labkit.py": root / "labs" / "labkit.py"}, remote),
        )
    return lab_target(resolve(catalog, what), sync.labs_tree(root))


def lab_target(lab: Lab, files: sync.Tree | None = None) -> Target:
    if lab.kind == "bpftrace":
        return Target(lab.name, f"{sync.REMOTE_ROOT}/labs", f"{lab.name}.bt", "bpftrace", lab, BPFTRACE_READY, files)
    return Target(lab.name, f"{sync.REMOTE_ROOT}/labs", f"{lab.name}.py", "bcc", lab, files=files)


def one_liner_target(program: str) -> Target:
    if not program.strip():
        raise LabError(
            "Give a bpftrace program, for example: invoke lab.trace 'tracepoint:syscalls:"
            'sys_enter_execve { printf("%s\\n", comm); }\''
        )
    return Target("trace", "/tmp", program, "one-liner", ready=BPFTRACE_READY)


NO_BCC = (
    "BCC is not installed in the lab VM (python3 finds no bcc module). "
    "Run `invoke lab.provision` (or `invoke lab.setup`) first."
)


def vm_facts(connection: Connection) -> dict:
    """Kernel and BCC version (the doctor's answer while it stands), which also proves the machine
    is provisioned."""
    output = remote_run(
        connection,
        ANSWERS + "read -r kernel < /proc/sys/kernel/osrelease; remembered bcc bcc || "
        f"bcc=$(python3 -c {shlex.quote(BCC_VERSION)} 2>/dev/null || echo none); "
        'echo "$kernel $bcc"',
        what="reading the kernel and BCC version",
    ).stdout.split()
    if len(output) < 2 or output[-1] == "none":
        raise LabError(NO_BCC)
    return {"kernel": output[0], "bcc": output[-1]}


@dataclass
class Outcome:
    folder: Path
    record: RunRecord
    lines: list = field(default_factory=list)
    console_note: str = ""  # a lost connection: what the machine's console shows


class Supervisor:
    """The supervisor of one run, seen from the host: the SSH channel it runs on, whose output
    arrives in large blocks and whose stdin takes requests (stop, kill, duration, attached).

    Its start is the run's one remote start: it first checks that the VM holds the files the
    run needs (`files`) and, with `facts`, reports the kernel and BCC version at the end."""

    def __init__(self, target: Target, duration: int, args: tuple, files: sync.Tree | None, facts: bool):
        settings = {
            "WORKDIR": target.workdir,
            "NAME": target.name,
            "WATCH": "line" if target.says_ready else "kernel",
            "ATTACHED": "" if target.says_ready else ATTACHED,
            "DURATION": duration,
            "ALLOWANCE": COMPILE_ALLOWANCE,
            "GRACE": GRACE_SECONDS,
            "FACTS": int(facts),
            "BCC_VERSION": BCC_VERSION if facts else "",
            "CHECK": files.check_script() if files else "",
        }
        assignments = "".join(f"{key}={shlex.quote(str(value))}\n" for key, value in settings.items())
        self.command = f"bash -c {shlex.quote(assignments + ANSWERS + SUPERVISOR)} supervisor " + " ".join(
            shlex.quote(word) for word in target.argv(args)
        )
        self.name = target.name
        self.channel = None
        self.requested: set[str] = set()

    def stream(self, connection: Connection, on_lines) -> None:
        """Hand the output's lines to on_lines, a block at a time, until the supervisor's last line
        (its exit and the channel's close take a tenth of a second more), the channel's end or the
        connection's close."""
        sink = LineSink(on_lines=on_lines)
        try:
            self.channel = open_channel(connection, self.command)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            while chunk := self.channel.recv(1 << 16):
                text = decoder.decode(chunk)
                sink.write(text)
                if text.endswith("\n") and text.startswith(STOP_MARK, text.rfind("\n", 0, -1) + 1):
                    self.channel.close()
                    break
                if len(chunk) < COALESCE_BYTES:
                    time.sleep(COALESCE_SECONDS)
        except Exception:  # the connection was closed under it: recorded as connection-lost
            pass
        sink.finish()

    def request(self, what: str, again: bool = False) -> None:
        """A request on the supervisor's stdin: no new process in the VM."""
        if (what in self.requested and not again) or self.channel is None:
            return
        self.requested.add(what)
        try:
            self.channel.sendall(f"{what}\n".encode())
        except (OSError, EOFError, paramiko.SSHException) as error:
            warn(
                f"Could not ask the VM to {what} {self.name} ({error or type(error).__name__}); "
                "the VM stops it when the connection ends."
            )


class ProgramRun:
    """One program running in one machine: what runs, what it printed, how it stands.

    `echo`: show each line (False: silent); `stop`, set from another thread, stops
    the program as Ctrl-C does. Output goes to output.log as it arrives and
    run.json is always written, so nothing gathered is lost however it ends.
    """

    def __init__(
        self,
        host: Host,
        target: Target,
        folder: Path,
        *,
        duration: int = 0,
        trigger: str | None = None,
        args: tuple = (),
        echo: bool = True,
        stop: threading.Event | None = None,
    ):
        self.host, self.target, self.folder = host, target, folder
        self.duration, self.trigger, self.echo, self.args = duration, trigger, echo, args
        self.stop = stop or threading.Event()
        self.lines: list[str] = []
        self.stopped: tuple[str, int, int, float | None] | None = None
        self.ready_at = self.first_event_at = None
        self.trigger_error = self.log = self.connection = None
        self.started = self.heard_at = time.monotonic()
        self.probe_at = self.started + SILENCE_PROBE_SECONDS
        self.interrupts = 0
        self.facts: dict = {}
        self.unsynced: str | None = None  # check_script's output, when the VM lacked the run's files
        self.supervisor: Supervisor | None = None  # one per start (a run starts again after a sync)

    def execute(self, connection: Connection, facts: dict | None = None) -> Outcome:
        """Run it to the end; `facts` (kernel, BCC) may come from a caller that runs many. When
        the VM lacks the files the run needs, they are synced and the supervisor starts again."""
        started_at = datetime.now(timezone.utc)
        self.connection = connection
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "output.log").open("w") as self.log:
            self.supervise(self.target.files, facts is None)
            if self.unsynced is not None and self.interrupts:  # Ctrl-C before the program started
                self.stopped = ("interrupted", 130, 0, None)
            elif self.unsynced is not None:
                sync.mirror(connection, self.target.files, sync.unsynced_listing(self.unsynced))
                self.supervise(None, facts is None)
        record = self.record(facts or self.facts, started_at)
        record.write(self.folder)
        lost = record.stopped == "connection-lost"
        if not lost and self.target.lab and (self.target.lab.plot or {}).get("names") == "syscalls":
            self.keep_syscall_names(connection)
        return Outcome(self.folder, record, self.lines, self.host.console_note() if lost else "")

    def keep_syscall_names(self, connection: Connection) -> None:
        """syscalls.json beside a run whose counts are keyed by syscall number (bpftrace has no
        names for them): the VM's own table, from its kernel headers, so plots name them."""
        table = remote_run(
            connection,
            f"cd {sync.REMOTE_ROOT}/labs && python3 -c '{SYSCALL_NAMES}'",
            check=False,
        ).stdout.strip()
        if table.startswith("{"):
            (self.folder / "syscalls.json").write_text(table.splitlines()[-1] + "\n")

    def supervise(self, files: sync.Tree | None, facts: bool) -> None:
        """One start of the supervisor on the run's connection, streamed to its end."""
        self.unsynced = None
        self.supervisor = Supervisor(self.target, self.duration, self.args, files, facts)
        finished = in_background(lambda: self.supervisor.stream(self.connection, self.on_lines))
        wait_for(finished, tick=lambda: self.tick(self.connection), interrupted=self.interrupted)

    def on_lines(self, lines: list[str]) -> None:
        """A block of output: marks and readiness line by line, the log and the echo at once."""
        self.heard_at = time.monotonic()
        shown = []
        if lines[0].startswith(sync.UNSYNCED):  # the run has not started: the VM lacks its files
            self.unsynced = (self.unsynced or "") + "".join(f"{line}\n" for line in lines)
            return
        for line in lines:
            if line.startswith(MARK):
                self.on_mark(line)
                continue
            shown.append(line)
            if self.ready_at is None and self.target.ready.search(line):
                self.attached()
                self.supervisor.request("attached")  # the VM stops asking the kernel and times --duration
            elif self.ready_at is not None and self.first_event_at is None:
                self.first_event_at = self.heard_at
        if shown:
            self.lines.extend(shown)
            self.log.write("".join(f"{line}\n" for line in shown))
            self.log.flush()
            if self.echo:
                output(shown)

    def on_mark(self, line: str) -> None:
        """The supervisor's own lines: attached, never attached, facts, stopped."""
        if line.startswith(FACTS_MARK):
            kernel, bcc = line[len(FACTS_MARK) :].split()
            self.facts = {"kernel": kernel, "bcc": bcc}
        elif line.startswith(STOP_MARK):
            self.stopped = parse_stop(line)
        elif line == f"{MARK}attached" and self.ready_at is None:
            self.attached()
            if self.echo:  # the program itself said nothing: say it for it
                note(
                    f"{self.target.name}: attached ({self.ready_at - self.started:.1f}s); "
                    "tracing until Ctrl-C or --duration"
                )

    def attached(self) -> None:
        self.ready_at = self.heard_at
        if self.trigger:
            in_background(self.fire_trigger)

    def fire_trigger(self) -> None:
        """On a channel of the run's own connection: a new SSH connection can take seconds
        under load, and they would come out of --duration."""
        try:
            remote_run(self.connection, self.trigger, what="the trigger", check=True)
        except LabError as error:
            self.trigger_error = str(error)

    def tick(self, connection: Connection) -> None:
        """Every fraction of a second: a stop request, a machine gone silent."""
        now = time.monotonic()
        if self.stop.is_set() and not self.interrupts:
            self.interrupts = 1
            self.supervisor.request("stop")
        if now - self.heard_at > SILENCE_PROBE_SECONDS and now >= self.probe_at:
            # A machine that vanished, or a connection a firewall dropped, never closes: after
            # a silence, ask the connection itself, and give up on it if nothing answers.
            self.probe_at = now + SILENCE_PROBE_SECONDS
            if not responsive(connection):
                connection.close()

    def interrupted(self) -> None:
        """Ctrl-C (or SIGTERM, SIGHUP): the first asks the program to stop, the next kill it."""
        self.interrupts += 1
        what = "stop" if self.interrupts == 1 else "kill"
        say(f"\nStopping {self.target.name} in the VM ({'SIGINT' if what == 'stop' else 'SIGKILL'})...")
        self.supervisor.request(what, again=True)

    def record(self, facts: dict, started_at: datetime) -> RunRecord:
        """run.json; no status line from the supervisor means the SSH channel ended under it."""
        reason, status, leaked, exit_seconds = self.stopped or ("connection-lost", None, None, None)
        return RunRecord(
            lab=self.target.name,
            program=self.target.program,
            kind=self.target.kind,
            vm=self.host.name,
            kernel=facts.get("kernel"),
            bcc=facts.get("bcc"),
            start=started_at.isoformat(timespec="seconds"),
            end=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            duration_s=round(time.monotonic() - self.started, 2),
            stopped=reason,
            exit_status=status,
            lines=len(self.lines),
            leaked_probes=leaked,
            exit_after_stop_s=exit_seconds,
            trigger=self.trigger,
            trigger_error=self.trigger_error,
            time_to_attach_s=round(self.ready_at - self.started, 2) if self.ready_at else None,
            time_to_first_event_s=round(self.first_event_at - self.ready_at, 2) if self.first_event_at else None,
        )


COMPILER_ERROR = re.compile(r"^(/\S+?|\S+\.c):(\d+):(\d+): (error|fatal error): ")


def compiler_errors(lines: list[str], context: int = 2) -> list[str]:
    """clang's `file:line:col: error: ...` lines with the source line and caret after each."""
    shown = []
    for index, line in enumerate(lines):
        match = COMPILER_ERROR.match(line)
        if match:
            location = f"{Path(match.group(1)).name}:{match.group(2)}:{match.group(3)}"
            shown.append(f"{location}: {line[match.end() - len(match.group(4)) - 2 :].lstrip(': ')}")
            shown.extend(lines[index + 1 : index + 1 + context])
    return shown


def verdict(outcome: Outcome) -> LabError | None:
    """How a finished run ends the command: None for a clean exit, else an error whose code is
    the program's own status where it has one (128 + N for a program ended by signal N)."""
    record, log = outcome.record, outcome.folder / "output.log"
    lab, status, stopped = record.lab, record.exit_status, record.stopped
    if status and record.bcc == "none" and record.kind in ("bcc", "tool"):
        return LabError(NO_BCC, status)
    if stopped == "busy":
        return LabError(
            "Another lab program is running in the VM (one at a time: they share the trace pipe). "
            "Wait for it to finish or stop it, then run again."
        )
    if record.leaked_probes:
        return LabError(
            f"{record.leaked_probes} probe(s) of {lab} were left attached in the VM "
            "after it stopped. `invoke lab.halt` and `invoke lab.up` clear them."
        )
    if status is None:
        return LabError(
            f"The connection to the lab VM ended before {lab} reported its status (the VM "
            f"stopped or the network dropped). The output so far is kept in {outcome.folder}. "
            "`invoke lab.status` tells whether the VM still runs; `invoke lab.up` starts it. " + outcome.console_note
        )
    if stopped == "never-attached":
        return LabError(
            f"{lab} attached no BPF program to a kprobe, tracepoint or raw tracepoint within "
            f"{COMPILE_ALLOWANCE} s, so it was stopped. Check that it attaches (attach_kprobe, or "
            f"names such as kprobe__...), and see its output above (also in {log}).",
            status or 1,
        )
    if stopped == "duration":  # bpflab stopped it as asked: a request, not a failure (run.json keeps its status)
        return None
    if status and stopped == "exited":
        errors = compiler_errors(outcome.lines)
        if errors:
            return LabError(
                f"{lab}: the BPF program did not compile (BCC calls the .bpf.c file main.c):\n"
                + "\n".join(f"    {line}" for line in errors)
                + f"\nFix the C code and run it again (full output: {log}).",
                status,
            )
        return LabError(f"{lab} exited with status {status}: see its output above (also in {log}).", status)
    return LabError(code=status) if status else None


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
    if record.stopped != "duration":
        problems.append(f"stopped: {record.stopped}")
    if record.exit_status != 0:
        problems.append(f"exit status {record.exit_status}")
    if record.leaked_probes:
        problems.append(f"{record.leaked_probes} probe(s) left attached")
    if record.trigger_error:
        problems.append("the trigger failed")
    return problems


def verify_row(lab: Lab, problems: list[str], record: RunRecord | None, folder: Path | None = None) -> dict:
    """One lab's verdict; `folder`: the name of its run's folder, beside the others of this verify."""
    return {
        "lab": lab.name,
        "result": "FAIL" if problems else "PASS",
        "problems": problems,
        "duration_s": record and record.duration_s,
        "time_to_attach_s": record and record.time_to_attach_s,
        "time_to_first_event_s": record and record.time_to_first_event_s,
        "exit_after_stop_s": record and record.exit_after_stop_s,
        "folder": folder.name if folder and folder.exists() else None,
    }


def verify(host: Host, connection: Connection, root: Path, names: list[str], seconds: int, runs: Path) -> list[dict]:
    """Run each lab with its trigger for `seconds` and check the catalog's expectations. A lab
    whose connection was lost fails alone: the next connects again, unless the machine is gone."""
    catalog = load_catalog(root)
    labs = [resolve(catalog, name) for name in names] if names else list(catalog.values())
    sync.push(connection, root)
    facts, rows = vm_facts(connection), []  # read once: importing bcc takes seconds under emulation
    with ExitStack() as reconnections:
        for lab in labs:
            say(f"{lab.name} …")
            folder = free_folder(runs, lab.name, datetime.now(timezone.utc))
            try:
                outcome = ProgramRun(
                    host, lab_target(lab), folder, duration=seconds, trigger=lab.trigger, echo=False
                ).execute(connection, facts)
                problems, record = check_expectations(lab, outcome), outcome.record
            except LabError as error:
                problems, record = [str(error).splitlines()[0]], None
            rows.append(verify_row(lab, problems, record, folder))
            say(f"  {rows[-1]['result']}" + (f": {'; '.join(problems)}" if problems else ""))
            if not problems or responsive(connection):
                continue
            try:
                connection = reconnections.enter_context(host.connect())
            except LabError:
                skipped = labs[len(rows) :]
                rows += [verify_row(other, [f"not run: {host.name} stopped answering SSH"], {}) for other in skipped]
                say(f"  {host.name} stopped answering SSH; {len(skipped)} lab(s) not run. {host.console_note()}")
                break
    return rows


SYSCALL_NAMES = "import json, labkit; print(json.dumps(labkit.syscall_names()))"
CHECK_SECONDS = 10  # the trigger's work is over in a few seconds; a 2 s printer prints at least 4 times


@dataclass(frozen=True)
class Check:
    """lab.check's verdict on one program for one exercise (check.json beside its run)."""

    program: str
    exercise: int
    result: str  # PASS or FAIL
    detail: str  # PASS: what showed it; FAIL: the hint
    folder: str | None = None

    def write(self, folder: Path) -> None:
        (folder / "check.json").write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


def check_exercise(
    host: Host, connection: Connection, target: Target, source: str, exercise: Exercise, runs: Path
) -> Check:
    """Run a learner's program with the exercise's trigger, as lab.run would, and grade what it
    printed (`source`: all its files); a program that fails to run fails with the run's message."""
    program = f"{target.name}/{target.program}"
    if early := grading.grade_source(exercise.number, source):
        return Check(program, exercise.number, "FAIL", early.detail)
    folder = free_folder(runs, f"check-{target.name}", datetime.now(timezone.utc))
    program_run = ProgramRun(host, target, folder, duration=CHECK_SECONDS, trigger=exercise.trigger, echo=False)
    with step(
        f"Running {program} with exercise {exercise.number}'s trigger ({CHECK_SECONDS} s once attached)",
        f"{program} ran",
    ):
        outcome = program_run.execute(connection)
    failure = verdict(outcome)
    if failure is None and outcome.record.trigger_error:
        failure = LabError(f"The exercise's trigger failed in the VM: {outcome.record.trigger_error}")
    if failure is not None:
        graded = grading.Verdict(False, str(failure).splitlines()[0] or f"exit status {failure.code}")
    else:
        graded = grading.grade(exercise.number, outcome.lines, source)
    check = Check(program, exercise.number, "PASS" if graded.passed else "FAIL", graded.detail, folder.name)
    check.write(folder)
    return check


def source_of(target: Target) -> str:
    """A learner's program and the files beside it, as the grader reads them."""
    return "\n".join(
        path.read_text(errors="replace") for name, path in target.files.files.items() if name != "labkit.py"
    )


SEAT_EXERCISES = (Path(__file__).parent / "scripts" / "seat-exercises.py").read_text()


def check_seat(host: Host, connection: Connection, exercises: dict[int, Exercise], runs: Path) -> list[Check]:
    """Every exercise program of this seat's learner that the VM holds, checked; none: an empty list."""
    listing = (
        remote_run(
            connection,
            f"cd {sync.REMOTE_ROOT}/user 2>/dev/null && python3 -c {shlex.quote(SEAT_EXERCISES)} || echo '{{}}'",
            what="looking for the learner's exercises",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    checks = []
    for name, found in json.loads(listing).items():
        if found["exercise"] not in exercises:
            continue
        kind = PROGRAM_SUFFIXES[Path(found["program"]).suffix]
        ready = BPFTRACE_READY if kind == "bpftrace" else READY
        target = Target(name, f"{sync.REMOTE_ROOT}/user/{name}", found["program"], kind, ready=ready)
        checks.append(check_exercise(host, connection, target, found["source"], exercises[found["exercise"]], runs))
    return checks


INSPECT = (Path(__file__).parent / "scripts" / "inspect.py").read_text()


def inspect(connection: Connection, dump: str = "", program: str = "") -> dict:
    """What the VM's running lab holds in the kernel (scripts/inspect.py): its BPF programs, where
    they are attached and how often they ran, its maps and their entries; `dump` (xlated or
    jited) one program's instructions."""
    if program and not program.isdigit():
        raise LabError(f"--{dump} takes a program id from lab.inspect's table, not {shorten(program)!r}.")
    output = remote_run(
        connection,
        f"python3 -c {shlex.quote(INSPECT)} {dump} {program}".strip(),
        sudo=True,
        what="asking the kernel about the running lab (bpftool)",
    ).stdout
    found = json.loads(output.strip().splitlines()[-1])
    if found.get("missing"):
        raise LabError(
            "The VM has no bpftool, which lab.inspect asks. `invoke lab.provision` installs it (on Ubuntu "
            "releases that ship it only with linux-tools-$(uname -r), install that package in the VM)."
        )
    if found["lab"] is None:
        raise LabError(
            "No lab is running in the VM, so there is nothing to inspect. Start one in another terminal "
            "(`invoke lab.run hello-map`), then run lab.inspect while it runs."
        )
    return found


def tool_target(connection: Connection, name: str) -> Target:
    """A BCC tool in the VM: /usr/share/bcc/tools (source build) or <name>-bpfcc (Debian/Ubuntu)."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise LabError(f"{name!r} is not a BCC tool name (for example execsnoop, opensnoop).")
    found = remote_run(
        connection,
        f"for p in /usr/share/bcc/tools/{name} /usr/sbin/{name}-bpfcc; do [ -f $p ] && echo $p && break; done; true",
    ).stdout.strip()
    if not found:
        raise LabError(
            f"BCC has no tool named {name!r} in the VM. `invoke lab.ssh`, then "
            "`ls /usr/share/bcc/tools /usr/sbin/*-bpfcc` lists them."
        )
    folder, program = found.rsplit("/", 1)
    # BCC's tools print their column header once attached; some never say "Hit Ctrl-C".
    return Target(name, folder, program, "tool", ready=re.compile(r"\S"))


def probe_arguments(connection: Connection, probe: str) -> str:
    if not re.fullmatch(r"[\w:*./-]+", probe):
        raise LabError(f"{probe!r} is not a probe name such as tracepoint:syscalls:sys_enter_openat.")
    result = remote_run(connection, f"bpftrace -lv {shlex.quote(probe)}", sudo=True, check=False)
    if result.exited or not result.stdout.strip():
        raise LabError(
            f"bpftrace knows no probe {probe!r} in the VM. List some with "
            "`invoke lab.probe-args 'tracepoint:syscalls:*openat*'`."
        )
    return result.stdout
