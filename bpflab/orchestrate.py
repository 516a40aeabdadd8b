"""One host or a room: the stages above on every host given, through one path.

One host works in the foreground: its lines are not prefixed and its failure is
the command's, in full. Several hosts work at once, each in its own thread with
one progress line; a host that is down or fails is named in the summary and
never stops the others. Runs are gathered under runs/ either way (a room's in one
folder per command, one subfolder per host).
"""

from __future__ import annotations

import dataclasses
import shlex
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import console, provision, report, run, sync
from .catalog import exercise, exercise_of, load_catalog, load_exercises, resolve
from .commands import in_background, remote_run, signals_as_interrupts, wait_for
from .config import Config
from .console import Board, HostEnd, done, emit, for_host, note, say, step, warn
from .errors import LabError
from .hosts import Host
from .inventory import choose
from .runs import write_summary
from .vm import LabVM, bring_up, select, statuses


@dataclass
class Result:
    host: str
    ok: bool
    value: object = None
    error: str = ""


def each(hosts: list[Host], job, interrupted=None, room: list[Host] | None = None) -> dict[str, Result]:
    """job(host, connection) on every host. In a room (`room`: all the command's hosts, by default
    `hosts`) at once, one progress line each, failures collected; Ctrl-C calls `interrupted()`
    if given, else ends the command. A lone host works in the foreground."""
    if len(room or hosts) == 1:
        host = hosts[0]
        with host.connect() as connection:
            return {host.name: Result(host.name, True, job(host, connection))}
    results: dict[str, Result] = {}
    board = Board([host.name for host in hosts])

    def work(host: Host) -> None:
        with for_host(host.name, board):
            try:
                with host.connect() as connection:
                    results[host.name] = Result(host.name, True, job(host, connection))
                emit(HostEnd())
            except LabError as error:
                results[host.name] = Result(host.name, False, error=str(error))
                emit(HostEnd(str(error)))
            except Exception as error:  # a dropped connection mid-way surfaces as many exception types
                results[host.name] = Result(host.name, False, error=f"{type(error).__name__}: {error}")
                emit(HostEnd(type(error).__name__))

    threads = [threading.Thread(target=work, args=(host,), daemon=True) for host in hosts]
    with board:
        for thread in threads:
            thread.start()
        wait_for(in_background(lambda: [thread.join() for thread in threads]), interrupted=interrupted)
    return {host.name: results[host.name] for host in hosts}


def require_all(results: dict[str, Result], problems: list[str], what: str) -> None:
    """Name every host (or cell) that failed and why, or say that all went well."""
    problems = [
        f"{name}: {result.error.splitlines()[0]}" for name, result in results.items() if not result.ok
    ] + problems
    if problems:
        listing = "\n".join(f"  {line}" for line in problems)
        raise LabError(
            f"{len(problems)} problem(s) across {len(results)} hosts:\n{listing}\nThe other hosts "
            "finished. Fix these and run the same command again."
        )
    done(f"All {len(results)} hosts {what}.")


def conclude(results: dict[str, Result], problems: dict[str, LabError], what: str, alone: str = "") -> None:
    """The end of a verb on a group of hosts: `problems` (host: error, besides the hosts whose job
    failed) named, or that all went well (`what` all hosts did). A group of one ends with its one
    error, in full, or with `alone` if there is more to say than its own lines said."""
    if len(results) == 1:
        if problems:
            raise next(iter(problems.values()))
        if alone:
            done(alone)
        return
    require_all(results, [f"{name}: {first_line(error)}" for name, error in problems.items()], what)


def first_line(error: LabError) -> str:
    """What a room's summary says of a host's error (one with no message is a program's exit status)."""
    return str(error).splitlines()[0] if str(error) else f"exit status {error.code}"


def doctor(config: Config, inventory: str = "", vm: str = "") -> None:
    """The doctor's checks on every chosen host, a table each; a host is not ready when a check
    failed or its console shows a kernel in trouble."""
    hosts = choose(config, inventory, vm)
    results = each(hosts, lambda host, connection: provision.doctor(connection))
    console.doctor_tables({name: result.value for name, result in results.items() if result.ok})
    problems = {}
    for host in hosts:
        if results[host.name].ok:
            try:
                provision.require_healthy(results[host.name].value)
                provision.require_quiet_console(host.console)
            except LabError as error:
                problems[host.name] = error
    conclude(results, problems, "are ready for the labs")


