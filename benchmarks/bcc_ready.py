"""BCC ready on a fresh emulated VM, three ways side by side (issue: BCC from source, native speed).

    sudo .venv/bin/python benchmarks/bcc_ready.py [--vm-minutes 10] \
        [--host-git-config FILE] [--vm-git-config FILE]

On fresh VMs of a private copy of the project, with lab.yaml's BCC repository and version
(`bcc.install: source`), it times `lab.provision` from a new VM to BCC ready:
- built on the host (`build_on: host`) and installed as an artifact; the build root is made
  first unless it is cached, and the figure says which;
- the artifact of that build installed into another new VM (`bcc.install: artifact`);
- built in the VM (`build_on: vm`): a partial run of --vm-minutes, extrapolated from how far
  make got (its percentage) in that time; the figure says it is an estimate.
BCC's repository (GitHub) is not reachable from CI machines: point lab.yaml's repository at a
copy with git's `url.<base>.insteadOf` in the files given (the host's for the host build, the
VM's /root/.gitconfig for the VM build). Prints a table, writes benchmarks/results/bcc_ready.json.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from bpflab import buildroot, config  # noqa: E402
from bpflab.commands import remote_run  # noqa: E402
from bpflab.hosts import Host  # noqa: E402
from bpflab.vm import LabVM  # noqa: E402

from benchkit import copy_project, destroy_vms, report  # noqa: E402

PROGRESS = re.compile(r"^\[\s*[\d.]+s\] \[\s*(\d+)%\]")


def invoke(project, *args, env=None):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project,
        stdin=subprocess.DEVNULL,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(project), **(env or {})},
    )
    if result.returncode:
        raise SystemExit(f"invoke {' '.join(args)} failed:\n{result.stdout}")
    return round(time.monotonic() - started, 1), result.stdout


def set_bcc(project, install, build_on, artifacts):
    path = project / "lab.yaml"
    text = path.read_text()
    text = re.sub(r"install: \w+", f"install: {install}", text, count=1)
    text = re.sub(r"build_on: \w+", f"build_on: {build_on}", text, count=1)
    text = re.sub(r"artifacts: \S+", f"artifacts: {artifacts}", text, count=1)
    text = text.replace("  ready: true", "  ready: false", 1)  # a plain box: BCC comes by provisioning, timed
    path.write_text(text)


def fresh_vm(project, vm_git_config):
    destroy_vms(project)
    invoke(project, "lab.up")
    if vm_git_config:
        with Host.of_vm(LabVM(config.load(project / "lab.yaml"))).connect() as connection:
            connection.put(str(vm_git_config), "/tmp/gitconfig")
            remote_run(connection, "install -m 644 /tmp/gitconfig /root/.gitconfig", sudo=True)


def interruptible():
    """Default SIGINT in the child, even where this benchmark runs in a shell's background."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def partial_vm_build(project, minutes, env):
    """Seconds to BCC ready with a build in the VM, estimated from `minutes` of it."""
    log = project / "logs" / "lab" / "bcc-build.log"
    started = time.monotonic()
    provision = subprocess.Popen(
        [sys.executable, "-m", "invoke", "lab.provision"],
        cwd=project,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(project), **env},
        preexec_fn=interruptible,
    )
    make_started = first = None
    deadline = started + minutes * 60
    while time.monotonic() < deadline and provision.poll() is None:
        time.sleep(10)
        done = [
            int(found.group(1))
            for line in (log.read_text(errors="replace").splitlines() if log.exists() else [])
            if (found := PROGRESS.match(line))
        ]
        if done and make_started is None:
            make_started, first = time.monotonic(), done[-1]
    provision.send_signal(signal.SIGINT)
    try:
        provision.wait(timeout=60)
    except subprocess.TimeoutExpired:
        provision.kill()
        provision.wait()
    if provision.returncode == 0:
        return round(time.monotonic() - started, 1), "measured (it finished)"
    if make_started is None or done[-1] <= first:
        return None, f"make did not progress within {minutes} min"
    rate = (done[-1] - first) / (time.monotonic() - make_started)
    return round(make_started - started + (100 - first) / rate, 1), f"estimated: {done[-1]}% after {minutes} min"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vm-minutes", type=float, default=10)
    parser.add_argument("--host-git-config", type=Path)
    parser.add_argument("--vm-git-config", type=Path)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bpflab-bcc-ready-"))
    project = copy_project(work / "project")
    artifacts = work / "artifacts"
    env = {"GIT_CONFIG_GLOBAL": str(options.host_git_config)} if options.host_git_config else {}
    settings = config.load(project / "lab.yaml")
    figures = {}
    try:
        invoke(project, "host.setup")
        fresh_vm(project, options.vm_git_config)
        distribution = settings.vm.distribution
        packages = settings.provision.distributions[distribution]["bcc_build"]
        root_path = buildroot.BuildRoot.for_vm(settings, distribution, packages).path
        cached = (root_path / ".complete").exists()
        # A whole build: an earlier run's source and objects would let make resume.
        subprocess.run(
            ["rm", "-rf", str(root_path / "opt" / "bpflab" / f"bcc-{settings.provision.bcc['version']}")], check=True
        )
        set_bcc(project, "source", "host", artifacts)
        seconds, output = invoke(project, "lab.provision", env=env)
        version = re.search(r"BCC (\S+)", output.split("import bcc", 1)[1]).group(1)
        root = "its build root cached" if cached else "its build root made first"
        figures[f"built on the host, BCC {version} ({root}), lab.provision"] = seconds
        verify = subprocess.run(
            [sys.executable, "-m", "invoke", "lab.verify", "--seconds", "8"],
            cwd=project,
            stdin=subprocess.DEVNULL,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(project)},
        )
        print(verify.stdout)
        passed = re.search(r"All (\d+) labs passed|(\d+) of (\d+) labs failed", verify.stdout)
        figures["(labs passing lab.verify with that BCC: see the table above)"] = passed.group(0) if passed else "?"

        fresh_vm(project, options.vm_git_config)
        set_bcc(project, "artifact", "host", artifacts)
        figures["artifact install, lab.provision"] = invoke(project, "lab.provision")[0]

        fresh_vm(project, options.vm_git_config)
        set_bcc(project, "source", "vm", artifacts)
        seconds, how = partial_vm_build(project, options.vm_minutes, env)
        figures[f"built in the VM, lab.provision ({how})"] = seconds
    finally:
        destroy_vms(project)
        report(figures, "bcc_ready")


if __name__ == "__main__":
    main()
