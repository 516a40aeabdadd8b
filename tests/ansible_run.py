"""`ansible-playbook ansible/site.yml` against one of a test project's lab VMs."""

import os
import re
import subprocess
import sys


def ansible_playbook(project, machine):
    """`ansible-playbook ansible/site.yml` against one lab VM, through `lab.inventory`: the names of
    the tasks (and handlers) that changed something, so that a failed idempotence check says which."""
    project.invoke("lab.inventory", "--vm", machine)
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
            "-i",
            ".vagrant/bpflab/inventory.yml",
            "ansible/site.yml",
        ],
        cwd=project.path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        timeout=1800,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout
    recap = re.search(r"changed=(\d+)\s+unreachable=0\s+failed=0", result.stdout)
    assert recap, result.stdout
    changed = changed_tasks(result.stdout)
    assert len(changed) == int(recap.group(1)), (changed, result.stdout)
    return changed


def changed_tasks(output):
    """The task names whose result was `changed:` in ansible-playbook's default output."""
    names, task = [], None
    for line in output.splitlines():
        heading = re.match(r"(?:TASK|RUNNING HANDLER) \[(.*)\] \*+$", line)
        if heading:
            task = heading.group(1)
        elif line.startswith("changed: [") and task is not None:
            names.append(task)
    return names
