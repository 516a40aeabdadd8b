"""lab.run, lab.sync, lab.provision and lab.verify against plain SSH, side by side in one run.

Needs the project's lab VM running and provisioned (`invoke lab.setup`); for the room
figures, a second one as well (vm.count: 2, `invoke lab.setup --vm all`). Prints a table
and writes the figures as JSON to benchmarks/results/run_overhead.json.

    .venv/bin/python benchmarks/run_overhead.py [--lines 200000] [--repeat 5] [--labs hello,hello-map]

- time to first line: `invoke lab.run FILE` (through the keeper a run before left, and with
  BPFLAB_SSH_PERSIST=0, connecting afresh) vs `ssh -F <vagrant ssh-config>` (afresh, and
  through its own ControlMaster kept open) vs `vagrant ssh -c`, each starting the same tiny
  Python program in the VM;
- streaming: a flood of N lines through `lab.run` (into runs/.../output.log) vs
  plain ssh into a file, --repeat times each, one after the other: the median's seconds and
  lines per second, and the most lines lost;
- no-op `lab.sync` (also afresh) and `lab.provision` as a user types them, against one plain
  SSH round trip (and one through the ControlMaster);
- `lab.verify`: per lab, bpflab's time beyond the lab's compile (time to attach), its
  --seconds and its exit once stopped (BCC detaching its probes, timed in the VM), from the
  runs' own records; and the verify's fixed cost (start, sync, facts);
- a room: `lab.verify --inventory` of the first lab VM and of it and lab2 (inventories written as
  `invoke lab.inventory` writes them) on the first of those labs, and the same
  lab over plain ssh (on a terminal, its trigger from a second ssh, Ctrl-C after --seconds) on
  one VM and on both at once, in turn --repeat times. Plain ssh's ratio is the machine's own
  share: where the host has fewer cores than the VMs' emulated vCPUs (vm.cpus), both grow.
  Each round's verify ratio is set against ssh's in that round, and every sample takes the
  machine's busy CPU-seconds (/proc/stat): cores left idle say whether it "has the cores".
  `--room-only` takes just these (into run_overhead_room.json).
"""

import argparse
import json
import operator
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bpflab import config  # noqa: E402
from bpflab.catalog import load_catalog  # noqa: E402
from bpflab.held import PERSIST_VARIABLE  # noqa: E402
from bpflab.hosts import Host  # noqa: E402
from bpflab.inventory import save_inventory  # noqa: E402
from bpflab.run import READY  # noqa: E402
from bpflab.runs import verify_rows  # noqa: E402
from bpflab.sync import REMOTE_ROOT  # noqa: E402
from bpflab.vm import LabVM, statuses  # noqa: E402

INVOKE = [sys.executable, "-m", "invoke"]
FIRST = "import sys\nprint('first-line', flush=True)\n"
FLOOD = "import sys\nfor i in range(int(sys.argv[1])):\n    print(f'line {i:07d} ' + 'x' * 40)\n"


def first_line_seconds(command, env=None, cwd=ROOT):
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    for line in process.stdout:
        if "first-line" in line:
            elapsed = time.monotonic() - started
            break
    else:
        raise SystemExit(f"no first line from {command}")
    process.stdout.read()
    process.wait()
    return elapsed


def timed(command, **kwargs):
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, **kwargs)
    if result.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed (exit {result.returncode})")
    return time.monotonic() - started


def median_of(repeat, measure):
    return round(statistics.median(measure() for _ in range(repeat)), 2)


