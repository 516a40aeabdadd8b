"""However a run ends, how soon is the program gone from the VM? lab.run against plain SSH.

Needs the project's lab VM running and provisioned (`invoke lab.setup`). For each way of
ending (SIGINT, SIGTERM, SIGHUP and SIGKILL of the host process, the connection dropped by
killing its sshd or by a firewall rule on this host, which needs root and iptables) it
starts a program that prints only on events, ends the run that way, and measures the
seconds until the program is gone from the VM and bpflab's lock is free (capped). Plain
`ssh -F <vagrant ssh-config>` running the same program the same way is the baseline.
Prints a table and writes benchmarks/results/stop_times.json.

    .venv/bin/python benchmarks/stop_times.py [--cap 40]
"""

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from bpflab import config  # noqa: E402
from bpflab.commands import remote_run  # noqa: E402
from bpflab.hosts import Host  # noqa: E402
from bpflab.vm import LabVM  # noqa: E402

from benchkit import report  # noqa: E402
from netdrop import drop_ssh_connection, restore  # noqa: E402

PROGRAM = ROOT / "tests" / "programs" / "quiet_events.py"
ENDINGS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL", "sshd killed", "firewall"]


def default_signals():
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


class Lab:
    def __init__(self):
        self.vm = LabVM(config.load())
        self.host = Host.of_vm(self.vm)

    def shell(self, command: str) -> str:
        with self.host.connect() as connection:  # closed: polling would pile up sshd sessions
            return remote_run(connection, command, sudo=True, check=False).stdout

    def program_gone(self) -> bool:
        state = self.shell("pgrep -c -f '[q]uiet_events'; flock -n /run/bpflab-lab.lock true || echo locked")
        return state.split() == ["0"]

    def kill_sshd_of(self, pid_command: str) -> None:
        self.shell(
            f'p=$({pid_command}); while [ "$(ps -o comm= -p $p)" != sshd ]; do '
            "p=$(ps -o ppid= -p $p | tr -d ' '); done; kill -9 $p"
        )


def start(lab: Lab, way: str) -> subprocess.Popen:
    if way == "lab.run":
        command = [sys.executable, "-m", "invoke", "lab.run", str(PROGRAM), "--no-trigger"]
    else:
        remote = "/tmp/bench-quiet_events.py"
        with lab.host.connect() as connection:
            connection.put(str(PROGRAM), remote)
        command = ["ssh", "-F", str(lab.vm.state_dir / "ssh-config"), lab.vm.machine, f"sudo python3 -u {remote}"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=default_signals,
    )
    if way == "lab.run":  # attached, as lab.run says: a program stopped while BCC compiles stops only after it
        for line in process.stdout:
            if "quiet_events: attached (" in line:
                break
        time.sleep(1)
        return process
    deadline = time.monotonic() + 60
    while lab.program_gone():  # started and attached: its BPF programs are in the kernel
        assert time.monotonic() < deadline, f"{way}: the program did not start"
        time.sleep(0.5)
    time.sleep(6)  # attached (BCC compiles for a few seconds first)
    return process


def seconds_until_gone(lab: Lab, way: str, ending: str, cap: float) -> float | None:
    process = start(lab, way)
    rules = []
    ended = time.monotonic()
    if ending == "sshd killed":
        lab.kill_sshd_of("cat /run/bpflab-lab.pid" if way == "lab.run" else "pgrep -f -o '[q]uiet_events'")
    elif ending == "firewall":  # the connection a run goes through: the keeper's, if one holds the VM
        keeper = lab.host.held.pid() if way == "lab.run" else None
        rules = drop_ssh_connection(keeper or process.pid, lab.host.endpoint.host)
    else:
        process.send_signal(getattr(signal, ending))
    try:
        while not lab.program_gone():
            if time.monotonic() - ended > cap:
                lab.shell("pkill -INT -f '[q]uiet_events'")  # clean up for the next measurement
                return None
            time.sleep(0.3)
        return round(time.monotonic() - ended, 1)
    finally:
        restore(rules)
        process.kill()
        process.wait()
        time.sleep(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=float, default=40, help="give up after this many seconds (default 40)")
    options = parser.parse_args()
    lab = Lab()
    figures = {}
    for ending in ENDINGS:
        for way in ("lab.run", "plain ssh"):
            gone = seconds_until_gone(lab, way, ending, options.cap)
            figures[f"{ending}: {way}"] = gone if gone is not None else f"still running after {options.cap:g}"
            print(f"{ending:<12} {way:<10} {figures[f'{ending}: {way}']}", flush=True)
    report(figures, "stop_times")


if __name__ == "__main__":
    main()