def sync_labs(config: Config, inventory: str = "", vm: str = "") -> None:
    """labs/ and bpf/ into every chosen host, only what changed (deletions too)."""
    hosts = choose(config, inventory, vm)
    results = each(hosts, lambda host, connection: sync.push(connection, config.root))
    console.sync_results({name: result.value for name, result in results.items() if result.ok})
    conclude(results, {}, "hold the labs")


def export_bcc(config: Config, inventory: str = "", vm: str = "") -> None:
    """Each chosen host's BCC built from source, to this host's artifact folder."""
    hosts = choose(config, inventory, vm)
    results = each(
        hosts,
        lambda host, connection: provision.export_bcc(
            connection, config, config.root / "logs" / host.name / "provision.log"
        ),
    )
    conclude(results, {}, "exported their BCC")


def probe_arguments(config: Config, probe: str, inventory: str = "", vm: str = "") -> None:
    """A probe's arguments as bpftrace knows them on every chosen host."""
    hosts = choose(config, inventory, vm)
    results = each(hosts, lambda host, connection: run.probe_arguments(connection, probe))
    console.host_texts({name: result.value for name, result in results.items() if result.ok})
    conclude(results, {}, f"know {probe}")


def inspect(
    config: Config,
    inventory: str = "",
    vm: str = "",
    xlated: str = "",
    jited: str = "",
    watch: bool = False,
    as_json: bool = False,
) -> None:
    """lab.inspect: the running lab's programs and maps on every chosen host; --watch again every
    2 s until Ctrl-C."""
    dump, program = ("xlated", xlated) if xlated else ("jited", jited) if jited else ("", "")
    hosts = choose(config, inventory, vm)
    while True:
        results = each(hosts, lambda host, connection: run.inspect(connection, dump, program))
        console.inspection({name: result.value for name, result in results.items() if result.ok}, as_json, watch)
        if not watch or not all(result.ok for result in results.values()):
            break
        try:
            time.sleep(2)
        except KeyboardInterrupt:
            return
    conclude(results, {}, "showed their running lab")


# provisioning --------------------------------------------------------------


def setup(hosts: list[Host], config: Config, root: Path, push_labs: bool = True) -> dict[str, Result]:
    """Provision, check and (with `push_labs`) sync every host. In a room, a source build
    happens once, on the first host; the others then install it as an artifact."""

    def job_with(settings: Config):
        def job(host: Host, connection) -> dict:
            log = root / "logs" / host.name / "provision.log"
            outcome = provision.apply(connection, settings, log)
            if outcome.restart_into:
                with step(f"Restarting {host.title} into kernel {outcome.restart_into}") as current:
                    host.restart(connection, current)
                with host.connect() as connection:
                    again = provision.apply(connection, settings, log)
                    if again.restart_into:
                        raise LabError(
                            f"{host.subject} was restarted but came up with a kernel whose headers are "
                            f"missing again, not {outcome.restart_into}. See {log}; check its boot loader."
                        )
                    return finish(host, connection, dataclasses.replace(again, changed=True))
            return finish(host, connection, outcome)

        def finish(host: Host, connection, outcome: provision.Outcome) -> dict:
            changed, mode = outcome.changed, outcome.bcc_mode
            checks = outcome.checks or provision.doctor(connection)
            console.checks_found(checks)
            provision.require_healthy(checks)
            if push_labs:
                sync.push(connection, root)
            console.host_ready(changed)
            return {"changed": changed, "mode": mode}

        return job

    rest, results = hosts, {}
    if len(hosts) > 1 and builds_from_source(config, hosts[0]):
        results.update(each(hosts[:1], job_with(config), room=hosts))
        first = results[hosts[0].name]
        if first.ok and first.value["mode"] == "source":
            bcc = {**config.provision.bcc, "install": "artifact"}
            config = dataclasses.replace(config, provision=dataclasses.replace(config.provision, bcc=bcc))
        rest = hosts[1:]
    if rest:
        results.update(each(rest, job_with(config), room=hosts))
    return results


def builds_from_source(config: Config, host: Host) -> bool:
    """Whether BCC comes from source here (for `auto`, the first host's distribution decides)."""
    install = config.provision.bcc["install"]
    if install != "auto":
        return install == "source"
    try:
        with host.connect() as connection:
            return config.bcc_mode(provision.gather(connection, []).distribution) == "source"
    except LabError:
        return False


