"""Counting labs' output (recorded from real runs in the lab VM) read into series, and plotted."""

import json
from pathlib import Path

import pytest

from bpflab import catalog, counts, report
from bpflab.errors import LabError

ROOT = Path(__file__).resolve().parent.parent
LOGS = Path(__file__).resolve().parent / "data" / "recorded"
CATALOG = catalog.load_catalog(ROOT)


def gathered(tmp_path, lab, log=None, lines=None):
    folder = tmp_path / f"20261125T080000Z-{lab}"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"lab": lab}))
    (folder / "output.log").write_text((LOGS / f"{log or lab}.log").read_text() if lines is None else lines)
    return folder


def test_hello_map_running_totals_per_user(tmp_path):
    series = counts.series_of(gathered(tmp_path, "hello-map"), CATALOG)
    assert series.samples == [{"1000": 6, "0": 11}] * 4 and series.cumulative
    assert series.top(5) == ["0", "1000"] and series.seconds == [2, 4, 6, 8]


def test_syscall_count_by_uid_per_interval(tmp_path):
    series = counts.series_of(gathered(tmp_path, "syscall-count-by-uid"), CATALOG)
    assert series.samples[0] == {"0": 3069, "1000": 814, "101": 166}
    assert series.values("1000") == [814, 161, 199, 161] and series.values("101") == [166, 0, 0, 0]
    assert not series.cumulative and series.top(1) == ["0"]


def test_syscall_count_keys_are_names_with_numbers(tmp_path):
    series = counts.series_of(gathered(tmp_path, "syscall-count"), CATALOG)
    assert len(series.samples) == 4 and series.samples[1]["clock_gettime (228)"] == 94
    assert series.samples[0]["openat (257)"] == 300 and series.top(1) == ["clock_gettime (228)"]


def test_only_the_lines_the_catalog_names_are_samples(tmp_path):
    """hello-map-syscalls prints a total line and per-syscall lines: the plot follows the totals."""
    series = counts.series_of(gathered(tmp_path, "hello-map-syscalls"), CATALOG)
    assert [sample["0"] for sample in series.samples] == [220, 228, 236]


def test_bpftrace_maps_one_entry_per_line(tmp_path):
    series = counts.series_of(gathered(tmp_path, "hello-map-bpftrace"), CATALOG)
    assert series.samples[:4] == [{"1000": 6, "0": 11}] * 4
    entries = "Attaching 2 probes...\n08:00:02\n@s[257]: 290\n@s[3]: 324\n08:00:04\n@s[232]: 21\n"
    assert counts.samples(entries.splitlines()) == [{"257": 290, "3": 324}, {"232": 21}]


def test_bpftraces_syscall_numbers_are_named_from_the_vms_table(tmp_path):
    """syscall-count-bpftrace counts by number; the run keeps the VM's table, and plots name them."""
    lines = "Attaching 2 probes...\n08:00:02\n@syscalls[257]: 290\n@syscalls[3]: 324\n@syscalls[999]: 1\n"
    folder = gathered(tmp_path, "syscall-count-bpftrace", lines=lines)
    assert counts.series_of(folder, CATALOG).top(1) == ["3"]  # an older run, without the table
    (folder / "syscalls.json").write_text(json.dumps({"257": "openat", "3": "close"}))
    series = counts.series_of(folder, CATALOG)
    assert series.samples == [{"openat (257)": 290, "close (3)": 324, "999": 1}] and series.key == "syscall"
    assert "close (3)" in report.plot_run(folder, CATALOG)[1].read_text()


def test_a_run_with_nothing_to_count_says_so(tmp_path):
    with pytest.raises(LabError, match="nothing to plot: hello printed no counts"):
        counts.series_of(gathered(tmp_path, "hello", lines="Hello World!\n"), CATALOG)


def test_plot_files_are_drawn(tmp_path):
    files = report.plot_run(gathered(tmp_path, "syscall-count"), CATALOG)
    assert [path.name for path in files] == ["counts.png", "counts.svg"]
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files[0].stat().st_size > 10_000
    assert "clock_gettime (228)" in files[1].read_text() and "seconds since attached" in files[1].read_text()
