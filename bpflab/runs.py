"""The gathered runs on the host: runs/<UTC time>-<name>/ with output.log and run.json,
and the summaries of verify runs beside them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunRecord:
    """One run's run.json: what ran where, how it ended (`stopped`: exited, duration, interrupted,
    terminated, hangup, busy, never-attached, connection-lost) and its timings. Written and read
    here alone; a field missing from an older run.json reads as None."""

    lab: str
    program: str | None = None
    kind: str | None = None
    vm: str | None = None
    kernel: str | None = None
    bcc: str | None = None
    start: str | None = None
    end: str | None = None
    duration_s: float | None = None
    stopped: str | None = None
    exit_status: int | None = None
    lines: int | None = None
    leaked_probes: int | None = None
    exit_after_stop_s: float | None = None
    trigger: str | None = None
    trigger_error: str | None = None
    time_to_attach_s: float | None = None
    time_to_first_event_s: float | None = None

    def write(self, folder: Path) -> None:
        (folder / "run.json").write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> RunRecord:
        """OSError, ValueError (not JSON) or TypeError (not a record) when it cannot be read."""
        data = json.loads((folder / "run.json").read_text())
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def list_runs(runs: Path) -> list[tuple[str, RunRecord]]:
    """The gathered runs as (folder name, record), newest first (folders without a readable
    run.json are left out)."""
    found = []
    for path in sorted(runs.glob("*/run.json"), reverse=True):
        try:
            found.append((path.parent.name, RunRecord.read(path.parent)))
        except (OSError, ValueError, TypeError):
            continue
    return found


def verify_rows(summary: Path) -> dict[str, list[dict]]:
    """A verify summary's rows (one per lab), per host that gave any."""
    return {host: list(entry["labs"].values()) for host, entry in json.loads(summary.read_text())["hosts"].items()}


def write_summary(folder: Path, summary) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path