def finish_setup(results: dict[str, Result], hosts: list[Host], config: Config, synced: bool = True) -> None:
    """A room: every host's failure, or that all are ready. One host: what provisioning did."""
    if len(results) > 1:
        require_all(results, [], "are ready")
        return
    changed = next(iter(results.values())).value["changed"]
    say("Provisioning changed the VM." if changed else "Provisioning: nothing to do, the VM was up to date.")
    if synced:
        hint = f" --vm {hosts[0].name}" if config.vm.count > 1 and hosts[0].name in config.machines else ""
        done(f"{hosts[0].subject} is ready and the labs are in it. Try `invoke lab.run hello{hint}`.")


def set_up(config: Config, inventory: str = "", vm: str = "", bring: bool = True) -> None:
    """lab.setup (`bring`: this checkout's VMs up first, then provisioned, checked and synced) and
    lab.provision (provisioned and checked only) on every chosen host."""
    vms = select(config, vm, everything_by_default=True) if bring and not inventory else []
    if vms:
        bring_up(vms)
    hosts = choose(config, inventory, vm, everything_by_default=bring)
    results = setup(hosts, config, config.root, push_labs=bring)
    keep_ready_snapshots(vms, results)
    finish_setup(results, hosts, config, synced=bring)


def keep_ready_snapshots(vms: list[LabVM], results: dict[str, Result]) -> None:
    """A libvirt VM that became ready gets a snapshot to reset to: its first, or a new one when
    provisioning changed it."""
    current = statuses(vms) if vms else {}
    for vm in vms:
        result = results.get(vm.machine)
        if not result or not result.ok or current[vm.machine].provider != "libvirt":
            continue
        if result.value["changed"] or not vm.has_ready_snapshot():
            vm.take_ready_snapshot(current[vm.machine])


def reset(config: Config, inventory: str = "", vm: str = "") -> None:
    """lab.reset: each chosen VM back to its ready snapshot, its keeper gone (its connection was to
    the VM before), its clock set (the snapshot's is behind), and a login that proves it answers."""
    if inventory:
        raise LabError(
            "`invoke lab.reset` puts this checkout's own VMs back to a snapshot; the hosts of an inventory "
            "are not VMs that bpflab runs, so it cannot. Give --vm NAME, names or all instead."
        )
    vms = select(config, vm)
    current = statuses(vms)
    for lab_vm in vms:
        if current[lab_vm.machine].running:
            Host.of_vm(lab_vm).held.release()
        lab_vm.reset(current[lab_vm.machine])
    hosts = choose(config, "", vm)
    results = each(
        hosts, lambda host, connection: remote_run(connection, f"date -u -s @{time.time():.3f} >/dev/null", sudo=True)
    )
    conclude(results, {}, "are back to their ready state", alone=f"{hosts[0].subject} is back to its ready state.")


def snapshot(config: Config, inventory: str = "", vm: str = "") -> None:
    """lab.snapshot: each chosen VM's ready snapshot, taken now."""
    if inventory:
        raise LabError(
            "`invoke lab.snapshot` snapshots this checkout's own VMs; the hosts of an inventory are not VMs that "
            "bpflab runs. Give --vm NAME, names or all instead."
        )
    vms = select(config, vm)
    current = statuses(vms)
    for lab_vm in vms:
        lab_vm.take_ready_snapshot(current[lab_vm.machine])


# running ---------------------------------------------------------------------


def gathered_in(root: Path, hosts: list[Host], name: str) -> tuple[Path, dict[str, Path]]:
    """Where the runs of a verb that runs several (verify, check) go: the verb's own folder under
    runs/ (`name`, for its summary, made when there is something to keep), and the folder each
    host's runs go in: a lone host's straight under runs/, a room's a subfolder each."""
    room = len(hosts) > 1
    folder = run.free_folder(root / "runs", f"{name}-fleet" if room else name, datetime.now(timezone.utc))
    return folder, {host.name: folder / host.name if room else root / "runs" for host in hosts}


