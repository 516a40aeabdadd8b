"""The learner's loop for real, on a provisioned VM: setup, run, stop, gather, verify;
then a second VM of the same lab.yaml (vm.count: 2) checked by Ansible, the two as a
fleet (by --vm all and by an inventory), BCC from source and as an artifact, and the
second VM's life cycle addressed by name. The first VM starts from a plain box whose kernel
has aged (it came from bookworm-backports, which its apt sources lack): Fabric moves it to
Debian 12's current kernel and provisions everything. The second is a ready seat, built here."""

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from bpflab import box, config, run
from bpflab.commands import remote_run
from bpflab.hosts import PERSIST_VARIABLE, Held, Host
from bpflab.vm import LabVM

from ansible_run import ansible_playbook
from boxes import cache_box_with_a_kernel_without_headers, forget_cached_box
from fakebcc import fake_repository_tarball, use_fake_bcc
from netdrop import drop_ssh_connection, restore

pytestmark = pytest.mark.vm


class AnsibleSeat(threading.Thread):
    """Brings up the second VM (lab2) from a ready seat's box (`ready_settings`: lab.yaml with
    local_box.ready) and runs ansible-playbook on it, twice, while the first VM is provisioned
    (the two VMs share the host's 2 cores; this saves minutes of CI)."""

    def __init__(self, project, ready_settings):
        super().__init__(daemon=True)
        self.project, self.ready_settings, self.results, self.error = project, ready_settings, {}, None

    def run(self):
        try:
            self.project.invoke("lab.up", "--vm", "lab2", env={"BPFLAB_CONFIG": str(self.ready_settings)})
            self.results["booted"] = vm_shell(self.project, "uname -r", "lab2").strip()
            self.results["first run changed"] = ansible_playbook(self.project, "lab2")
            self.results["kernel"] = vm_shell(self.project, "uname -r", "lab2").strip()
            self.results["doctor"] = self.project.invoke("lab.doctor", "--vm", "lab2").stdout
            self.results["second run changed"] = ansible_playbook(self.project, "lab2")
        except BaseException as error:  # reported by the test that waits for it
            self.error = error


@pytest.fixture(scope="module")
def lab(project):
    """Two lab VMs from one lab.yaml (vm.count: 2): lab from a plain box whose kernel has aged,
    brought up, moved to a kernel with headers, provisioned (BCC from Debian's package) and synced
    by `lab.setup --vm lab`; meanwhile lab2 comes up from a ready seat's box and Ansible checks it.
    Each VM keeps the box it was made from."""
    settings = project.path / "lab.yaml"
    # Its own box recipe (another disk size): the cached box of that recipe is the aged one.
    text = settings.read_text().replace("  count: 1", "  count: 2", 1).replace("disk_gb: 16", "disk_gb: 15", 1)
    settings.write_text(text.replace("  ready: true", "  ready: false", 1))
    ready_settings = project.path / "lab-ready.yaml"
    ready_settings.write_text(text)
    project.invoke("host.setup")
    recipe = cache_box_with_a_kernel_without_headers(config.load(settings))
    project.cleanups.append(lambda: forget_cached_box(recipe))
    project.invoke("lab.up", "--vm", "lab")  # first: it loads the box into libvirt's pool and makes the network
    project.ansible_seat = AnsibleSeat(project, ready_settings)
    project.ansible_seat.start()
    project.first_setup = project.invoke("lab.setup", "--vm", "lab").stdout
    assert "The lab VM lab is ready" in project.first_setup
    yield project
    project.ansible_seat.join(timeout=1800)
    project.invoke("lab.destroy", check=False)


def interruptible():
    """In a child about to be signalled: default handling, even where this run was started in the
    background of a non-interactive shell or under nohup (which leave SIGINT or SIGHUP ignored, and
    children inherit that)."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


def vm_shell(project, command, machine=None):
    vm = LabVM(config.load(project.path / "lab.yaml"), machine)
    with Host.of_vm(vm).connect() as connection:  # closed: the tests poll, and sshd sessions add up
        return remote_run(connection, command, sudo=True, check=False).stdout


def latest_run(project, name):
    folder = sorted((project.path / "runs").glob(f"*-{name}"))[-1]
    return folder, json.loads((folder / "run.json").read_text())


def nothing_left_in_vm(project):
    leftovers = vm_shell(project, "pgrep -af '[p]ython3 -u' ; grep -c bcc_ /sys/kernel/tracing/kprobe_events; "
                                  "test -s /run/bpflab-lab.pid && echo pidfile-left; true")
    return leftovers.split() == ["0"]


@pytest.mark.timeout(2400)  # the module's two VMs: the first provisioned from a plain box with an aged kernel
def test_setup_moved_the_vm_to_a_kernel_with_headers(lab):
    """The box's backports kernel has no headers in the VM's sources: one `lab.setup` installed
    Debian 12's current kernel and its headers, removed the newer kernel, restarted the VM
    through Vagrant and went on."""
    setup = lab.first_setup
    first = re.search(r"VM: debian-12 amd64, kernel (\S+); BCC: package", setup)
    assert first and not first.group(1).startswith("6.1.0-"), setup  # bookworm-backports: 6.12
    assert f"The running kernel {first.group(1)} has no headers in the package sources any more" in setup
    target = re.search(r"Restarting the lab VM lab into kernel (6\.1\.0-\S+-amd64)", setup)
    assert target and f"VM: debian-12 amd64, kernel {target.group(1)}; BCC: package" in setup, setup
    assert vm_shell(lab, "uname -r").strip() == target.group(1)
    assert vm_shell(lab, f"ls /boot | grep -cF {first.group(1)} || true").strip() == "0"


def test_an_ssh_session_starts_no_motd_scripts(lab):
    """Every step of bpflab is an SSH session: the box's sshd leaves out pam_motd, which runs
    /etc/update-motd.d each time, and provisioning's apt kept that edit."""
    pam = vm_shell(lab, "cat /etc/pam.d/sshd").splitlines()
    assert "@include common-session" in pam
    assert not [line for line in pam if "pam_motd.so" in line and not line.startswith("#")], pam


