"""Reading a room from an Ansible YAML inventory, and the fleet's verify matrix (pure logic)."""

from pathlib import Path

import pytest
import yaml

from bpflab import console, inventory
from bpflab.errors import LabError
from bpflab.hosts import Host
from bpflab.vagrant import Endpoint

ROOM = """
all:
  vars:
    ansible_user: vagrant
  hosts:
    alone:
      ansible_host: 10.0.0.9
  children:
    row1:
      vars:
        ansible_port: 2201
        ansible_ssh_private_key_file: keys/row1
      hosts:
        seat1: {ansible_host: 10.0.0.1}
        seat2: {ansible_host: 10.0.0.2, ansible_port: 2202, ansible_user: learner}
    local:
      hosts:
        vm:
          ansible_host: 127.0.0.1
          ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
        checked:
          ansible_ssh_extra_args: "-oUserKnownHostsFile=~/room/known_hosts"
"""


def room(tmp_path, text=ROOM):
    path = tmp_path / "room.yml"
    path.write_text(text)
    return {host.name: host for host in inventory.read_inventory(path)}


def test_group_variables_flow_down_and_hosts_override_them(tmp_path):
    found = {name: host.endpoint for name, host in room(tmp_path).items()}
    assert list(found) == ["alone", "seat1", "seat2", "vm", "checked"]
    assert (found["alone"].host, found["alone"].port, found["alone"].user) == ("10.0.0.9", 22, "vagrant")
    assert (found["seat1"].port, found["seat1"].user) == (2201, "vagrant")
    assert (found["seat2"].port, found["seat2"].user) == (2202, "learner")
    assert found["seat1"].identity == str(tmp_path / "keys" / "row1")
    assert found["checked"].host == "checked"


def test_host_keys_are_checked_unless_the_inventory_turns_it_off(tmp_path):
    found = room(tmp_path)
    assert found["seat1"].known_hosts == inventory.DEFAULT_KNOWN_HOSTS
    assert found["vm"].known_hosts is None  # not checked
    assert found["checked"].known_hosts == Path("~/room/known_hosts").expanduser()


@pytest.mark.parametrize(
    "text, message",
    [
        ("all: {hosts: {a: {ansible_port: http}}}", "host a: ansible_port: expected a port number"),
        ("all: {hosts: {}}", "lists no hosts"),
        ("- just\n- a list\n", "not in Ansible's YAML format"),
        ("all: [", "not valid YAML"),
    ],
)
def test_a_bad_inventory_is_one_message(tmp_path, text, message):
    with pytest.raises(LabError, match=message):
        room(tmp_path, text)


def test_a_missing_inventory_says_what_to_give(tmp_path):
    with pytest.raises(LabError, match="Cannot read the inventory"):
        inventory.read_inventory(tmp_path / "nowhere.yml")


def test_verify_matrix_marks_failed_cells_and_hosts_without_results():
    rows = [
        {"lab": "hello", "result": "PASS", "problems": []},
        {"lab": "hello-tail", "result": "FAIL", "problems": ["no line matched 'Timer'"]},
    ]
    matrix = {"seat1": rows, "seat2": None}  # seat2: down, no results
    table = console.verify_matrix(matrix)
    assert [column.header for column in table.columns] == ["lab \\ host", "seat1", "seat2"]
    assert table.row_count == 2


def test_an_inventory_written_for_vms_reads_back_as_the_same_hosts(tmp_path):
    """lab.inventory writes local VMs (host keys not checked); reading it gives the same endpoints."""
    vms = [
        Host(name, Endpoint(f"192.168.121.{number}", 22, "vagrant", f"/keys/{name}"), None, name)
        for number, name in ((10, "lab"), (11, "lab2"))
    ]
    path = inventory.save_inventory(vms, tmp_path / "vms.yml")
    again = inventory.read_inventory(path)
    assert [(host.name, host.endpoint, host.known_hosts) for host in again] == [
        (host.name, host.endpoint, None) for host in vms
    ]
    written = yaml.safe_load(path.read_text())["all"]["hosts"]["lab"]["ansible_ssh_common_args"]
    assert inventory.ssh_options(written)["serveraliveinterval"] == "5"  # a reboot's dead connection ends
