"""A new seat, side by side in one run (issue: boxes per distribution, ready boxes).

    sudo .venv/bin/python benchmarks/new_seat.py [--distribution debian-13]

In a private copy of the project (its VMs are its own, never your lab VM):
- `box.build` cold (an empty box cache of its own) and cached;
- `lab.setup` of a new VM from that plain box (up, provision, sync);
- `box.package` of that VM, then `lab.setup` of a new VM from the ready box.
Prints a table, writes benchmarks/results/new_seat-<distribution>.json, destroys the
VM and removes the ready box it made from Vagrant.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bpflab.box import ready_box_description, ready_box_name  # noqa: E402

from benchkit import copy_project, destroy_vms, report  # noqa: E402
from boxes import remove_box  # noqa: E402


def timed(project: Path, *task: str, cache: Path | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": str(project), **({"XDG_CACHE_HOME": str(cache)} if cache else {})}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "invoke", *task], cwd=project, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"invoke {' '.join(task)} failed:\n{result.stdout}")
    return round(time.monotonic() - started, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distribution", default="debian-13")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-seat-"))
    project = copy_project(work / "project")
    settings = project / "lab.yaml"
    distribution = f"distribution: {options.distribution}"
    settings.write_text(settings.read_text().replace("distribution: debian-12", distribution))
    cold_cache = work / "cache"
    figures = {
        "box.build cold": timed(project, "box.build", cache=cold_cache),
        "box.build cached": timed(project, "box.build", cache=cold_cache),
    }
    ready = work / "seat.box"
    try:
        figures["lab.setup from the plain box"] = timed(project, "lab.setup", cache=cold_cache)
        figures["box.package"] = timed(project, "box.package", "--output", str(ready))
        timed(project, "lab.destroy")
        settings.write_text(settings.read_text().replace("box: local", f"box: {ready}"))
        figures["lab.setup from the ready box"] = timed(project, "lab.setup", cache=cold_cache)
    finally:
        destroy_vms(project)
        if ready.exists():
            remove_box(ready_box_name(ready_box_description(ready)))
    report(figures, f"new_seat-{options.distribution}")


if __name__ == "__main__":
    main()