def test_provisioning_again_changes_nothing(lab):
    again = lab.invoke("lab.provision")
    assert "nothing to do" in again.stdout
    for check in ("BPF syscall", "kprobes", "BTF", "tracefs", "kernel headers", "import bcc", "bpftrace"):
        assert check in again.stdout
    assert "missing" not in again.stdout


def test_provisioning_takes_the_doctors_slow_answers_again_until_a_package_changes(lab):
    """Importing bcc takes seconds under emulation: a provisioning run that changes nothing, and a
    run's facts, take the answer kept before; after a package change, or in `lab.doctor`, it is asked afresh."""
    keep_a_made_up_answer = "mkdir -p /var/lib/bpflab/doctor && echo 9.9.9 > /var/lib/bpflab/doctor/bcc"
    vm_shell(lab, keep_a_made_up_answer)
    assert "BCC 9.9.9" in lab.invoke("lab.provision").stdout
    lab.invoke("lab.run", "hello", "--duration", "1", "--no-trigger")
    assert latest_run(lab, "hello")[1]["bcc"] == "9.9.9"
    vm_shell(lab, "touch /var/lib/dpkg/status")
    again = lab.invoke("lab.provision").stdout
    assert "BCC 9.9.9" not in again and re.search(r"import bcc\s*│ ok\s*│ BCC \d", again), again
    vm_shell(lab, keep_a_made_up_answer)
    assert "BCC 9.9.9" not in lab.invoke("lab.doctor").stdout
    assert vm_shell(lab, "cat /var/lib/bpflab/doctor/bcc").strip() != "9.9.9"  # lab.doctor kept its own


def test_sync_without_changes_is_a_no_op(lab):
    assert "up to date" in lab.invoke("lab.sync").stdout


def test_run_with_trigger_and_duration(lab):
    result = lab.invoke("lab.run", "hello", "--duration", "4")
    assert "Hello World!" in result.stdout
    folder, record = latest_run(lab, "hello")
    assert record["stopped"] == "duration" and record["exit_status"] == 0 and record["leaked_probes"] == 0
    assert 0 < record["exit_after_stop_s"] < record["duration_s"] - 4  # the program's own cleanup, once stopped
    assert record["kernel"] and record["bcc"] and record["lines"] >= 2
    assert "Hello World!" in (folder / "output.log").read_text()
    assert nothing_left_in_vm(lab)


def test_ctrl_c_stops_the_program_and_leaves_nothing(lab):
    process = subprocess.Popen([sys.executable, "-m", "invoke", "lab.run", "hello-map"], cwd=lab.path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               preexec_fn=interruptible)
    for line in process.stdout:
        if "Hit Ctrl-C" in line:
            break
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    rest = process.stdout.read()
    assert process.wait(timeout=60) == 0, rest
    assert "Detaching." in rest
    _, record = latest_run(lab, "hello-map")
    assert record["stopped"] == "interrupted" and record["exit_status"] == 0
    assert nothing_left_in_vm(lab)


