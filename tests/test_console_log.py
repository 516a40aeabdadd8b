"""A VM that stops answering is explained from its serial console log: the kernel's lines of
trouble (an oops, a lockup, a hung task, out of memory) are picked from its end."""

from bpflab import provision
from bpflab.errors import LabError
from bpflab.vm import console_note, console_trouble

BOOT = "".join(f"[    {n}.000000] usual boot line {n}\n" for n in range(2000))
HUNG = """\
Debian GNU/Linux 12 bpflab ttyS0

bpflab login: [  368.112233] INFO: task jbd2/vda1-8:211 blocked for more than 120 seconds.
[  368.112300]       Not tainted 6.1.0-50-amd64 #1 Debian 6.1.153-1
[  368.112400] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
[  370.000000] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [python3:907]
[  371.500000] Out of memory: Killed process 907 (python3) total-vm:912340kB
"""


def test_the_kernels_trouble_is_picked_from_the_end_of_a_long_console(tmp_path):
    log = tmp_path / "console.log"
    log.write_text(BOOT + "\x1b[0m" + HUNG)
    trouble = console_trouble(log)
    assert trouble[0] == "[  368.112233] INFO: task jbd2/vda1-8:211 blocked for more than 120 seconds."
    assert "soft lockup" in trouble[-2] and "Out of memory" in trouble[-1]
    assert not [line for line in trouble if "usual boot line" in line or "login:" in line]
    note = console_note(log)
    assert str(log) in note and "in trouble" in note and "soft lockup" in note


def test_a_quiet_console_says_so_and_a_missing_one_says_nothing(tmp_path):
    log = tmp_path / "console.log"
    log.write_text(BOOT)
    assert console_trouble(log) == [] and "no kernel trouble" in console_note(log)
    assert console_note(tmp_path / "none.log") == ""


def test_the_doctor_refuses_a_kernel_in_trouble(tmp_path):
    log = tmp_path / "console.log"
    log.write_text(BOOT)
    provision.require_quiet_console(log)
    provision.require_quiet_console(None)
    log.write_text(BOOT + HUNG)
    try:
        provision.require_quiet_console(log)
    except LabError as error:
        assert "blocked for more than" in str(error) and "invoke lab.halt" in str(error)
    else:
        raise AssertionError("a console with a hung task passed")