def run_lab(
    hosts: list[Host],
    root: Path,
    what: str,
    seconds: int = 0,
    trigger: str | None = None,
    args: str = "",
    kind: str = "program",
) -> tuple[dict[str, Result], list[int]]:
    """A lab or learner's program (`kind` program), a BCC tool or a bpftrace one-liner on every host
    at once. `trigger`: a command to run once attached (None: the lab's own; "": none). In a room,
    lines are prefixed with the host, each host's run is gathered in its own folder of one fleet
    run, and Ctrl-C stops it everywhere. Also returns the signals (SIGTERM, SIGHUP) received."""
    catalog = load_catalog(root)
    name = {"program": Path(what).stem, "tool": what, "one-liner": "trace"}[kind]
    started = datetime.now(timezone.utc)
    fleet = run.free_folder(root / "runs", f"{name}-fleet", started) if len(hosts) > 1 else None
    stop = threading.Event()

    def job(host: Host, connection) -> run.Outcome:
        target = (
            run.tool_target(connection, what)
            if kind == "tool"
            else run.one_liner_target(what)
            if kind == "one-liner"
            else run.prepare(root, what, catalog)
        )
        folder = fleet / host.name if fleet else run.free_folder(root / "runs", target.name, started)
        workload = trigger if trigger is not None else (target.lab.trigger if target.lab else None)
        program = run.ProgramRun(
            host, target, folder, duration=seconds, args=tuple(shlex.split(args)), trigger=workload or None, stop=stop
        )
        return program.execute(connection)

    def stop_everywhere() -> None:
        say("\nStopping the lab on every host...")
        stop.set()

    with signals_as_interrupts() as received:
        return each(hosts, job, interrupted=stop_everywhere), received


def run_and_report(
    config: Config,
    what: str,
    inventory: str = "",
    vm: str = "",
    duration: str | int = 0,
    trigger: str = "",
    no_trigger: bool = False,
    args: str = "",
    kind: str = "program",
    draw: bool = False,
) -> None:
    """lab.run, lab.trace and lab.tool: input checked before any VM is touched, then the run on
    the chosen hosts and its report. `trigger`/`no_trigger`: --trigger CMD, --no-trigger, or
    neither (the lab's own); `draw`: plot a counting lab's counts when it ends."""
    seconds = check_run(config.root, what, duration, kind)
    hosts = choose(config, inventory, vm)
    workload = "" if no_trigger else (trigger or None)
    results, received = run_lab(hosts, config.root, what, seconds, workload, args, kind)
    if draw:
        catalog = load_catalog(config.root)
        for result in results.values():
            try:
                if result.ok:
                    say(f"Plot: {report.plot_run(result.value.folder, catalog)[0]}")
            except LabError as error:  # nothing to count: the run itself still ends as it did
                warn(str(error))
    finish_run(results, {"program": what, "tool": what, "one-liner": "the one-liner"}[kind], received)


def check_run(root: Path, what: str, duration: str | int, kind: str = "program") -> int:
    """Refuse bad input (a misspelled lab, a missing file, a duration that is no number) before
    any VM is touched; the duration in seconds."""
    if kind == "program":
        run.check_target(root, what, load_catalog(root))
    return run.seconds(duration, "--duration")


def check_verify(root: Path, names: list[str], seconds: str | int) -> int:
    catalog = load_catalog(root)
    for name in names:
        resolve(catalog, name)
    return run.seconds(seconds, "--seconds")


def finish_run(results: dict[str, Result], what: str, received: list[int]) -> None:
    """One closing line per host; then the program's exit status (one host) or every host's
    problem (a room). A host process told to stop by a signal ends with 128 + its number."""
    errors = []
    for name, result in results.items():
        if not result.ok:
            continue
        record, outcome = result.value.record, result.value
        prefix = f"{name}: " if len(results) > 1 else f"{record.lab}: "
        note(
            f"{prefix}{record.stopped}, exit {record.exit_status}, {record.lines} lines, "
            f"{record.duration_s}s. Saved in {outcome.folder}"
        )
        error = run.verdict(outcome)
        if error:
            errors.append((name, error))
    if received:
        raise LabError(
            f"Stopped by {signal.Signals(received[0]).name}; the program in the VM was stopped and "
            "its output is kept (see the line above).",
            code=128 + received[0],
        )
    folders = {result.value.folder.parent for result in results.values() if result.ok}
    conclude(results, dict(errors), f"ran {what}; output gathered in {', '.join(map(str, folders))}")


# verifying --------------------------------------------------------------


