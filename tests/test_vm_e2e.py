"""The host for real: host setup, the Vagrantfile, the cached box, and the message when
there is no VM. (A VM's life cycle runs on the second VM of test_labs_e2e, which exists anyway.)"""

import os
import subprocess

import pytest

pytestmark = pytest.mark.vm


def test_host_box_and_a_missing_vm(project):
    project.invoke("host.setup")
    validate = subprocess.run(["vagrant", "validate"], cwd=project.path, capture_output=True, text=True,
                              env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"})
    assert validate.returncode == 0, validate.stdout + validate.stderr
    project.invoke("box.build")
    assert "is cached" in project.invoke("box.build").stdout
    missing = project.invoke("lab.ssh", check=False)
    assert missing.returncode == 1 and "invoke lab.up" in missing.stdout and "Traceback" not in missing.stdout
