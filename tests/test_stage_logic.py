"""What the sync, provisioning and run stages send to a machine and record, checked
against a recording connection (no VM): the real-VM tests prove the commands work."""

import hashlib
import json
import time

import pytest

from bpflab import config, console, provision, run, sync
from bpflab.errors import LabError
from bpflab.runs import RunRecord

from recording import RecordingConnection, RecordingHost

ROOT = config.PROJECT_ROOT


def remote_listing(files):
    return "".join(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  ./{name}\n" for name, path in files.items())


def unsynced(listing):
    """What Tree.check_script prints in a VM whose files differ: its manifest, marked."""
    return "".join(f"{sync.UNSYNCED} {line}\n" for line in listing.splitlines()) + f"{sync.UNSYNCED}\n"


def test_sync_with_nothing_changed_is_one_round_trip():
    connection = RecordingConnection([("sha256sum", "")])
    assert sync.push(connection, ROOT).empty
    assert len(connection.commands) == 1 and not connection.uploads


def test_the_vm_is_checked_against_the_hosts_manifest_and_its_file_count():
    """One sha256sum checks every file the host has; a count of the VM's files finds the extra."""
    check = sync.labs_tree(ROOT).check_script()
    files = sync.tree_files(ROOT)
    digest = hashlib.sha256(files["labs/hello.py"].read_bytes()).hexdigest()
    assert f"{digest}  labs/hello.py\n" in check and f"[ $count = {len(files)} ]" in check
    assert "for file in labs/** bpf/**" in check


def test_sync_uploads_changes_and_deletes_leftovers_in_one_command():
    files = sync.tree_files(ROOT)
    listing = remote_listing({name: path for name, path in files.items() if name != "labs/hello.py"})
    listing += f"{'0' * 64}  ./labs/gone.py\n"
    connection = RecordingConnection([("sha256sum", unsynced(listing))])
    difference = sync.push(connection, ROOT)
    assert difference.upload == ["labs/hello.py"] and difference.delete == ["labs/gone.py"]
    (upload,) = connection.uploads
    assert upload.startswith("/tmp/bpflab-sync-") and upload.endswith(".tar.gz")
    (apply,) = connection.ran("tar -xzf")
    assert "rm -f -- labs/gone.py" in apply and len(connection.commands) == 2


def facts_output(installed, kernel="6.1.0-28-amd64", stamp="", virt=""):
    return (
        f"distribution=debian-12\narch=amd64\nkernel={kernel}\nvirt={virt}\ncpus=2\nmemory_kb=2000000\n"
        f"python_link=python3\nsshd_keepalive={' '.join(provision.SSHD_KEEPALIVE.split())}\nstamp={stamp}\n"
        f"no_candidate=\nstatuses={' '.join(f'{name}:installed' for name in installed)} gone:config-files\n"
    )


def debian_packages(settings, kernel="6.1.0-28-amd64"):
    distro = settings.provision.distributions["debian-12"]
    return distro["packages"] + distro["bcc_package"] + [f"linux-headers-{kernel}"]


def test_a_provisioned_machine_gets_only_the_facts_read(tmp_path):
    settings = config.load()
    connection = RecordingConnection([("distribution=", facts_output(debian_packages(settings)))])
    outcome = provision.apply(connection, settings, tmp_path / "provision.log")
    assert outcome == provision.Outcome(False, "package") and len(connection.commands) == 1


def test_a_machine_with_nothing_to_provision_is_checked_in_the_same_round_trip(tmp_path):
    """The doctor runs beside the facts; with nothing changed, its rows are the answer."""
    settings = config.load()
    output = facts_output(debian_packages(settings)) + "check|kernel|ok|6.1.0-28-amd64 x86_64\ncheck|BTF|missing|no\n"
    connection = RecordingConnection([("distribution=", output)])
    outcome = provision.apply(connection, settings, tmp_path / "provision.log")
    assert outcome.checks == [("kernel", True, "6.1.0-28-amd64 x86_64"), ("BTF", False, "no")]
    (facts,) = connection.commands
    assert "DOCTOR=" in facts and "import bcc" in facts


@pytest.mark.parametrize("virt", ["none", "qemu"])
def test_missing_packages_are_installed_in_one_apt_call(tmp_path, virt):
    """A VM's dpkg skips syncing every file (a machine's does not)."""
    settings = config.load()
    have = [name for name in debian_packages(settings) if name not in ("bpftrace", "linux-headers-6.1.0-28-amd64")]
    connection = RecordingConnection([("distribution=", facts_output(have, virt=virt)), ("apt-unavailable", "")])
    outcome = provision.apply(connection, settings, tmp_path / "provision.log")
    (install,) = connection.ran("apt-get .* install")
    assert outcome.changed and not outcome.restart_into
    assert install.endswith("install --no-install-recommends bpftrace linux-headers-6.1.0-28-amd64' 2>&1")
    assert (provision.UNSAFE_IO in install) == (virt == "qemu")
    assert connection.ran("apt-get .* update") and not connection.ran("purge|git clone|bpflab-kernels")


@pytest.mark.parametrize("retire", ["linux-image-6.12.12+bpo-amd64", ""])
def test_a_kernel_whose_headers_are_gone_is_replaced_by_the_distributions_current_one(tmp_path, retire):
    """A box's backports kernel (newer: it must go, or it would boot again) or a kernel an update
    replaced (older: the new one boots first anyway): the current kernel and its headers come
    with the other packages, and provisioning stops there for a restart into it."""
    settings = config.load()
    aged = "6.12.12+bpo-amd64" if retire else "6.1.0-27-amd64"
    have = [name for name in debian_packages(settings, aged) if not name.startswith("linux-headers")]
    connection = RecordingConnection(
        [
            ("distribution=", facts_output(have, kernel=aged)),
            ("apt-unavailable", f"linux-headers-{aged}\n"),
            ("bpflab-kernels", f"target=6.1.0-28-amd64\nretire={retire}\n"),
        ]
    )
    outcome = provision.apply(connection, settings, tmp_path / "provision.log")
    assert outcome == provision.Outcome(True, "package", "6.1.0-28-amd64")
    (install,) = connection.ran("apt-get .* install")
    assert (
        install.endswith(
            "install --no-install-recommends linux-image-6.1.0-28-amd64 linux-headers-6.1.0-28-amd64' 2>&1"
        )
        and aged not in install
    )
    purged = connection.ran("removing-running-kernel boolean false.*apt-get .* purge")
    assert [command.endswith(f"purge {retire}' 2>&1") for command in purged] == ([True] if retire else [])


SUPERVISOR_OUTPUT = (
    "Compiling...\nAttached. Hit Ctrl-C to end.\nHello World!\nHello World!\n"
    "@@bpflab-facts 6.1.0-28-amd64 0.26.0\n@@bpflab-stopped duration 0 0 0.250\n"
)


def test_a_run_records_its_lines_timings_and_how_it_stopped(tmp_path):
    """One remote start: the supervisor, which also reports the kernel and BCC version."""
    connection = RecordingConnection([("supervisor", SUPERVISOR_OUTPUT), ("true", "")])
    target = run.Target("hello", "/home/vagrant/bpflab/labs", "hello.py")
    with console.recording() as events:
        outcome = run.ProgramRun(RecordingHost(connection), target, tmp_path / "hello", trigger="true").execute(
            connection
        )
    shown = [line for _, event in events if isinstance(event, console.Output) for line in event.lines]
    record = json.loads((tmp_path / "hello" / "run.json").read_text())
    assert RunRecord.read(tmp_path / "hello") == outcome.record
    assert (record["stopped"], record["exit_status"], record["leaked_probes"]) == ("duration", 0, 0)
    assert record["exit_after_stop_s"] == 0.25
    assert record["lines"] == 4 and record["kernel"] == "6.1.0-28-amd64" and record["bcc"] == "0.26.0"
    assert record["time_to_attach_s"] is not None and record["time_to_first_event_s"] is not None
    assert shown == outcome.lines and "@@bpflab" not in (tmp_path / "hello" / "output.log").read_text()
    assert run.verdict(outcome) is None and len(connection.ran("supervisor")) == 1
    supervisor = connection.ran("supervisor")
    assert "\nFACTS=1\n" in supervisor[0] and connection.ran("find_spec") == supervisor


def test_a_run_whose_files_the_vm_lacks_syncs_them_and_starts_again(tmp_path):
    """The supervisor's start checks the VM's files; a difference is synced, then it starts
    without the check."""
    tree = sync.labs_tree(ROOT)
    stale = remote_listing({name: path for name, path in tree.files.items() if name != "labs/hello.py"})
    connection = RecordingConnection([("sha256sum --quiet", unsynced(stale)), ("supervisor", SUPERVISOR_OUTPUT)])
    target = run.lab_target(run.load_catalog(ROOT)["hello"], tree)
    outcome = run.ProgramRun(RecordingHost(connection), target, tmp_path / "hello", echo=None).execute(connection)
    first, second = connection.ran("supervisor")
    assert "sha256sum --quiet" in first and "sha256sum" not in second and len(connection.uploads) == 1
    assert outcome.record.stopped == "duration" and outcome.lines[0] == "Compiling..."
    assert "@@bpflab" not in (tmp_path / "hello" / "output.log").read_text()


def test_a_bcc_program_that_fails_where_bcc_is_missing_says_to_provision(tmp_path):
    output = (
        "ModuleNotFoundError: No module named 'bcc'\n@@bpflab-facts 6.1.0-28-amd64 none\n"
        "@@bpflab-stopped exited 1 0 -\n"
    )
    connection = RecordingConnection([("supervisor", output)])
    target = run.Target("mine", "/x", "mine.py")
    outcome = run.ProgramRun(RecordingHost(connection), target, tmp_path / "mine", echo=None).execute(connection)
    error = run.verdict(outcome)
    assert error.code == 1 and "invoke lab.provision" in str(error)


def test_verify_reads_the_vm_facts_once_for_all_its_labs(tmp_path):
    """Importing bcc takes seconds under emulation: one probe per verify, not one per lab."""
    connection = RecordingConnection(
        [("find_spec", "6.1.0-28-amd64\n0.26.0\n"), ("supervisor", SUPERVISOR_OUTPUT), ("sha256sum", "")]
    )
    rows = run.verify(RecordingHost(connection), connection, ROOT, ["hello", "hello-map"], 1, tmp_path)
    assert [row["lab"] for row in rows] == ["hello", "hello-map"] and len(connection.ran("supervisor")) == 2
    assert len(connection.ran("find_spec")) == 1 and len(connection.ran("\nFACTS=0\n")) == 2


def test_verify_goes_on_through_a_new_connection_when_one_drops_mid_lab(tmp_path):
    """A keeper or network that drops one lab's connection fails that lab alone."""
    dropping = RecordingConnection(
        [("find_spec", "6.1.0-28-amd64\n0.26.0\n"), ("supervisor", "Compiling...\n", -1)], drop_after="supervisor"
    )
    fresh = RecordingConnection([("supervisor", SUPERVISOR_OUTPUT)])
    rows = run.verify(
        RecordingHost(dropping, later=[fresh]), dropping, ROOT, ["hello", "hello-map", "hello"], 1, tmp_path
    )
    assert [row["result"] for row in rows] == ["FAIL", "FAIL", "PASS"]
    assert "stopped: connection-lost" in "; ".join(rows[0]["problems"])
    assert len(dropping.ran("supervisor")) == 1 and len(fresh.ran("supervisor")) == 2 and fresh.closed


def test_a_run_whose_channel_ends_without_a_status_is_connection_lost(tmp_path):
    connection = RecordingConnection([("supervisor", "Attached. Hit Ctrl-C to end.\n", -1)])
    target = run.Target("hello", "/home/vagrant/bpflab/labs", "hello.py")
    outcome = run.ProgramRun(RecordingHost(connection), target, tmp_path / "hello", echo=None).execute(connection)
    assert outcome.record.stopped == "connection-lost" and outcome.record.exit_status is None
    assert "ended before hello reported its status" in str(run.verdict(outcome))


BOOK_STYLE_OUTPUT = "@@bpflab-attached\nbash-1234 [000] Hello World!\n@@bpflab-stopped duration 130 0 0.031\n"


def test_readiness_comes_from_the_kernel_and_the_status_passes_through(tmp_path):
    """A program that prints no ready line (the book's, as printed) is attached when the VM says
    so; stopped by --duration without handling SIGINT it exits 130, which its record keeps, and lab.run
    exits 0: the duration was asked for."""
    connection = RecordingConnection([("supervisor", BOOK_STYLE_OUTPUT)])
    target = run.Target("hello", "/home/vagrant/book", "hello.py")
    outcome = run.ProgramRun(
        RecordingHost(connection), target, tmp_path / "hello", duration=5, echo=None, trigger="true"
    ).execute(connection)
    assert outcome.lines == ["bash-1234 [000] Hello World!"]
    assert outcome.record.time_to_attach_s is not None and outcome.record.time_to_first_event_s is not None
    for _ in range(50):  # the trigger runs in its own thread
        if connection.ran("bash -c true"):
            break
        time.sleep(0.05)
    assert connection.ran("bash -c true") and not connection.requests  # the VM timed the duration itself
    assert outcome.record.exit_status == 130 and run.verdict(outcome) is None


def finished(stopped, status, lines=(), leaked=0):
    record = RunRecord("demo", stopped=stopped, exit_status=status, leaked_probes=leaked)
    return run.Outcome(config.PROJECT_ROOT / "runs" / "x", record, list(lines))


@pytest.mark.parametrize(
    "outcome, code, words",
    [
        (finished("exited", 0), None, None),
        (finished("interrupted", 0), None, None),
        (finished("exited", 3), 3, "exited with status 3"),
        (finished("exited", 1, ["/virtual/main.c:2:3: error: use of undeclared identifier 'x'"]), 1, "did not compile"),
        (finished("terminated", 143), 143, ""),
        (finished("busy", 75), 1, "Another lab program is running"),
        (finished("never-attached", 130), 130, "attached no BPF program"),
        (finished("connection-lost", None), 1, "connection to the lab VM ended"),
        (finished("duration", 0, leaked=2), 1, "2 probe(s)"),
        (finished("duration", 130), None, None),
        (finished("duration", 143), None, None),
        (finished("interrupted", 130), 130, ""),
    ],
)
def test_verdict_exit_codes(outcome, code, words):
    error = run.verdict(outcome)
    assert (error.code if error else None) == code
    if words is not None:
        assert words in str(error) if words else str(error) == ""


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", "takes a whole number of seconds, not 'abc'"),
        ("-3", "--duration must be 0"),
        ("x" * 5000, "5000 characters"),
    ],
)
def test_bad_seconds_are_one_message(value, message):
    with pytest.raises(LabError, match=message):
        run.seconds(value, "--duration")


