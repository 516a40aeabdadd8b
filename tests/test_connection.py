import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from bpflab.errors import LabError
from bpflab.held import PERSIST_DEFAULT, PERSIST_VARIABLE, Held, persist_seconds
from bpflab.hosts import Host
from bpflab.vagrant import Endpoint, parse_ssh_config

VAGRANT_SSH_CONFIG = """\
Host lab
  HostName 192.168.121.170
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /work/main/.vagrant/machines/lab/libvirt/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa
"""


def test_parse_vagrant_ssh_config():
    assert asdict(parse_ssh_config(VAGRANT_SSH_CONFIG, "lab")) == {
        "host": "192.168.121.170",
        "port": 22,
        "user": "vagrant",
        "identity": "/work/main/.vagrant/machines/lab/libvirt/private_key",
    }


def test_virtualbox_style_forwarded_port():
    text = VAGRANT_SSH_CONFIG.replace("192.168.121.170", "127.0.0.1").replace("Port 22", "Port 2222")
    assert parse_ssh_config(text, "lab").port == 2222


def test_output_without_the_asked_machine_is_refused():
    with pytest.raises(LabError, match="did not describe the lab VM lab2"):
        parse_ssh_config(VAGRANT_SSH_CONFIG, "lab2")


def a_host(known_hosts=None, identity="/keys/lab"):
    return Host("lab", Endpoint("192.168.121.9", 22, "vagrant", identity), known_hosts, "the lab VM")


def test_a_keeper_serves_only_the_endpoint_and_checks_it_was_started_for(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("192.168.121.9 ssh-ed25519 AAAA1\n")
    checked = a_host(known).held.folder
    assert a_host(known).held.folder == checked
    assert a_host().held.folder != checked  # the same machine, its key unchecked
    assert a_host(known, "/keys/other").held.folder != checked
    known.write_text("192.168.121.9 ssh-ed25519 AAAA2\n")  # the recorded key changed
    assert a_host(known).held.folder != checked
    assert a_host().held.folder.name.startswith("vagrant@192.168.121.9-22-")


@pytest.mark.parametrize("value, seconds", [(None, PERSIST_DEFAULT), ("0", 0), ("30", 30)])
def test_how_long_a_keeper_waits(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv(PERSIST_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(PERSIST_VARIABLE, value)
    assert persist_seconds() == seconds


@pytest.mark.parametrize("value", ["ten", "-1", ""])
def test_a_bad_keeper_wait_is_one_message(monkeypatch, value):
    monkeypatch.setenv(PERSIST_VARIABLE, value)
    with pytest.raises(LabError, match=f"{PERSIST_VARIABLE}: expected a whole number of seconds.*found '{value}'"):
        persist_seconds()


@pytest.mark.parametrize("said, stays", [("", False), (None, False), ("keeper of lab: timed out\n", True)])
def test_an_ending_keeper_takes_its_folder_along_unless_its_log_says_something(tmp_path, said, stays):
    held = Held(tmp_path / "vagrant@192.168.121.9-22-0123456789ab")
    held.folder.mkdir()
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "bpflab.keeper"])
    try:
        for name, text in (
            ("lock", ""),
            ("key", "k"),
            ("socket", ""),
            ("keeper.log", said),
            ("pid", f"{stand_in.pid}\n"),
        ):
            if text is not None:  # None: the log went with the keeper before
                (held.folder / name).write_text(text)
        while held.pid() is None:  # until the stand-in has started as a keeper's command line
            assert stand_in.poll() is None
            time.sleep(0.01)
        held.forget(stand_in.pid + 1)  # not the keeper that wrote the pid: nothing goes
        assert (held.folder / "socket").exists()
        held.forget(stand_in.pid)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert held.folder.exists() == stays
    if stays:
        assert sorted(path.name for path in held.folder.iterdir()) == ["keeper.log", "lock"]