def test_two_runs_never_interleave(lab):
    first = subprocess.Popen([sys.executable, "-m", "invoke", "lab.run", "hello", "--duration", "12", "--no-trigger"],
                             cwd=lab.path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    for line in first.stdout:
        if "Hit Ctrl-C" in line:
            break
    second = lab.invoke("lab.run", "hello-file", "--duration", "2", check=False)
    first_output = first.stdout.read()
    assert first.wait(timeout=120) == 0
    assert second.returncode == 1 and "Another lab program is running" in second.stdout
    assert " opened " not in first_output
    _, record = latest_run(lab, "hello-file")
    assert record["stopped"] == "busy"


def test_learners_own_copy_runs_by_path(lab):
    lab.invoke("lab.new", "my-hello", "--template", "hello")
    result = lab.invoke("lab.run", "exercises/my-hello/my-hello.py", "--duration", "3", "--no-trigger")
    assert "Attached to execve" in result.stdout
    _, record = latest_run(lab, "my-hello")
    assert record["exit_status"] == 0


def test_compile_error_is_shown_readably(lab):
    folder = lab.path / "exercises" / "broken"
    lab.invoke("lab.new", "broken", "--template", "hello")
    source = folder / "broken.bpf.c"
    source.write_text(source.read_text().replace('bpf_trace_printk("Hello World!");', "return missing_name;"))
    result = lab.invoke("lab.run", "exercises/broken/broken.py", "--duration", "3", check=False)
    assert result.returncode == 1
    assert "did not compile" in result.stdout and "use of undeclared identifier 'missing_name'" in result.stdout
    assert "Traceback" not in result.stdout.split("did not compile")[1]


@pytest.mark.parametrize("args, message", [
    (["lab.run", "helo"], "Did you mean hello"),
    (["lab.run", "no/such/file.py"], "does not exist"),
    (["lab.run", "hello", "--duration", "-3"], "--duration must be"),
])
def test_bad_input_is_one_message(lab, args, message):
    result = lab.invoke(*args, check=False)
    assert result.returncode == 1 and message in result.stdout and "Traceback" not in result.stdout


def test_every_lab_passes_verify(lab):
    result = lab.invoke("lab.verify", "--seconds", "5", check=False)
    assert result.returncode == 0, result.stdout
    summary = json.loads(sorted((lab.path / "runs").glob("*-verify/summary.json"))[-1].read_text())
    assert len(summary) == 15 and all(row["result"] == "PASS" for row in summary), summary
    written = re.search(r"Report: (\S+\.html)", lab.invoke("lab.report").stdout).group(1)
    page = Path(written).read_text()
    verify_table = page[page.index("<h2>lab.verify</h2>"):page.index("<h2>Counts</h2>")]
    for row in summary:  # every lab, with its verdict linked to its output
        assert re.search(rf"<td>{re.escape(row['lab'])}</td><td class=\"PASS\"><a href=\"{row['folder']}/output.log",
                         verify_table), row["lab"]
    assert page.count("<figure><svg") >= 5  # the counting labs verify just ran, drawn


def test_verify_fails_when_the_kernel_side_does_nothing(lab):
    source = lab.path / "bpf" / "hello.bpf.c"
    original = source.read_text()
    source.write_text(original.replace('bpf_trace_printk("Hello World!");', ""))
    try:
        result = lab.invoke("lab.verify", "--names", "hello", "--seconds", "5", check=False)
    finally:
        source.write_text(original)
    assert result.returncode == 1 and "FAIL" in result.stdout and "no line matched 'Hello World!'" in result.stdout


# Any program a learner brings: the book's style, bpftrace, and every way a run can end. --------

PROGRAMS = Path(__file__).resolve().parent / "programs"


def bring(project, name):
    """A test program (written here in the book's style) as the learner's own file in the project."""
    folder = project.path / "exercises" / "book"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PROGRAMS / name, folder / name)
    return f"exercises/book/{name}"


def lab_run_in_background(project, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "invoke", "lab.run", *args], cwd=project.path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(project.path), **(env or {})},
                            preexec_fn=interruptible)


def read_until_attached(process, name):
    seen = []
    for line in process.stdout:
        seen.append(line)
        if f"{name}: attached (" in line:
            return seen
    raise AssertionError("".join(seen))


def lab_host(project, machine=None):
    return Host.of_vm(LabVM(config.load(project.path / "lab.yaml"), machine))


def kept(project):
    """The lab VM's keeper, once the command before has left it (it starts as that command ends)
    and it serves: its pid comes before its connection, and a command finding no socket yet
    connects on its own."""
    held = Held.of(lab_host(project))
    deadline = time.monotonic() + 30
    while held.pid() is None or not held.socket.exists():
        assert time.monotonic() < deadline, "no keeper holds the lab VM's connection"
        time.sleep(0.5)
    return held


def ssh_clients(address):
    """The pids of this host's processes with an SSH connection to address."""
    sockets = subprocess.run(["ss", "-tnpH", "dst", address], capture_output=True, text=True, check=True).stdout
    return {int(pid) for pid in re.findall(r":22\s.*?pid=(\d+),", sockets)}


def test_a_kept_connection_runs_each_command_in_a_shell_that_waited_for_it(lab):
    """Through the keeper a command starts in a shell already running (its sudo done), as root or
    as the user, with its own input, output, errors and exit status; over a connection of its own
    it starts afresh."""
    lab.invoke("lab.sync")
    kept(lab)
    age = 'echo "$(id -un) $(ps -o etimes= -p $PPID)"; echo oops >&2; exit 3'
    with lab_host(lab).connect() as held, lab_host(lab).open() as own:
        for sudo, user in ((True, "root"), (False, "vagrant"), (True, "root")):
            time.sleep(3)  # a shell of each kind is ready again, and has aged
            for connection, waited in ((held, True), (own, False)):
                result = remote_run(connection, age, sudo=sudo, check=False)
                name, seconds, error = result.stdout.split()
                assert (name, error, result.exited) == (user, "oops", 3)
                assert (int(seconds) >= 2) == waited, (sudo, waited, result.stdout)
        assert held.run("cat; echo done", in_stream=io.StringIO("from stdin\n"), hide=True).stdout == \
            "from stdin\ndone\n"


def test_later_commands_reach_the_vm_through_the_kept_connection(lab):
    """A command leaves a keeper holding its SSH connection; a run after it has no connection of its
    own, only the keeper has one. With BPFLAB_SSH_PERSIST=0 a run connects by itself, as before."""
    lab.invoke("lab.sync")
    held, address = kept(lab), lab_host(lab).endpoint.host
    for persist, own_connection in (("600", False), ("0", True)):
        process = lab_run_in_background(lab, bring(lab, "quiet_events.py"), "--no-trigger",
                                        env={PERSIST_VARIABLE: persist})
        seen = read_until_attached(process, "quiet_events")
        clients = ssh_clients(address)
        process.send_signal(signal.SIGINT)
        rest = process.stdout.read()
        assert process.wait(timeout=60) == 0, "".join(seen) + rest
        assert (process.pid in clients) == own_connection and held.pid() in clients, (persist, clients)
        assert latest_run(lab, "quiet_events")[1]["stopped"] == "interrupted"
    assert held.pid() is not None  # a command with BPFLAB_SSH_PERSIST=0 leaves the keeper alone


