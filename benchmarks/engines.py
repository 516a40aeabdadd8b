"""The two VM engines side by side in one run (issue: bpflab without Vagrant).

    sudo .venv/bin/python benchmarks/engines.py [--engines vagrant,libvirt] [--repeat 3]

For each engine, in a private copy of the project (its VM is its own, never your lab VM) with
`vm.engine` set, from the cached ready box of lab.yaml's distribution (built first, not timed):
- a new VM: `invoke lab.up` until it answers SSH;
- a halted VM: `invoke lab.halt`, then `invoke lab.up` (both timed);
- a reset: after `lab.setup` took the ready snapshot and a learner broke the VM, `invoke lab.reset`
  then `invoke lab.run` of a tiny program until its first line: from the command to a working run;
each --repeat times (the median is shown), then `lab.destroy`. The new VM's first figure of the
libvirt engine includes loading the box's image into libvirt's pool once (shown apart). Prints a
table and writes benchmarks/results/engines.json.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from run_overhead import FIRST, first_line_seconds  # noqa: E402

from benchkit import copy_project, destroy_vms, report, timed_invoke  # noqa: E402


def reset_to_first_line(project: Path) -> float:
    """A learner's damage, then `lab.reset` and a run's first line: seconds from the command."""
    timed_invoke(project, "lab.status")  # keeps the VM's ssh_config
    ssh = ["ssh", "-F", str(project / ".vagrant" / "bpflab" / "lab" / "ssh-config"), "lab"]
    subprocess.run([*ssh, "sudo rm -rf /home/vagrant/bpflab /usr/bin/python3"], check=True, capture_output=True)
    started = time.monotonic()
    timed_invoke(project, "lab.reset")
    command = [sys.executable, "-m", "invoke", "lab.run", str(project / "first.py"), "--no-trigger"]
    return time.monotonic() - started + first_line_seconds(command, {"PYTHONPATH": str(project)}, cwd=project)


def measure(engine: str, folder: Path, repeat: int) -> dict:
    project = copy_project(folder / engine)
    settings = project / "lab.yaml"
    settings.write_text(settings.read_text().replace("  engine: auto", f"  engine: {engine}", 1))
    (project / "first.py").write_text(FIRST)
    timed_invoke(project, "box.build")
    new, halted, halts, resets = [], [], [], []
    try:
        for _ in range(repeat):
            new.append(timed_invoke(project, "lab.up"))
            timed_invoke(project, "lab.setup")  # the ready snapshot
            halts.append(timed_invoke(project, "lab.halt"))
            halted.append(timed_invoke(project, "lab.up"))
            resets.append(reset_to_first_line(project))
            timed_invoke(project, "lab.destroy")
    finally:
        destroy_vms(project)
    return {
        f"{engine}: new VM up (lab.up, first of {repeat}: {new[0]:.1f} s)": statistics.median(new),
        f"{engine}: halt (lab.halt)": statistics.median(halts),
        f"{engine}: halted VM up (lab.up)": statistics.median(halted),
        f"{engine}: reset to a run's first line (lab.reset + lab.run)": statistics.median(resets),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="vagrant,libvirt")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bpflab-engines-") as folder:
        for engine in options.engines.split(","):
            figures.update(
                {what: round(seconds, 1) for what, seconds in measure(engine, Path(folder), options.repeat).items()}
            )
    report(figures, "engines")


if __name__ == "__main__":
    main()
