from dataclasses import asdict

import pytest

from bpflab.errors import LabError
from bpflab.vagrant import parse_ssh_config

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
        "host": "192.168.121.170", "port": 22, "user": "vagrant",
        "identity": "/work/main/.vagrant/machines/lab/libvirt/private_key"}


def test_virtualbox_style_forwarded_port():
    text = VAGRANT_SSH_CONFIG.replace("192.168.121.170", "127.0.0.1").replace("Port 22", "Port 2222")
    assert parse_ssh_config(text, "lab").port == 2222


def test_output_without_the_asked_machine_is_refused():
    with pytest.raises(LabError, match="did not describe the lab VM lab2"):
        parse_ssh_config(VAGRANT_SSH_CONFIG, "lab2")