def test_a_program_without_a_ready_line_stops_after_its_duration(lab):
    """The book's style: no "attached" line. Attached is what the kernel says; the duration
    counts from there, the trigger fires, and the status of a program ended by SIGINT (130) is lab.run's."""
    result = lab.invoke("lab.run", bring(lab, "quiet_hello.py"), "--duration", "5",
                        "--trigger", "for i in 1 2 3; do /bin/true; done", check=False)
    assert result.returncode == 130, result.stdout
    assert "quiet_hello: attached (" in result.stdout and "quiet hello" in result.stdout
    assert "Traceback" not in result.stdout.split("quiet_hello: duration")[-1]
    _, record = latest_run(lab, "quiet_hello")
    assert record["stopped"] == "duration" and record["exit_status"] == 130 and record["trigger_error"] is None
    traced = record["duration_s"] - record["time_to_attach_s"]
    assert 4.5 <= traced <= 5 + 8, record
    assert nothing_left_in_vm(lab)


def test_no_line_from_before_a_run_is_shown(lab):
    """A program that wrote trace-pipe lines it never read leaves them in the kernel; the next
    reader of the trace pipe must not show them as its own."""
    lab.invoke("lab.run", bring(lab, "stale_writer.py"), "--duration", "3",
               "--trigger", "for i in 1 2 3 4 5; do /bin/true; done", check=False)
    assert int(vm_shell(lab, "grep -c 'stale line' /sys/kernel/tracing/trace")) > 0  # still in the kernel
    result = lab.invoke("lab.run", bring(lab, "quiet_hello.py"), "--duration", "3", "--no-trigger", check=False)
    assert "quiet_hello: attached (" in result.stdout and "stale line" not in result.stdout
    assert "stale line" not in (latest_run(lab, "quiet_hello")[0] / "output.log").read_text()


def lock_is_free(project):
    state = vm_shell(project, "test -s /run/bpflab-lab.pid && echo pidfile; "
                              "flock -n /run/bpflab-lab.lock true || echo locked; "
                              "bpftool perf list | wc -l; pgrep -c -f '[q]uiet_events'")
    return state.split() == ["0", "0"]


def end_the_run(project, process, how):
    """End the run; return the firewall rules to remove afterwards."""
    if how == "connection dropped (firewall, kept connection)":
        address = lab_host(project).endpoint.host
        clients = ssh_clients(address)
        assert process.pid not in clients, "the run connected on its own, not through the keeper"
        # Every connection of this host to the VM, as a failing network drops them: whichever keeper
        # serves the run (one that a command before left may still be ending), its connection goes.
        return [rule for pid in clients for rule in drop_ssh_connection(pid, address)]
    if how == "connection dropped (sshd child killed)":
        vm_shell(project, "p=$(cat /run/bpflab-lab.pid); while [ \"$(ps -o comm= -p $p)\" != sshd ]; do "
                          "p=$(ps -o ppid= -p $p | tr -d ' '); done; kill -9 $p")
    elif how == "connection dropped (firewall)":
        return drop_ssh_connection(process.pid, lab_host(project).endpoint.host)
    else:
        process.send_signal(getattr(signal, how.split()[0]))
    return []


@pytest.mark.parametrize("how, exit_code, stopped", [
    ("SIGINT", 0, "interrupted"), ("SIGTERM", 128 + 15, "interrupted"), ("SIGHUP", 128 + 1, "interrupted"),
    ("SIGKILL of the host process", -9, None), ("connection dropped (sshd child killed)", 1, "connection-lost"),
    ("connection dropped (firewall)", 1, "connection-lost"),
    ("connection dropped (firewall, kept connection)", 1, "connection-lost")])
def test_however_a_run_ends_the_program_stops_and_the_lock_is_free(lab, how, exit_code, stopped):
    """A quiet program (prints only on events) is stopped within seconds however lab.run ends;
    what was gathered is kept. A run goes through the keeper's connection, except where the run's
    own connection is dropped; a keeper whose connection dropped ends."""
    own = {PERSIST_VARIABLE: "0"} if how == "connection dropped (firewall)" else {}
    if not own:
        lab.invoke("lab.sync")  # leaves a keeper if there is none
        kept(lab)
    process = lab_run_in_background(lab, bring(lab, "quiet_events.py"), "--no-trigger", env=own)
    seen = read_until_attached(process, "quiet_events")
    vm_shell(lab, "sync")  # one event, so there is output to keep
    time.sleep(2)
    ended = time.monotonic()
    rules = end_the_run(lab, process, how)
    try:
        while not lock_is_free(lab):
            assert time.monotonic() - ended < 40, f"{how}: the lab is still running in the VM"
            time.sleep(0.5)
        free_after = round(time.monotonic() - ended, 1)
        rest = process.stdout.read()
        assert process.wait(timeout=60) == exit_code, "".join(seen) + rest
        if how == "connection dropped (firewall, kept connection)":
            held = Held.of(lab_host(lab))
            while held.pid() is not None:
                assert time.monotonic() - ended < 40, "the keeper of a dropped connection still runs"
                time.sleep(0.5)
    finally:
        restore(rules)
        if process.poll() is None:  # failed: its end stops the program in the VM, so later tests find it free
            process.kill()
    assert "Traceback" not in rest and nothing_left_in_vm(lab)
    folder = sorted((lab.path / "runs").glob("*-quiet_events"))[-1]
    assert "sync called" in (folder / "output.log").read_text()
    if stopped:
        assert json.loads((folder / "run.json").read_text())["stopped"] == stopped
    print(f"STOP-FIGURE {how}: lock free {free_after} s after the host-side end")
    # Every connection opened here or by lab.run was closed: leaked sessions pile up sshd processes.
    assert int(vm_shell(lab, "pgrep -c -x sshd")) <= 8


