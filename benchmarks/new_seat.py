"""A new seat, today's path and the ready seat side by side in one run (issue: seats ready at native speed).

    sudo .venv/bin/python benchmarks/new_seat.py [--distribution debian-12] [--arch arm64] [--ways ready]

In a private copy of the project (its VMs are its own, never your lab VM) and a box cache of its
own, with the boxes removed from Vagrant and libvirt's pool first (nothing cached), for each way:
- plain: `local_box.ready: false`, the box of the base system; provisioning installs the rest in
  the VM under emulation (the path before ready seats);
- ready: `local_box.ready: true`, box.build installs it all at native speed;
it times README command 1 after host.setup (`lab.setup`, then `lab.run hello --duration 10`),
split into the box, the rest of the setup and the first lab; then a second seat from the cached
box (`lab.destroy`, `lab.setup`, `lab.run`). `--arch arm64` takes an arm64 seat (on an x86_64
host: boxes built through qemu-user, VMs under emulation); `--ways ready` only the ready seat,
beside a figure of the plain way measured before. Prints a table, writes
benchmarks/results/new_seat-<distribution>[-<arch>].json, destroys the VMs and removes the boxes
it made.
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

from bpflab import box, config  # noqa: E402

from benchkit import copy_project, destroy_vms, report  # noqa: E402
from boxes import remove_box  # noqa: E402

WAYS = {"plain": "  ready: false", "ready": "  ready: true"}


def timed(project: Path, cache: Path, *task: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(project), "XDG_CACHE_HOME": str(cache)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "invoke", *task],
        cwd=project,
        env=env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if result.returncode:
        raise SystemExit(f"invoke {' '.join(task)} failed:\n{result.stdout}")
    return round(time.monotonic() - started, 1)


def seat(project: Path, cache: Path, way: str) -> dict:
    settings = project / "lab.yaml"
    settings.write_text(settings.read_text().replace("  ready: true", WAYS[way]).replace("  ready: false", WAYS[way]))
    os.environ["XDG_CACHE_HOME"] = str(cache)
    remove_box(box.current_recipe(config.load(settings)).box_name)  # not in Vagrant, not in libvirt's pool
    figures = {"box.build (cold)": timed(project, cache, "box.build")}
    figures["lab.setup: up, provision, sync"] = timed(project, cache, "lab.setup")
    figures["first lab.run hello --duration 10"] = timed(project, cache, "lab.run", "hello", "--duration", "10")
    figures["command 1 after host.setup"] = round(sum(figures.values()), 1)
    timed(project, cache, "lab.destroy")
    again = timed(project, cache, "lab.setup") + timed(project, cache, "lab.run", "hello", "--duration", "10")
    figures["a new seat from the cached box, through its first lab"] = round(again, 1)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distribution", default="debian-12")
    parser.add_argument("--arch", default="auto", help="vm.arch: auto (the host's), amd64 or arm64")
    parser.add_argument("--ways", default=",".join(WAYS), help="plain, ready or both (plain,ready)")
    options = parser.parse_args()
    ways = [way for way in options.ways.split(",") if way]
    if not ways or set(ways) - set(WAYS):
        parser.error(f"--ways takes plain, ready or both, not {options.ways!r}")
    work = Path(tempfile.mkdtemp(prefix="bench-seat-"))
    project = copy_project(work / "project")
    settings = project / "lab.yaml"
    distribution = f"distribution: {options.distribution}"
    settings.write_text(
        settings.read_text()
        .replace("distribution: debian-12", distribution)
        .replace("arch: auto", f"arch: {options.arch}")
    )
    figures = {}
    try:
        for way in ways:
            for what, seconds in seat(project, work / f"cache-{way}", way).items():
                figures[f"{way}: {what}"] = seconds
            destroy_vms(project)
    finally:
        destroy_vms(project)
        for way in ways:
            os.environ["XDG_CACHE_HOME"] = str(work / f"cache-{way}")
            seat_settings = config.load(settings)
            for recipe in box.cached_recipes():
                if recipe.distribution == seat_settings.vm.distribution:
                    remove_box(recipe.box_name)
    suffix = "" if options.arch == "auto" else f"-{options.arch}"
    report(figures, f"new_seat-{options.distribution}{suffix}")


if __name__ == "__main__":
    main()
