"""The counts that counting labs print, as series over time: what lab.plot draws.

A counting lab prints a sample every few seconds: `ID 1000: 6   ID 0: 11` (per user),
`openat (257): 300   close (3): 343` (per syscall), or bpftrace's map entries, one per
line (`@calls[1000]: 6`). The catalog's `plot` entry says what a lab counts; a learner's
own copy of a counting lab is read by the same line shapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .catalog import Lab
from .errors import LabError
from .runs import RunRecord

# (shape of one count, whether each line holds one entry of a sample rather than a whole sample)
SHAPES = [
    (re.compile(r"^@\w*\[(?P<key>[^\]]+)\]: (?P<count>\d+)$"), True),
    (re.compile(r"(?P<key>[A-Za-z_]\w* \(\d+\)): (?P<count>\d+)"), False),
    (re.compile(r"ID (?P<key>\d+): (?P<count>\d+)"), False),
]
# What a run of a lab that is not in the catalog (a learner's copy) is taken to count.
GUESS = {"every": 2, "counts": "per interval", "what": "events", "key": "key"}


@dataclass
class Series:
    """Counts per key, one sample per report the lab printed, `every` seconds apart."""

    lab: str
    samples: list[dict[str, int]]
    every: float
    cumulative: bool
    what: str
    key: str

    @property
    def seconds(self) -> list[float]:
        """When each sample was printed, counted from attached."""
        return [self.every * (index + 1) for index in range(len(self.samples))]

    def top(self, count: int) -> list[str]:
        """The keys with the most counts (the last sample for running totals, the sum otherwise)."""
        totals: dict[str, int] = {}
        for sample in self.samples[-1:] if self.cumulative else self.samples:
            for key, value in sample.items():
                totals[key] = totals.get(key, 0) + value
        return sorted(totals, key=lambda key: -totals[key])[:count]

    def values(self, key: str) -> list[int]:
        """The key's count in every sample; 0 where a sample does not name it."""
        return [sample.get(key, 0) for sample in self.samples]


def samples(lines: list[str], only: str | None = None) -> list[dict[str, int]]:
    """Every sample in a lab's output, read with the first line shape that finds any.
    `only`: a regular expression that the lines holding samples match (others are skipped)."""
    chosen = [line for line in lines if only is None or re.search(only, line)]
    for shape, entry_per_line in SHAPES:
        found = (
            entries_per_line(chosen, shape)
            if entry_per_line
            else [{match["key"]: int(match["count"]) for match in shape.finditer(line)} for line in chosen]
        )
        found = [sample for sample in found if sample]
        if found:
            return found
    return []


def entries_per_line(lines: list[str], shape: re.Pattern) -> list[dict[str, int]]:
    """bpftrace prints a map one entry per line: a sample ends at a blank line or a key seen again."""
    found: list[dict[str, int]] = [{}]
    for line in lines:
        match = shape.match(line.strip())
        if not match or match["key"] in found[-1]:
            found.append({})
        if match:
            found[-1][match["key"]] = int(match["count"])
    return found


def series_of(folder: Path, catalog: dict[str, Lab]) -> Series:
    """The counts of a gathered run, or a message that says why there are none."""
    try:
        record = RunRecord.read(folder)
        lines = (folder / "output.log").read_text(errors="replace").splitlines()
    except (OSError, ValueError, TypeError):
        raise LabError(
            f"{folder} is not a gathered run (no readable run.json and output.log). `invoke lab.runs` lists the runs."
        ) from None
    lab = catalog.get(record.lab)
    settings = lab.plot if lab and lab.plot else GUESS
    found = samples(lines, settings.get("lines"))
    if not found:
        counting = ", ".join(name for name, entry in catalog.items() if entry.plot)
        raise LabError(
            f"{folder.name} has nothing to plot: {record.lab} printed no counts "
            f"({len(lines)} lines; counting labs print theirs every 2 s, so run one for at least "
            f"4 s). Counting labs: {counting}."
        )
    if settings.get("names") == "syscalls" and (folder / "syscalls.json").is_file():
        found = named(found, json.loads((folder / "syscalls.json").read_text()))
    return Series(
        record.lab, found, settings["every"], settings["counts"] == "cumulative", settings["what"], settings["key"]
    )


def named(found: list[dict[str, int]], names: dict[str, str]) -> list[dict[str, int]]:
    """Syscall numbers as the BCC labs show them: `openat (257)`."""
    return [
        {f"{names[key]} ({key})" if key in names else key: count for key, count in sample.items()} for sample in found
    ]


def run_to_plot(root: Path, run: str, catalog: dict[str, Lab]) -> Path:
    """`lab.plot --run`: a folder under runs/ or any path; none given, the newest counting run."""
    if not run:
        return newest_counting_run(root / "runs", catalog)
    return root / "runs" / run if (root / "runs" / run).is_dir() else Path(run)


def newest_counting_run(runs: Path, catalog: dict[str, Lab]) -> Path:
    """The newest gathered run of a counting lab (verify runs included)."""
    counting = {name for name, lab in catalog.items() if lab.plot}
    for path in sorted(runs.glob("**/run.json"), key=lambda path: path.parent.name, reverse=True):
        try:
            if RunRecord.read(path.parent).lab in counting:
                return path.parent
        except (OSError, ValueError, TypeError):
            continue
    raise LabError(
        f"No run of a counting lab in {runs}. Run one first, for example "
        "`invoke lab.run hello-map --duration 10`, then `invoke lab.plot`."
    )