def test_exit_status_and_a_failing_program(lab):
    result = lab.invoke("lab.run", bring(lab, "exit_three.py"), check=False)
    assert result.returncode == 3 and "exited with status 3" in result.stdout and "Traceback" not in result.stdout
    record = latest_run(lab, "exit_three")[1]
    assert record["exit_status"] == 3 and record["exit_after_stop_s"] is None  # it ended by itself


def test_a_program_gone_the_moment_it_is_stopped_keeps_its_own_status(lab):
    """The duration's signal cuts the supervisor's wait short (status 138); a program already gone
    by then (here `sleep`, ended by SIGINT) must still report its own status, 130."""
    supervisor = (f"WORKDIR=/tmp NAME=quick WATCH=line DURATION=1 ALLOWANCE=20 GRACE=2 "
                  f"bash -c {shlex.quote(run.SUPERVISOR)} supervisor sleep 60")
    ends = vm_shell(lab, f"for i in 1 2 3; do {{ sleep 0.5; echo attached; sleep 3; }} | {supervisor} | tail -1; done")
    assert all(re.fullmatch(r"@@bpflab-stopped duration 130 0 0\.\d{3}", end) for end in ends.split("\n")[:3]), ends


def test_bpftrace_by_path_and_as_a_one_liner(lab):
    script = lab.invoke("lab.run", bring(lab, "opens.bt"), "--duration", "3", "--trigger", "cat /etc/hostname")
    assert re.search(r"open by cat: /etc/hostname", script.stdout)
    assert latest_run(lab, "opens")[1]["stopped"] == "duration"
    one_liner = lab.invoke("lab.trace", 'tracepoint:syscalls:sys_enter_execve { printf("exec %s\\n", '
                                        'str(args->filename)); }', "--duration", "3", "--trigger", "/bin/true")
    assert "exec /bin/true" in one_liner.stdout
    _, record = latest_run(lab, "trace")
    assert record["kind"] == "one-liner" and record["stopped"] == "duration" and record["exit_status"] == 0


def test_the_runner_stays_out_of_the_learners_trace(lab):
    """A --duration stop starts nothing in the VM: an exec logger sees none of the runner's commands."""
    result = lab.invoke("lab.run", bring(lab, "exec_logger.py"), "--duration", "4", "--no-trigger")
    commands = re.findall(r"^exec by (\S+)", result.stdout, re.MULTILINE)
    assert not {"sudo", "cat", "sleep", "flock", "kill"} & set(commands), commands
    assert commands.count("bash") <= 1, commands  # at most the one kernel query that saw it attach
    # A lab that says it is attached stops the kernel queries at once: none of them in its trace.
    opens = lab.invoke("lab.run", "hello-file", "--duration", "4", "--no-trigger")
    assert "bpftool" not in opens.stdout and "/proc/" not in opens.stdout


# The second VM: provisioned by Ansible alone, then a fleet with the first. ----------

@pytest.fixture(scope="module")
def seat_b(lab):
    """lab2, once the Ansible runs started with the first VM are done."""
    lab.ansible_seat.join(timeout=1800)
    if lab.ansible_seat.error:
        raise lab.ansible_seat.error
    return "lab2"


@pytest.mark.timeout(1800)
def test_ansible_on_a_ready_seat(lab, seat_b):
    """A VM from a ready seat's box, checked by `ansible-playbook` (package mode): its first run
    installs nothing and moves no kernel (the seat has Debian 12's current kernel, the one lab was
    moved to), the checks pass, and a second run changes nothing. (Its labs pass `lab.verify` in the
    fleet tests below.)"""
    results = lab.ansible_seat.results
    first = results["first run changed"]
    assert not {"Install the book's packages, bpftrace and the running kernel's headers",
                "Move to the distribution's current kernel, whose headers the sources have"} & set(first), first
    assert results["booted"] == results["kernel"] == vm_shell(lab, "uname -r").strip()
    assert "missing" not in results["doctor"] and "import bcc" in results["doctor"]
    assert results["second run changed"] == []


