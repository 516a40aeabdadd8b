"""Several lab VMs from one lab.yaml (vm.count: 2): creating them one after the other
against one `lab.up` that starts both (vagrant-libvirt brings them up in parallel).

    .venv/bin/python benchmarks/several_vms.py

Copies the project to a temporary folder (so the VMs are its own, never your lab VMs),
sets vm.count: 2 and measures in one run:
- `lab.up --vm lab`, then `lab.up --vm lab2`: one after the other;
- both destroyed, then one `lab.up` for both;
- `lab.status` of both (a `vagrant status` each, with Vagrant's start-up).
Prints a table, writes benchmarks/results/several_vms.json, destroys both VMs.
"""

import shutil
import tempfile
from pathlib import Path

from benchkit import copy_project, destroy_vms, report, timed_invoke


def invoke(project, *args):
    return round(timed_invoke(project, *args), 1)


def main():
    project = copy_project(Path(tempfile.mkdtemp(prefix="bpflab-bench-")))
    settings = project / "lab.yaml"
    settings.write_text(settings.read_text().replace("  count: 1", "  count: 2", 1))
    figures = {}
    try:
        invoke(project, "host.setup")
        invoke(project, "box.build")  # cached: kept out of the figures
        first = invoke(project, "lab.up", "--vm", "lab")
        second = invoke(project, "lab.up", "--vm", "lab2")
        figures["create lab, then lab2 (lab.up --vm, twice)"] = round(first + second, 1)
        invoke(project, "lab.destroy")
        figures["create both at once (lab.up)"] = invoke(project, "lab.up")
        figures["lab.status, both VMs"] = invoke(project, "lab.status")
    finally:
        destroy_vms(project)
        shutil.rmtree(project, ignore_errors=True)
    report(figures, "several_vms")


if __name__ == "__main__":
    main()
