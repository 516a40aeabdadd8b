"""What the VM benchmarks share: a private copy of the project, its clean-up, the report."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["Vagrantfile", "lab.yaml", "tasks.py", "bpflab", "labs", "bpf", "ansible"]


def copy_project(folder: Path) -> Path:
    """The project in `folder`: its VMs are the benchmark's own, never your lab VMs."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / name)
    return folder


def timed_invoke(project: Path, *task: str) -> float:
    """Seconds that `invoke TASK` takes in the copy `project`; its failure ends the benchmark."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "invoke", *task],
        cwd=project,
        stdin=subprocess.DEVNULL,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(project)},
    )
    if result.returncode:
        raise SystemExit(f"invoke {' '.join(task)} failed in {project}:\n{result.stdout}")
    return time.monotonic() - started


def destroy_vms(project: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "invoke", "lab.destroy"],
        cwd=project,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(project)},
        capture_output=True,
    )


def report(figures: dict, name: str) -> None:
    """Print the figures as a table and write them to benchmarks/results/NAME.json."""
    width = max(map(len, figures))
    for what, value in figures.items():
        print(f"{what:<{width}}  {value}{'' if 'changed' in what else ' s'}")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