def write_room(folder, project):
    """The lab VMs as one Ansible inventory of seats, with their host keys recorded and checked."""
    project.invoke("lab.inventory", "--output", str(folder / "vms.yml"))
    machines = yaml.safe_load((folder / "vms.yml").read_text())["all"]["hosts"]
    hosts, known = {}, []
    for seat, machine in (("seat-a", "lab"), ("seat-b", "lab2")):
        host = machines[machine]
        host["ansible_ssh_common_args"] = f"-o UserKnownHostsFile={folder / 'known_hosts'}"
        hosts[seat] = host
        known.append(subprocess.run(["ssh-keyscan", "-p", str(host["ansible_port"]), host["ansible_host"]],
                                    capture_output=True, text=True, check=True).stdout)
    (folder / "known_hosts").write_text("".join(known))
    (folder / "room.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return folder


@pytest.fixture(scope="module")
def room(lab, seat_b, tmp_path_factory):
    return write_room(tmp_path_factory.mktemp("room"), lab)


def test_all_vms_of_the_checkout_set_up_and_verify_as_a_fleet(lab, seat_b):
    """`lab.setup` covers every VM of lab.yaml at once (Fabric finds nothing to do on the one
    Ansible provisioned), `lab.status` shows both, and `lab.verify --vm all` makes a host x lab table."""
    setup = lab.invoke("lab.setup")
    assert "lab: ready (nothing to provision)" in setup.stdout
    assert "lab2: ready (nothing to provision)" in setup.stdout and "All 2 hosts are ready" in setup.stdout
    status = lab.invoke("lab.status").stdout
    assert re.search(r"machine\s+lab\n", status) and re.search(r"machine\s+lab2\n", status)
    assert status.count("running") == 2
    verify = lab.invoke("lab.verify", "--vm", "all", "--names", "hello", "--names", "hello-tail", "--seconds", "5")
    assert "All 2 hosts passed every lab" in verify.stdout
    matrix = [line for line in verify.stdout.splitlines() if line.count("PASS") == 2]
    assert len(matrix) == 2, verify.stdout
    wrong = lab.invoke("lab.run", "hello", "--vm", "lab3", check=False)
    assert wrong.returncode == 1 and "defines the lab VMs lab, lab2 (vm.count: 2)" in wrong.stdout


def test_fleet_run_streams_and_gathers_per_host(lab, room):
    result = lab.invoke("lab.run", "hello", "--duration", "4", "--inventory", str(room / "room.yml"))
    assert re.search(r"seat-a\s*\| .*Hello World!", result.stdout)
    assert re.search(r"seat-b\s*\| .*Hello World!", result.stdout)
    folder = sorted((lab.path / "runs").glob("*-hello-fleet"))[-1]
    for seat in ("seat-a", "seat-b"):
        record = json.loads((folder / seat / "run.json").read_text())
        assert record["vm"] == seat and record["stopped"] == "duration" and record["lines"] >= 1
        assert "Hello World!" in (folder / seat / "output.log").read_text()


def test_fleet_refuses_a_changed_or_unknown_host_key(lab, room, tmp_path):
    """A host whose key differs from known_hosts, or is not in it, is an error naming it; the other still runs."""
    text = (room / "room.yml").read_text()
    seat_b = yaml.safe_load(text)["all"]["hosts"]["seat-b"]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    impostor = (tmp_path / "other.pub").read_text().split()[:2]
    lines = (room / "known_hosts").read_text().splitlines()
    seat_b_address = f"[{seat_b['ansible_host']}]:{seat_b['ansible_port']}" if seat_b["ansible_port"] != 22 \
        else seat_b["ansible_host"]
    kept = [line for line in lines if not line.startswith(seat_b_address + " ")]
    (tmp_path / "known_hosts").write_text("\n".join(kept + [f"{seat_b_address} {' '.join(impostor)}"]) + "\n")
    (tmp_path / "room.yml").write_text(text.replace(str(room / "known_hosts"), str(tmp_path / "known_hosts")))
    result = lab.invoke("lab.verify", "--inventory", str(tmp_path / "room.yml"), "--names", "hello",
                        "--seconds", "4", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert "seat-b" in result.stdout and "host key is not the one recorded" in result.stdout
    assert "seat-a:   PASS" in result.stdout

    # A host not recorded at all: refused with the line that records it.
    (tmp_path / "known_hosts").write_text("\n".join(kept) + "\n")
    unknown = lab.invoke("lab.run", "hello", "--duration", "3", "--inventory", str(tmp_path / "room.yml"), check=False)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stdout
    assert f"ssh-keyscan -p {seat_b['ansible_port']} {seat_b['ansible_host']} >> {tmp_path / 'known_hosts'}" in \
        " ".join(unknown.stdout.split())
    assert re.search(r"seat-a\s*\| .*Hello World!", unknown.stdout)


def test_fleet_goes_on_when_a_host_goes_down_mid_way(lab, seat_b, room):
    """seat-b is switched off during its first lab: it is reported, seat-a completes."""
    command = [sys.executable, "-m", "invoke", "lab.verify", "--inventory", str(room / "room.yml"),
               "--names", "hello", "--names", "hello-map", "--seconds", "5"]
    process = subprocess.Popen(command, cwd=lab.path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(lab.path)})
    domain = LabVM(config.load(lab.path / "lab.yaml"), seat_b).domain
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("seat-b: hello") and len([o for o in output if o.startswith("seat-b: hello")]) == 1:
            time.sleep(3)  # mid-way through its first lab
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", domain], check=True, capture_output=True)
    process.wait(timeout=900)
    text = "".join(output)
    print(text)
    assert process.returncode == 1 and "Traceback" not in text
    assert text.count("seat-a:   PASS") == 2
    assert re.search(r"stopped:\s+connection-lost", text) and "seat-b stopped answering SSH; 1 lab(s) not run" in text


# BCC from source (a stand-in) on lab, then as an artifact on lab2. --------

@pytest.fixture(scope="module")
def fake_bcc(lab, tmp_path_factory):
    """Settings for a stand-in BCC repository served to the VM from /srv, with its own artifact folder."""
    folder = tmp_path_factory.mktemp("fake-bcc")
    original = (lab.path / "lab.yaml").read_text()

    def use(install, version, build_on="vm"):
        repository = f"file://{folder / 'fake-bcc.git'}" if build_on != "vm" else "file:///srv/fake-bcc.git"
        use_fake_bcc(lab.path / "lab.yaml", original, install, version, folder / "artifacts", build_on, repository)

    use.artifacts = folder / "artifacts"
    use.repository = fake_repository_tarball(folder)
    yield use
    (lab.path / "lab.yaml").write_text(original)


def serve_fake_repository(project, fake_bcc):
    with Host.of_vm(LabVM(config.load(project.path / "lab.yaml"))).connect() as remote:
        remote.put(str(fake_bcc.repository), "/tmp/repo.tar.gz")
        remote_run(remote, "mkdir -p /srv && tar -xzf /tmp/repo.tar.gz -C /srv && chown -R root: /srv", sudo=True)


def test_bcc_source_build_mechanics(lab, fake_bcc):
    """`bcc.install: source` for real, with a stand-in for BCC's repository (GitHub is
    unreachable here): clone at a tag, build, install, stamp, export, skip, rebuild, fail.
    Runs after the labs: it replaces the distribution's BCC in the VM."""
    serve_fake_repository(lab, fake_bcc)
    fake_bcc("source", "v1")
    first = lab.invoke("lab.provision")
    assert "Removing the distribution's BCC" in first.stdout and "Building BCC v1" in first.stdout
    assert "BCC fake-v1" in first.stdout and "BCC artifact:" in first.stdout
    again = lab.invoke("lab.provision")
    assert "installed already" in again.stdout and "nothing to do" in again.stdout
    fake_bcc("source", "v2")
    rebuilt = lab.invoke("lab.provision")
    assert "Building BCC v2" in rebuilt.stdout and "BCC fake-v2" in rebuilt.stdout
    assert sorted(path.name for path in fake_bcc.artifacts.glob("*.json")) == [
        "bcc-v1-debian-12-amd64.json", "bcc-v2-debian-12-amd64.json"]
    fake_bcc("source", "v3-broken")
    broken = lab.invoke("lab.provision", check=False)
    assert broken.returncode == 1 and "the BCC build failed in the VM" in broken.stdout
    assert "error" in broken.stdout and (lab.path / "logs" / "lab" / "provision.log").exists()
    assert "Traceback" not in broken.stdout


def test_bcc_export_packs_the_build_and_its_runtime_needs(lab, fake_bcc):
    """`lab.bcc-export` by hand (v2 is still installed: the v3 build failed)."""
    for artifact in fake_bcc.artifacts.iterdir():
        artifact.unlink()
    fake_bcc("source", "v2")
    exported = lab.invoke("lab.bcc-export")
    assert "Exporting BCC v2 (debian-12 amd64)" in exported.stdout
    metadata = json.loads((fake_bcc.artifacts / "bcc-v2-debian-12-amd64.json").read_text())
    assert metadata["built"]["version"] == "v2" and "zlib1g" in metadata["runtime_packages"]
    listing = subprocess.run(["tar", "-tzf", str(fake_bcc.artifacts / "bcc-v2-debian-12-amd64.tar.gz")],
                             capture_output=True, text=True, check=True).stdout.split()
    assert "usr/lib/libfakebcc.so" in listing and "usr/lib/python3/dist-packages/bcc/__init__.py" in listing


def test_fleet_builds_once_and_installs_the_artifact_elsewhere(lab, seat_b, fake_bcc):
    """`bcc.install: source` across the checkout's VMs: the first builds (lab has the stand-in v2
    already), the other gets that build as an artifact in place of a build: lab2, which has
    only Debian's BCC, and its checks pass. lab2 was switched off above: `lab.setup` starts it."""
    fake_bcc("source", "v2")
    result = lab.invoke("lab.setup")
    assert "lab: ✓ BCC v2: installed already" in result.stdout
    assert "lab2: ✓ Removing the distribution's BCC" in result.stdout
    assert "lab2: ✓ Installing BCC v2 from bcc-v2-debian-12-amd64.tar.gz" in result.stdout
    assert "Building BCC" not in result.stdout and "All 2 hosts are ready" in result.stdout
    assert "BCC fake-v2" in lab.invoke("lab.doctor", "--vm", seat_b).stdout


def test_artifact_mode_refuses_a_version_it_does_not_have(lab, seat_b, fake_bcc):
    """`bcc.install: artifact` on lab2: v2 is there already; v9 was never exported."""
    fake_bcc("artifact", "v2")
    assert "nothing to do" in lab.invoke("lab.provision", "--vm", seat_b).stdout
    fake_bcc("artifact", "v9")
    refused = lab.invoke("lab.provision", "--vm", seat_b, check=False)
    assert refused.returncode == 1 and "has no BCC v9 built for debian-12 amd64" in refused.stdout
    assert "bcc-v2-debian-12-amd64" in refused.stdout and "Traceback" not in refused.stdout


def test_an_emulated_vm_gets_bcc_built_on_the_host(lab, seat_b, fake_bcc):
    """`build_on: auto` with a VM under software emulation: BCC (the stand-in's v1, from a repository
    on the host) is built on this host in a Debian 12 root and installed into lab2, which never
    built BCC (its v2 came as an artifact) and gets none of the build tools; its checks pass, the
    export is the same as a VM's, and provisioning again changes nothing."""
    fake_bcc("source", "v1", build_on="auto")
    built = lab.invoke("lab.provision", "--vm", seat_b).stdout
    assert "BCC: source, built on the host (the VM is emulated; the host builds at native speed)" in built
    assert "Building BCC v1 on this host for debian-12" in built
    assert "Installing BCC v1 from bcc-v1-debian-12-amd64.tar.gz" in built and "Building BCC v1 from" not in built
    metadata = json.loads((fake_bcc.artifacts / "bcc-v1-debian-12-amd64.json").read_text())
    assert metadata["built_on"] == "host" and "zlib1g" in metadata["runtime_packages"]
    assert (lab.path / "logs" / seat_b / "bcc-build.log").exists()
    stamp = json.loads(vm_shell(lab, "cat /var/lib/bpflab/bcc.json", seat_b))
    assert stamp["built"] == metadata["built"] and stamp["via"] == "host"
    assert vm_shell(lab, "command -v cmake || true", seat_b).strip() == ""
    assert "BCC fake-v1" in lab.invoke("lab.doctor", "--vm", seat_b).stdout
    assert "nothing to do" in lab.invoke("lab.provision", "--vm", seat_b).stdout


# The second VM's life cycle, addressed by name; then fewer VMs in lab.yaml. --------

VIRSH = ["virsh", "-c", "qemu:///system"]


def domain_state(domain):
    result = subprocess.run([*VIRSH, "domstate", domain], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def volume_exists(name):
    return subprocess.run([*VIRSH, "vol-info", "--pool", "default", name], capture_output=True).returncode == 0


def qemu_processes(domain):
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"guest={domain}".encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


@pytest.mark.timeout(1200)
def test_vm_life_cycle_by_name_then_a_lowered_count(lab, seat_b, fake_bcc):
    """Halt of lab2 alone and its recovery from a stale domain (--vm lab2) while lab runs on, made
    again as a ready seat whose BCC comes from source (the stand-in's v1, built on this host
    above): nothing to provision; then vm.count lowered to 1: lab.status warns of lab2, and
    lab.destroy removes lab and that leftover too, leaving nothing of either."""
    settings_file = lab.path / "lab.yaml"
    settings = config.load(settings_file)
    vm, first = LabVM(settings, seat_b), LabVM(settings, "lab")
    timings = {}

    def timed(name, *args):
        started = time.monotonic()
        result = lab.invoke(*args)
        timings[name] = round(time.monotonic() - started, 1)
        return result

    assert domain_state(vm.domain) == "running"
    kernel = vm_shell(lab, "uname -r", seat_b).strip()
    timed("lab.halt", "lab.halt", "--vm", seat_b)
    assert domain_state(vm.domain) == "shut off" and domain_state(first.domain) == "running"
    assert not (vm.state_dir / "ssh-config").exists()

    # Vagrant forgets the halted VM (its .vagrant/machines/ entry is gone): the next up clears the stale domain.
    shutil.rmtree(lab.path / ".vagrant" / "machines" / seat_b)
    fake_bcc("source", "v1", build_on="auto")
    settings_file.write_text(settings_file.read_text().replace("  ready: false", "  ready: true", 1))
    recovered = timed("lab.up (over a stale domain, a new ready seat)", "lab.up", "--vm", seat_b)
    assert f"Removing the stale libvirt domain {vm.domain}" in recovered.stdout
    assert "The lab VM lab is already running" not in recovered.stdout  # --vm lab2 leaves lab alone
    seat_recipe = box.current_recipe(config.load(settings_file))
    lab.cleanups.append(lambda: forget_cached_box(seat_recipe))  # its recipe names a folder of this run
    assert "Building BCC" not in recovered.stdout  # the seat took the build exported above
    assert vm_shell(lab, "uname -r", seat_b).strip() == kernel  # Debian 12's current kernel, as before
    provisioned = lab.invoke("lab.provision", "--vm", seat_b).stdout
    assert "BCC: source" in provisioned and "nothing to do" in provisioned and "Installing" not in provisioned
    stamp = json.loads(vm_shell(lab, "cat /var/lib/bpflab/bcc.json", seat_b))
    assert stamp["built"]["version"] == "v1" and stamp["via"] == "host"
    assert "BCC fake-v1" in lab.invoke("lab.doctor", "--vm", seat_b).stdout

    text = settings_file.read_text()
    settings_file.write_text(text.replace("  count: 2", "  count: 1", 1))
    try:
        status = lab.invoke("lab.status").stdout
        assert f"libvirt still has {vm.domain}" in " ".join(status.split()) and not re.search(r"machine\s+lab2", status)
        timed("lab.destroy (lab and the leftover lab2)", "lab.destroy")
    finally:
        settings_file.write_text(text)
    for domain in (vm.domain, first.domain):
        assert domain_state(domain) is None and not volume_exists(f"{domain}.img") and qemu_processes(domain) == []
    print("timings (s):", timings)
