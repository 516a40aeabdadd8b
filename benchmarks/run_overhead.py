"""lab.run against plain SSH, side by side in one run (issue: lab.run benchmarks).

Needs the project's lab VM running and provisioned (`invoke lab.setup`). Prints a
table and writes the figures as JSON to benchmarks/results/run_overhead.json.

    .venv/bin/python benchmarks/run_overhead.py [--lines 200000] [--repeat 3]

- time to first line: `invoke lab.run FILE` vs `ssh -F <vagrant ssh-config>` vs
  `vagrant ssh -c`, each starting the same tiny Python program in the VM;
- streaming: a flood of N lines through `lab.run` (into runs/.../output.log) vs
  plain ssh into a file: seconds, lines per second, lines lost;
- no-op sync: `invoke lab.sync` as a user types it, and the sync itself in-process.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bpflab import config, sync  # noqa: E402
from bpflab.hosts import Host  # noqa: E402
from bpflab.vm import LabVM  # noqa: E402

INVOKE = [sys.executable, "-m", "invoke"]
FIRST = "import sys\nprint('first-line', flush=True)\n"
FLOOD = "import sys\nfor i in range(int(sys.argv[1])):\n    print(f'line {i:07d} ' + 'x' * 40)\n"


def first_line_seconds(command, env=None):
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
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
    return time.monotonic() - started, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()

    vm = LabVM(config.load())
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

    candidates = {
        "invoke lab.run": INVOKE + ["lab.run", str(work / "first.py"), "--no-trigger"],
        "ssh -F ssh-config": ssh + ["python3 -u /tmp/bench/first.py"],
        "vagrant ssh -c": ["vagrant", "ssh", vm.machine, "-c", "python3 -u /tmp/bench/first.py"],
    }
    first = {name: [first_line_seconds(command, vagrant_env) for _ in range(options.repeat)]
             for name, command in candidates.items()}

    subprocess.run(INVOKE + ["lab.run", str(work / "flood.py"), "--no-trigger", "--args", "10"],
                   cwd=ROOT, capture_output=True)
    run_seconds, _ = timed(INVOKE + ["lab.run", str(work / "flood.py"), "--no-trigger",
                                     "--args", str(options.lines)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    log = sorted((ROOT / "runs").glob("*-flood/output.log"))[-1]
    run_lines = sum(1 for line in log.open() if line.startswith("line "))
    with (work / "ssh-flood.txt").open("w") as sink:
        ssh_seconds, _ = timed(ssh + [f"python3 -u /tmp/bench/flood.py {options.lines}"], stdout=sink)
    ssh_lines = sum(1 for line in (work / "ssh-flood.txt").open() if line.startswith("line "))

    sync.push(remote, ROOT)
    sync_task, _ = timed(INVOKE + ["lab.sync"], capture_output=True)
    started = time.monotonic()
    sync.push(remote, ROOT)
    sync_inprocess = time.monotonic() - started

    figures = {
        "time_to_first_line_s": {name: round(statistics.median(values), 2) for name, values in first.items()},
        "flood": {
            "lines": options.lines,
            "lab.run": {"seconds": round(run_seconds, 2), "lines_per_s": round(run_lines / run_seconds),
                        "lines_lost": options.lines - run_lines},
            "ssh": {"seconds": round(ssh_seconds, 2), "lines_per_s": round(ssh_lines / ssh_seconds),
                    "lines_lost": options.lines - ssh_lines},
            "throughput_ratio_lab_run_vs_ssh": round((run_lines / run_seconds) / (ssh_lines / ssh_seconds), 2),
        },
        "noop_sync_s": {"invoke lab.sync": round(sync_task, 2), "in-process push": round(sync_inprocess, 2)},
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "run_overhead.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