def flood_figures(work, ssh, lines):
    """One flood of `lines` lines through lab.run (into runs/.../output.log), then one through plain
    ssh into a file: (seconds, lines that arrived) of each."""
    run_seconds = timed(
        INVOKE + ["lab.run", str(work / "flood.py"), "--no-trigger", "--args", str(lines)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = sorted((ROOT / "runs").glob("*-flood/output.log"))[-1]
    run_lines = sum(1 for line in log.open() if line.startswith("line "))
    with (work / "ssh-flood.txt").open("w") as sink:
        ssh_seconds = timed(ssh + [f"python3 -u /tmp/bench/flood.py {lines}"], stdout=sink)
    ssh_lines = sum(1 for line in (work / "ssh-flood.txt").open() if line.startswith("line "))
    return (run_seconds, run_lines), (ssh_seconds, ssh_lines)


def median_sample(samples):
    """Of (seconds, ...) samples, the one with the median seconds."""
    return sorted(samples)[len(samples) // 2]


def newest_rows():
    """The rows of the newest verify, of its one host."""
    (rows,) = verify_rows(sorted((ROOT / "runs").glob("*-verify*/summary.json"))[-1]).values()
    return rows


def verify_figures(labs, seconds):
    """Per lab, bpflab's own time in its run; and what a verify costs besides its runs."""
    names = [word for name in labs for word in ("--names", name)]
    wall = timed(INVOKE + ["lab.verify", *names, "--seconds", str(seconds)], capture_output=True)
    rows = newest_rows()
    exits = [row["exit_after_stop_s"] or 0 for row in rows]
    own = [row["duration_s"] - row["time_to_attach_s"] - seconds - exit for row, exit in zip(rows, exits, strict=True)]
    return {
        "labs": labs,
        "seconds_each": seconds,
        "wall_s": round(wall, 2),
        "compile_s": {row["lab"]: row["time_to_attach_s"] for row in rows},
        "own_time_per_lab_s": round(statistics.mean(own), 2),
        "program_exit_per_lab_s": round(statistics.mean(exits), 2),
        "fixed_cost_s": round(wall - sum(row["duration_s"] for row in rows), 2),
    }


def ssh_lab_seconds(settings, machine, lab, seconds):
    """A learner's way without bpflab: the lab on a terminal over plain ssh (-tt) until it says it
    is attached, its trigger from a second ssh, `seconds` more, then Ctrl-C; seconds to its exit."""
    ssh = ["ssh", "-F", str(LabVM(settings, machine).state_dir / "ssh-config")]
    started = time.monotonic()
    program = subprocess.Popen(
        ssh + ["-tt", machine, f"cd {REMOTE_ROOT}/labs && sudo python3 -u {lab}.py"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for line in program.stdout:
        if READY.search(line.decode(errors="replace")):
            break
    else:
        raise SystemExit(f"{lab} on {machine} ended before it was attached")
    trigger = subprocess.Popen(
        ssh + [machine, load_catalog(ROOT)[lab].trigger],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    time.sleep(seconds)
    program.stdin.write(b"\x03")  # the terminal makes it SIGINT, as a learner's Ctrl-C
    program.stdin.flush()
    program.stdout.read()
    program.wait()
    trigger.wait()
    return time.monotonic() - started


def at_once(measures):
    """Each measure in its own thread, all started together: the seconds until the last is done."""
    started = time.monotonic()
    with ThreadPoolExecutor(len(measures)) as pool:
        for future in [pool.submit(measure) for measure in measures]:
            future.result()
    return time.monotonic() - started


def busy_cpu_seconds():
    """CPU-seconds the machine has spent on anything but idling (/proc/stat): the VMs' emulation and
    every host process alike, bpflab's keeper included."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def room_figures(settings, labs, seconds, machines, repeat):
    """lab.verify on one host and on two at once, and the same labs over plain ssh likewise, taken
    in turn `repeat` times (medians; an emulated compile varies by a fifth from run to run): how much
    of a room's slow-down is the machine's (emulated vCPUs sharing its cores) and how much bpflab's.
    Each sample also takes the machine's busy CPU-seconds: the cores it had to spare tell whether
    it "has the cores", and bpflab's against ssh's tells what bpflab itself costs the machine."""
    names = [word for name in labs for word in ("--names", name)]
    rooms = Path(tempfile.mkdtemp(prefix="bench-room-"))
    inventories = {
        count: save_inventory(
            [Host.of_vm(LabVM(settings, machine)) for machine in machines[:count]], rooms / f"{count}-hosts.yml"
        )
        for count in (1, 2)
    }

    def verify(hosts):
        return timed(
            INVOKE + ["lab.verify", "--inventory", str(inventories[len(hosts)]), *names, "--seconds", str(seconds)],
            capture_output=True,
        )

    def plain(hosts):
        return at_once(
            [
                lambda machine=machine: sum(ssh_lab_seconds(settings, machine, lab, seconds) for lab in labs)
                for machine in hosts
            ]
        )

    def sample(way, hosts):
        busy = busy_cpu_seconds()
        wall = ways[way](hosts)
        return wall, busy_cpu_seconds() - busy

    ways = {"lab.verify": verify, "ssh": plain}
    rounds = [{(way, count): sample(way, machines[:count]) for way in ways for count in (1, 2)} for _ in range(repeat)]
    figures = {"labs": labs, "seconds_each": seconds, "vcpus_per_vm": settings.vm.cpus, "host_cores": os.cpu_count()}
    for way in ways:
        walls, busies = ({count: [taken[way, count][part] for taken in rounds] for count in (1, 2)} for part in (0, 1))
        figures[way] = {
            "hosts_1_s": round(statistics.median(walls[1]), 2),
            "hosts_2_s": round(statistics.median(walls[2]), 2),
            "ratio": round(statistics.median(map(operator.truediv, walls[2], walls[1])), 2),
            "busy_cpu_s_1": round(statistics.median(busies[1]), 1),
            "busy_cpu_s_2": round(statistics.median(busies[2]), 1),
            "cores_busy_2": round(
                statistics.median(busy / wall for busy, wall in zip(busies[2], walls[2], strict=True)), 2
            ),
        }
    # Each round's own ratio against ssh's in the same round: the machine's drift cancels out.
    figures["verify_ratio_vs_ssh_ratio"] = round(
        statistics.median(
            (taken["lab.verify", 2][0] / taken["lab.verify", 1][0]) / (taken["ssh", 2][0] / taken["ssh", 1][0])
            for taken in rounds
        ),
        2,
    )
    return figures


def table(figures):
    rows = (one_vm_rows(figures) if "verify" in figures else []) + (
        room_rows(figures["room"]) if "room" in figures else []
    )
    rows.insert(0, ("measure", "bpflab", "baseline", "ratio", "goal"))
    widths = [max(len(str(row[column])) for row in rows) for column in range(5)]
    for row in rows:
        print("  ".join(f"{str(cell):<{width}}" for cell, width in zip(row, widths, strict=True)))


def one_vm_rows(figures):
    first, flood, plain = figures["time_to_first_line_s"], figures["flood"], figures["ssh_round_trip_s"]
    held, kept_master = first["invoke lab.run"], first["ssh, its ControlMaster kept"]
    return [
        (
            "time to first line",
            f"{held} s",
            f"{first['ssh -F ssh-config']} s",
            f"{held / first['ssh -F ssh-config']:.2f}x",
            "<= 1.2x",
        ),
        ("  without a kept connection", f"{first['invoke lab.run, no kept connection']} s", "", "", ""),
        ("  against ssh's kept ControlMaster", f"{held} s", f"{kept_master} s", f"{held / kept_master:.2f}x", ""),
        (
            "lines/s streamed into a file",
            flood["lab.run"]["lines_per_s"],
            flood["ssh"]["lines_per_s"],
            f"{flood['throughput_ratio_lab_run_vs_ssh']}x",
            ">= 0.9x, 0 lost",
        ),
        ("lines lost", flood["lab.run"]["lines_lost"], flood["ssh"]["lines_lost"], "", "0"),
        (
            "no-op lab.sync as typed",
            f"{figures['noop_s']['invoke lab.sync']} s",
            f"{plain} s (ssh true)",
            f"{figures['noop_s']['invoke lab.sync'] / plain:.2f}x",
            "<= 1.2x",
        ),
        ("  without a kept connection", f"{figures['noop_s']['invoke lab.sync, no kept connection']} s", "", "", ""),
        ("no-op lab.provision as typed", f"{figures['noop_s']['invoke lab.provision']} s", "", "", "<= 3 s"),
        ("lab.verify: own time per lab", f"{figures['verify']['own_time_per_lab_s']} s", "", "", "<= 0.5 s"),
        ("  the lab's exit once stopped (not in it)", f"{figures['verify']['program_exit_per_lab_s']} s", "", "", ""),
        ("lab.verify: fixed cost", f"{figures['verify']['fixed_cost_s']} s", "", "", ""),
    ]


def room_rows(room):
    verify, plain = room["lab.verify"], room["ssh"]
    return [
        (
            "lab.verify on 1 host / 2 at once",
            f"{verify['hosts_1_s']} s / {verify['hosts_2_s']} s",
            f"{plain['hosts_1_s']} s / {plain['hosts_2_s']} s (ssh)",
            "",
            "",
        ),
        (
            "  2 hosts vs 1 (each round's ratio)",
            f"{verify['ratio']}x",
            f"{plain['ratio']}x (ssh)",
            f"{room['verify_ratio_vs_ssh_ratio']:.2f}x",
            "about 1x",
        ),
        (
            "  machine's busy CPU-s, 1 / 2 hosts",
            f"{verify['busy_cpu_s_1']} / {verify['busy_cpu_s_2']}",
            f"{plain['busy_cpu_s_1']} / {plain['busy_cpu_s_2']} (ssh)",
            "",
            "",
        ),
        (
            "  cores busy with 2 hosts",
            f"{verify['cores_busy_2']} of {room['host_cores']}",
            f"{plain['cores_busy_2']} of {room['host_cores']} (ssh)",
            "",
            "",
        ),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5, help="samples of each measure (medians)")
    parser.add_argument("--labs", default="hello,hello-map,hello-buffer", help="the labs lab.verify runs")
    parser.add_argument("--seconds", type=int, default=3, help="lab.verify --seconds")
    parser.add_argument(
        "--room-only",
        action="store_true",
        help="only the room's figures (into benchmarks/results/run_overhead_room.json)",
    )
    options = parser.parse_args()

    settings = config.load()
    vm = LabVM(settings)
    figures = {} if options.room_only else one_vm_figures(options, vm)
    others = [LabVM(settings, machine) for machine in settings.machines[1:]]
    running = [machine for machine, status in statuses(others).items() if status.running] if others else []
    if running:
        figures["room"] = room_figures(
            settings, options.labs.split(",")[:1], options.seconds, [vm.machine, running[0]], options.repeat
        )
    elif options.room_only:
        raise SystemExit("The room's figures need a second lab VM running: vm.count: 2, `invoke lab.setup --vm all`.")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    output = results / f"run_overhead{'_room' if options.room_only else ''}.json"
    output.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    table(figures)


def one_vm_figures(options, vm):
    """Everything but the room, on the first lab VM."""
    remote = Host.of_vm(vm).connect()
    ssh_config = vm.state_dir / "ssh-config"
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    (work / "first.py").write_text(FIRST)
    (work / "flood.py").write_text(FLOOD)
    remote.run("mkdir -p /tmp/bench", hide=True)
    remote.put(str(work / "first.py"), "/tmp/bench/first.py")
    remote.put(str(work / "flood.py"), "/tmp/bench/flood.py")
    vagrant_env = {"VAGRANT_CWD": str(ROOT), **vm.environment()}
    ssh = ["ssh", "-F", str(ssh_config), vm.machine]
    held_ssh = [
        "ssh",
        "-F",
        str(ssh_config),
        "-o",
        "ControlMaster=auto",
        "-o",
        f"ControlPath={work}/master",
        "-o",
        "ControlPersist=300",
        vm.machine,
    ]

    run_first = INVOKE + ["lab.run", str(work / "first.py"), "--no-trigger"]
    timed(run_first, capture_output=True)  # leaves the keeper that later commands connect through
    candidates = {
        "invoke lab.run": (run_first, {}),
        "invoke lab.run, no kept connection": (run_first, {PERSIST_VARIABLE: "0"}),
        "ssh -F ssh-config": (ssh + ["python3 -u /tmp/bench/first.py"], {}),
        "ssh, its ControlMaster kept": (held_ssh + ["python3 -u /tmp/bench/first.py"], {}),
        "vagrant ssh -c": (["vagrant", "ssh", vm.machine, "-c", "python3 -u /tmp/bench/first.py"], {}),
    }
    timed(held_ssh + ["true"])  # starts the ControlMaster
    first = {
        name: median_of(
            options.repeat, lambda command=command, env=env: first_line_seconds(command, {**vagrant_env, **env})
        )
        for name, (command, env) in candidates.items()
    }

    timed(INVOKE + ["lab.run", str(work / "flood.py"), "--no-trigger", "--args", "10"], capture_output=True)
    floods = [flood_figures(work, ssh, options.lines) for _ in range(options.repeat)]
    run_seconds, run_lines = median_sample([run for run, _ in floods])
    ssh_seconds, ssh_lines = median_sample([plain for _, plain in floods])
    most_lost = {
        "lab.run": options.lines - min(run[1] for run, _ in floods),
        "ssh": options.lines - min(plain[1] for _, plain in floods),
    }

    timed(INVOKE + ["lab.sync"], capture_output=True)
    noop = {
        task: median_of(options.repeat, lambda task=task: timed(INVOKE + [task], capture_output=True))
        for task in ("lab.sync", "lab.provision")
    }
    unkept = {**os.environ, PERSIST_VARIABLE: "0"}
    noop["lab.sync, no kept connection"] = median_of(
        options.repeat, lambda: timed(INVOKE + ["lab.sync"], capture_output=True, env=unkept)
    )

    return {
        "time_to_first_line_s": first,
        "flood": {
            "lines": options.lines,
            "lab.run": {
                "seconds": round(run_seconds, 2),
                "lines_per_s": round(run_lines / run_seconds),
                "lines_lost": most_lost["lab.run"],
            },
            "ssh": {
                "seconds": round(ssh_seconds, 2),
                "lines_per_s": round(ssh_lines / ssh_seconds),
                "lines_lost": most_lost["ssh"],
            },
            "throughput_ratio_lab_run_vs_ssh": round((run_lines / run_seconds) / (ssh_lines / ssh_seconds), 2),
        },
        "ssh_round_trip_s": median_of(options.repeat, lambda: timed(ssh + ["true"])),
        "ssh_round_trip_controlmaster_s": median_of(options.repeat, lambda: timed(held_ssh + ["true"])),
        "noop_s": {f"invoke {task}": seconds for task, seconds in noop.items()},
        "verify": verify_figures(options.labs.split(","), options.seconds),
    }


if __name__ == "__main__":
    main()
