"""The gathered runs on the host: runs/<UTC time>-<name>/ with output.log and run.json,
and the summaries of verify runs beside them."""

from __future__ import annotations

import json
from pathlib import Path


def list_runs(runs: Path) -> list[dict]:
    """The gathered runs, newest first (folders without a readable run.json are left out)."""
    found = []
    for record in sorted(runs.glob("*/run.json"), reverse=True):
        try:
            found.append({"folder": record.parent.name, **json.loads(record.read_text())})
        except (OSError, json.JSONDecodeError):
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