def verify(config: Config, names: list[str], seconds: str | int, inventory: str = "", vm: str = "") -> None:
    """Every lab (or `names`) on every chosen host, checked against the catalog: a table, a
    summary under runs/, and an error naming each host that failed a lab. Input is checked first.
    A lone host's lab runs go straight under runs/; a room's in the verify's folder, one
    subfolder per host (as with lab.run)."""
    root = config.root
    seconds = check_verify(root, names, seconds)
    hosts = choose(config, inventory, vm)
    folder, runs_of = gathered_in(root, hosts, "verify")
    results = each(
        hosts, lambda host, connection: run.verify(host, connection, root, names, seconds, runs_of[host.name])
    )
    matrix = {name: result.value if result.ok else None for name, result in results.items()}
    summary = write_summary(
        folder,
        {
            "hosts": {
                name: {
                    "runs": runs_of[name].relative_to(root / "runs").as_posix(),
                    "labs": {row["lab"]: row for row in rows},
                }
                for name, rows in matrix.items()
                if rows is not None
            },
            "failed_hosts": {name: result.error for name, result in results.items() if not result.ok},
        },
    )
    console.verify_results(matrix)
    problems = {}
    for name, rows in matrix.items():
        failed = [row["lab"] for row in rows or [] if row["result"] != "PASS"]
        if failed:
            problems[name] = LabError(
                f"{len(failed)} of {len(rows)} labs failed ({', '.join(failed)}). Summary: {summary}"
            )
    labs = len(next(rows for rows in matrix.values() if rows is not None)) if any(matrix.values()) else 0
    conclude(results, problems, f"passed every lab (summary: {summary})", f"All {labs} labs passed. Summary: {summary}")


# checking a learner's exercise ------------------------------------------


def check(config: Config, program: str, number: str = "", inventory: str = "", vm: str = "") -> None:
    """lab.check: a learner's program (a file) run with its exercise's trigger on each host and
    graded; the exercise is --exercise, or the one `lab.new --exercise N` started it for. A folder
    (`exercises`) instead: each seat's own exercise programs, those the learner ran in its VM."""
    root = config.root
    exercises = load_exercises(root)
    if program.rstrip("/") == "exercises" or Path(program).is_dir():  # an instructor's checkout may have none
        return check_seats(config, exercises, inventory, vm)
    run.check_target(root, program, {})
    if not number and (number := exercise_of(Path(program))) is None:
        listing = ", ".join(f"{found.number} ({found.start})" for found in exercises.values())
        raise LabError(
            f"Which exercise is {program} for? Give --exercise N: {listing}. (`invoke lab.new NAME --exercise N` "
            "starts one that lab.check knows.)"
        )
    task = exercise(exercises, number)
    target = run.prepare(root, program, {})
    hosts = choose(config, inventory, vm)
    _, runs_of = gathered_in(root, hosts, "check")
    results = each(
        hosts,
        lambda host, connection: run.check_exercise(
            host, connection, target, run.source_of(target), task, runs_of[host.name]
        ),
    )
    console.check_results(task, {name: result.value for name, result in results.items() if result.ok})
    problems = {
        name: LabError(
            f"{program} does not pass exercise {task.number} yet: change it as the hint above says, then run "
            f"`invoke lab.check {program}` again."
        )
        for name, result in results.items()
        if result.ok and result.value.result != "PASS"
    }
    conclude(results, problems, f"passed exercise {task.number}")


def check_seats(config: Config, exercises: dict, inventory: str, vm: str) -> None:
    """Each seat's exercises checked: a seat x exercise board (PASS, FAIL with its hint, or not
    tried), and its summary under runs/ for lab.report. Learners' FAILs are progress, not errors."""
    root = config.root
    hosts = choose(config, inventory, vm)
    folder = run.free_folder(root / "runs", "check-room", datetime.now(timezone.utc))
    results = each(hosts, lambda host, connection: run.check_seat(host, connection, exercises, folder / host.name))
    seats = {name: result.value for name, result in results.items() if result.ok}
    summary = write_summary(
        folder,
        {
            "exercises": {number: found.title for number, found in exercises.items()},
            "hosts": {name: [dataclasses.asdict(check) for check in checks] for name, checks in seats.items()},
            "failed_hosts": {name: result.error for name, result in results.items() if not result.ok},
        },
    )
    console.progress(exercises, seats)
    conclude(results, {}, f"were checked (summary: {summary})", f"Summary: {summary}")
