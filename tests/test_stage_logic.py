"""What the sync, provisioning and run stages send to a machine and record, checked
against a recording connection (no VM): the real-VM tests prove the commands work."""

import hashlib
import json

from recording import RecordingConnection, RecordingHost

from bpflab import config, provision, run, sync

ROOT = config.PROJECT_ROOT


def remote_listing(files):
    return "".join(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  ./{name}\n" for name, path in files.items())


def test_sync_with_nothing_changed_is_one_round_trip():
    connection = RecordingConnection([("sha256sum", remote_listing(sync.tree_files(ROOT)))])
    assert sync.push(connection, ROOT).empty
    assert len(connection.commands) == 1 and not connection.uploads


def test_sync_uploads_changes_and_deletes_leftovers_in_one_command():
    files = sync.tree_files(ROOT)
    listing = remote_listing({name: path for name, path in files.items() if name != "labs/hello.py"})
    listing += f"{'0' * 64}  ./labs/gone.py\n"
    connection = RecordingConnection([("sha256sum", listing)])
    difference = sync.push(connection, ROOT)
    assert difference.upload == ["labs/hello.py"] and difference.delete == ["labs/gone.py"]
    assert connection.uploads == [f"{sync.REMOTE_ROOT}/.sync.tar.gz"]
    (apply,) = connection.ran("tar -xzf")
    assert "rm -f -- labs/gone.py" in apply and len(connection.commands) == 2


def facts_output(installed, kernel="6.1.0-28-amd64", stamp=""):
    return (f"distribution=debian-12\narch=amd64\nkernel={kernel}\ncpus=2\nmemory_kb=2000000\n"
            f"python_link=python3\nstamp={stamp}\nno_candidate=\ninstalled={' '.join(installed)}\n")


def debian_packages(settings, kernel="6.1.0-28-amd64"):
    distro = settings.provision.distributions["debian-12"]
    return distro["packages"] + distro["bcc_package"] + [f"linux-headers-{kernel}"]


def test_a_provisioned_machine_gets_only_the_facts_read(tmp_path):
    settings = config.load()
    connection = RecordingConnection([("distribution=", facts_output(debian_packages(settings)))])
    changed, mode = provision.apply(connection, settings, tmp_path / "provision.log")
    assert (changed, mode) == (False, "package") and len(connection.commands) == 1


def test_missing_packages_are_installed_in_one_apt_call(tmp_path):
    settings = config.load()
    have = [name for name in debian_packages(settings) if name not in ("bpftrace", "linux-headers-6.1.0-28-amd64")]
    connection = RecordingConnection([("distribution=", facts_output(have)), ("apt-unavailable", "")])
    changed, _ = provision.apply(connection, settings, tmp_path / "provision.log")
    (install,) = connection.ran("apt-get .* install")
    assert changed and install.endswith("install --no-install-recommends bpftrace linux-headers-6.1.0-28-amd64' 2>&1")
    assert connection.ran("apt-get .* update") and not connection.ran("purge|git clone")


SUPERVISOR_OUTPUT = ("Compiling...\nAttached. Hit Ctrl-C to end.\nHello World!\nHello World!\n"
                     "@@bpflab-stopped duration 0 0\n")


def test_a_run_records_its_lines_timings_and_how_it_stopped(tmp_path):
    connection = RecordingConnection([("import bcc", "6.1.0-28-amd64\n0.26.0\n"),
                                      ("supervisor", SUPERVISOR_OUTPUT), ("true", "")])
    target = run.Target("hello", "/home/vagrant/bpflab/labs", "hello.py")
    shown = []
    outcome = run.ProgramRun(RecordingHost(connection), target, tmp_path / "hello", trigger="true",
                             echo=shown.append).execute(connection)
    record = json.loads((tmp_path / "hello" / "run.json").read_text())
    assert record == outcome.record
    assert (record["stopped"], record["exit_status"], record["leaked_probes"]) == ("duration", 0, 0)
    assert record["lines"] == 4 and record["kernel"] == "6.1.0-28-amd64" and record["bcc"] == "0.26.0"
    assert record["time_to_attach_s"] is not None and record["time_to_first_event_s"] is not None
    assert shown == outcome.lines and "@@bpflab" not in (tmp_path / "hello" / "output.log").read_text()
    assert run.problem(outcome) is None


def test_a_run_whose_channel_ends_without_a_status_is_connection_lost(tmp_path):
    connection = RecordingConnection([("import bcc", "6.1.0-28-amd64\n0.26.0\n"),
                                      ("supervisor", "Attached. Hit Ctrl-C to end.\n", -1)])
    target = run.Target("hello", "/home/vagrant/bpflab/labs", "hello.py")
    outcome = run.ProgramRun(RecordingHost(connection), target, tmp_path / "hello", echo=None).execute(connection)
    assert outcome.record["stopped"] == "connection-lost" and outcome.record["exit_status"] is None
    assert "ended before hello reported its status" in run.problem(outcome)
