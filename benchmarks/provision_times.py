"""Provisioning times side by side, on a fresh VM of its own (issues: provisioning, Ansible).

    .venv/bin/python benchmarks/provision_times.py

Copies the project to a temporary folder (so the VM is its own, never your lab VM),
creates a VM and measures, in one run:
- cold `invoke lab.provision` (bcc.install: package) on the new VM;
- no-op re-provision: `invoke lab.provision` against `ansible-playbook ansible/site.yml`;
- BCC from source against the same BCC from an artifact. BCC's own source is not
  reachable here, so both use the stand-in from tests/fakebcc.py (a tiny CMake
  project): the figures show the fixed costs of each path, not a real BCC build.
Prints a table, writes benchmarks/results/provision_times.json, destroys the VM.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bpflab import config, connection  # noqa: E402
from bpflab.vm import LabVM  # noqa: E402
from fakebcc import fake_repository_tarball, use_fake_bcc  # noqa: E402

PROJECT_FILES = ["Vagrantfile", "lab.yaml", "tasks.py", "bpflab", "labs", "bpf", "ansible"]


def invoke(project, *args):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=project, stdin=subprocess.DEVNULL,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(project)})
    if result.returncode:
        raise SystemExit(f"invoke {' '.join(args)} failed:\n{result.stdout}")
    return round(time.monotonic() - started, 1), result.stdout


def ansible_playbook(project):
    invoke(project, "lab.inventory")
    started = time.monotonic()
    result = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                             ".vagrant/bpflab/inventory.yml", "ansible/site.yml"], cwd=project, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    if result.returncode:
        raise SystemExit(f"ansible-playbook failed:\n{result.stdout}")
    changed = int(re.search(r"changed=(\d+)", result.stdout).group(1))
    return round(time.monotonic() - started, 1), changed


def main():
    work = Path(tempfile.mkdtemp(prefix="bpflab-bench-"))
    project = work / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, project / name)
    settings = project / "lab.yaml"
    original = settings.read_text()
    figures = {}
    try:
        invoke(project, "host.setup")
        figures["lab.up (create)"] = invoke(project, "lab.up")[0]
        figures["lab.provision, cold (package)"] = invoke(project, "lab.provision")[0]
        figures["lab.provision, no-op"] = invoke(project, "lab.provision")[0]
        seconds, changed = ansible_playbook(project)
        figures["ansible-playbook, no-op"] = seconds
        figures["ansible-playbook, changed tasks on the no-op run"] = changed

        remote = connection.connect(LabVM(config.load(settings)))
        remote.put(str(fake_repository_tarball(work)), "/tmp/repo.tar.gz")
        connection.remote_run(remote, "mkdir -p /srv && tar -xzf /tmp/repo.tar.gz -C /srv", sudo=True)
        use_fake_bcc(settings, original, "source", "v1", work / "artifacts")
        figures["stand-in BCC: source build + export"] = invoke(project, "lab.provision")[0]
        # Forget the build in the VM, then install the same version from the artifact.
        connection.remote_run(remote, "rm -f /var/lib/bpflab/bcc.json", sudo=True)
        use_fake_bcc(settings, original, "artifact", "v1", work / "artifacts")
        seconds, output = invoke(project, "lab.provision")
        assert "Installing BCC v1 from" in output, output
        figures["stand-in BCC: artifact install"] = seconds
    finally:
        settings.write_text(original)
        subprocess.run([sys.executable, "-m", "invoke", "lab.destroy"], cwd=project, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(project)}, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}{'' if 'changed' in name else ' s'}")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "provision_times.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
