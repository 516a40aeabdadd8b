"""`ansible-playbook ansible/site.yml` against one of a test project's lab VMs."""

import os
import re
import subprocess
import sys


def ansible_playbook(project, machine):
    """`ansible-playbook ansible/site.yml` against one lab VM, through `lab.inventory`; the changed count."""
    project.invoke("lab.inventory", "--vm", machine)
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", ".vagrant/bpflab/inventory.yml",
         "ansible/site.yml"], cwd=project.path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, timeout=1800, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    print(result.stdout)
    assert result.returncode == 0, result.stdout
    recap = re.search(r"changed=(\d+)\s+unreachable=0\s+failed=0", result.stdout)
    assert recap, result.stdout
    return int(recap.group(1))