def test_a_programs_own_ready_line_is_relayed_to_the_vm(tmp_path):
    """The program says it is attached: the VM is told (it stops asking the kernel and times the
    duration); the host sends nothing else, however long it waits."""
    output = "Attached. Hit Ctrl-C to end.\n"
    connection = RecordingConnection([("supervisor", output)])
    program = run.ProgramRun(
        RecordingHost(connection), run.Target("hello", "/x", "hello.py"), tmp_path / "h", duration=1, echo=None
    )
    program.execute(connection)
    program.ready_at -= 2  # as if attached two seconds ago
    program.tick(connection)
    assert connection.requests == ["attached\n"]


@pytest.mark.parametrize(
    "target, watch",
    [
        (run.Target("mine", "/x", "mine.py"), "WATCH=kernel"),
        (run.lab_target(run.load_catalog(config.PROJECT_ROOT)["hello"]), "WATCH=line"),
        (run.Target("opens", "/x", "opens.bt", "bpftrace"), "WATCH=line"),
        (run.one_liner_target("BEGIN { exit(); }"), "WATCH=line"),
    ],
)
def test_only_programs_that_may_not_say_so_are_watched_in_the_kernel(target, watch):
    assert watch in run.Supervisor(target, 5, (), None, True).command


def test_the_facts_keep_only_installed_packages_and_name_the_architecture_as_debian_does():
    text = facts_output(["bpftrace"]).replace("arch=amd64", "arch=x86_64")
    facts = provision.Facts.parse(text)
    assert facts.installed == {"bpftrace"} and facts.arch == "amd64"


def test_the_trigger_runs_on_the_runs_own_connection(tmp_path):
    """A new SSH connection takes seconds under load, out of --duration: none is opened."""
    connection = RecordingConnection([("supervisor", SUPERVISOR_OUTPUT)])
    host = RecordingHost(connection)
    host.connect = lambda: pytest.fail("the trigger opened a new connection")
    program = run.ProgramRun(host, run.Target("hello", "/x", "hello.py"), tmp_path / "h", trigger="true", echo=None)
    program.execute(connection)
    for _ in range(50):  # the trigger runs in its own thread
        if connection.ran("bash -c true"):
            break
        time.sleep(0.05)
    assert connection.ran("bash -c true") and program.trigger_error is None
