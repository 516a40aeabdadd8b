"""What an instructor opens: plots of the counting labs and one HTML report of the gathered runs.

The report is a single file under runs/ that needs no server and no network: styles and
plots are inside it, and its links point to the runs' output logs beside it, so the runs
folder can be copied to a USB stick and opened anywhere, on a projector or a phone.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from .catalog import Lab
from .counts import Series, series_of
from .errors import LabError
from .runs import list_runs

COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442"]


def plot(series: Series, folder: Path, top: int = 8) -> list[Path]:
    """Draw the counts over time as PNG and SVG in the run's folder; return the files."""
    import matplotlib  # imported here: it takes a second to load, and only plotting needs it

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5), dpi=120)
    for colour, key in zip(COLOURS, series.top(top), strict=False):
        axes.plot(
            series.seconds,
            series.values(key),
            marker="o",
            color=colour,
            label=f"{series.key} {key}" if series.key != "syscall" else key,
        )
    unit = "so far" if series.cumulative else f"per {series.every:g} s"
    axes.set_title(f"{series.lab}: {series.what} by {series.key} ({folder.name[:16]})")
    axes.set_xlabel("seconds since attached")
    axes.set_ylabel(f"{series.what} ({unit})")
    axes.grid(alpha=0.3)
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    figure.tight_layout()
    files = [folder / "counts.png", folder / "counts.svg"]
    for path in files:
        figure.savefig(path)
    pyplot.close(figure)
    return files


def plot_run(folder: Path, catalog: dict[str, Lab], top: int = 8) -> list[Path]:
    return plot(series_of(folder, catalog), folder, top)


STYLE = """
body { font: 18px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem; color: #111; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2rem; border-bottom: 2px solid #ddd; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; min-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } .PASS { background: #d8f3dc; font-weight: bold; }
.FAIL { background: #ffd6d6; font-weight: bold; } .none { color: #777; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; } small { color: #555; }
"""


def cell(text, css: str = "", link: str | None = None, why: str = "") -> str:
    body = html.escape(str(text))
    if link:
        body = f'<a href="{html.escape(link)}">{body}</a>'
    attributes = (f' class="{css}"' if css else "") + (f' title="{html.escape(why)}"' if why else "")
    return f"<td{attributes}>{body}</td>"


def table(header: list[str], rows: list[str]) -> str:
    heads = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    return f'<div class="scroll"><table><tr>{heads}</tr>{"".join(rows)}</table></div>'


def log_link(runs: Path, *parts: str | None) -> str | None:
    """The output log of a run, relative to runs/, if it is there."""
    if None in parts:
        return None
    path = Path(*parts) / "output.log"
    return path.as_posix() if (runs / path).exists() else None


def verify_section(runs: Path) -> str:
    """The newest lab.verify: a lone host's table, or a room's lab x host matrix."""
    summaries = sorted(runs.glob("*-verify*/summary.json"), key=lambda path: path.parent.name)
    if not summaries:
        return "<p class='none'>No lab.verify yet: run <code>invoke lab.verify</code>.</p>"
    newest = summaries[-1]
    data = json.loads(newest.read_text())
    title = f"<p><small>{html.escape(newest.parent.name)}</small></p>"
    if not isinstance(data, dict) or not all("labs" in entry for entry in data.get("hosts", {}).values()):
        return title + "<p class='none'>Written by an older bpflab: run <code>invoke lab.verify</code> again.</p>"
    hosts, failed_hosts = data["hosts"], data["failed_hosts"]
    if len(hosts) == 1 and not failed_hosts:
        (entry,) = hosts.values()
        rows = [
            f"<tr>{cell(row['lab'])}"
            f"{cell(row['result'], row['result'], log_link(runs, entry['runs'], row['folder']))}"
            f"{cell(row['time_to_attach_s'])}{cell(row['time_to_first_event_s'])}{cell(row['duration_s'])}"
            f"{cell('; '.join(row['problems']))}</tr>"
            for row in entry["labs"].values()
        ]
        return title + table(["lab", "result", "attach s", "first event s", "total s", "why"], rows)
    names = list(hosts) + list(failed_hosts)
    labs = list(dict.fromkeys(lab for entry in hosts.values() for lab in entry["labs"]))
    rows = []
    for lab in labs:
        cells = []
        for host in names:
            entry = hosts.get(host)
            row = entry["labs"].get(lab) if entry else None
            link = log_link(runs, entry["runs"], row.get("folder")) if row else None
            cells.append(
                cell("–", "none")
                if row is None
                else cell(row["result"], row["result"], link, "; ".join(row["problems"]))
            )
        rows.append(f"<tr>{cell(lab)}{''.join(cells)}</tr>")
    failed = "".join(
        f"<li>{html.escape(host)}: {html.escape(why.splitlines()[0])}</li>" for host, why in failed_hosts.items()
    )
    return title + table(["lab \\ host", *names], rows) + (f"<ul>{failed}</ul>" if failed else "")


def exercises_section(runs: Path) -> str:
    """The newest `lab.check exercises`: seat x exercise, each cell PASS or FAIL (its hint on
    hover, its output linked) or not tried."""
    summaries = sorted(runs.glob("*-check-room/summary.json"), key=lambda path: path.parent.name)
    if not summaries:
        return "<p class='none'>No check of the seats' exercises yet: run <code>invoke lab.check exercises</code>.</p>"
    data = json.loads(summaries[-1].read_text())
    title = f"<p><small>{html.escape(summaries[-1].parent.name)}</small></p>"
    rows = []
    for seat, checks in data["hosts"].items():
        best = {}
        for check in checks:
            if str(check["exercise"]) not in best or check["result"] == "PASS":
                best[str(check["exercise"])] = check
        cells = []
        for number in data["exercises"]:
            check = best.get(number)
            if check is None:
                cells.append(cell("not tried", "none"))
            else:
                link = log_link(runs, summaries[-1].parent.name, seat, check["folder"])
                cells.append(cell(check["result"], check["result"], link, f"{check['program']}: {check['detail']}"))
        rows.append(f"<tr>{cell(seat)}{''.join(cells)}</tr>")
    rows += [f"<tr>{cell(seat)}{cell(why.splitlines()[0], 'none')}</tr>" for seat, why in data["failed_hosts"].items()]
    header = ["seat \\ exercise", *(f"{number}: {title}" for number, title in data["exercises"].items())]
    return title + table(header, rows)


def runs_section(runs: Path, limit: int) -> str:
    records = list_runs(runs)[:limit]
    if not records:
        return "<p class='none'>No runs yet.</p>"
    rows = [
        f"<tr>{cell(folder[:16])}{cell(record.lab, link=log_link(runs, folder))}"
        f"{cell(record.vm or '')}{cell(record.stopped)}{cell(record.exit_status)}"
        f"{cell(record.lines)}{cell(record.duration_s)}{cell(record.kernel or '')}"
        f"{cell(record.bcc or '')}</tr>"
        for folder, record in records
    ]
    return table(["started (UTC)", "lab", "VM", "stopped", "exit", "lines", "seconds", "kernel", "BCC"], rows)


def plots_section(runs: Path, catalog: dict[str, Lab]) -> str:
    """The newest run of each counting lab, drawn (inline SVG, so the file stands alone)."""
    figures = []
    for name in (name for name, lab in catalog.items() if lab.plot):
        for folder, record in list_runs(runs):
            if record.lab == name:
                try:
                    svg = plot_run(runs / folder, catalog)[1].read_text()
                except LabError:
                    continue
                figures.append(
                    f"<figure>{svg[svg.index('<svg') :]}<figcaption><small>{html.escape(name)}, "
                    f"{html.escape(folder)}</small></figcaption></figure>"
                )
                break
    return "".join(figures) or "<p class='none'>No run of a counting lab yet (hello-map, syscall-count, ...).</p>"


def write(runs: Path, catalog: dict[str, Lab], limit: int = 60) -> Path:
    """runs/report-<UTC time>.html: the newest verify, the runs, the counting labs' plots."""
    if not runs.is_dir():
        raise LabError(
            f"There are no gathered runs yet ({runs} does not exist). Run a lab first: "
            "`invoke lab.run hello --duration 10`."
        )
    now = datetime.now(timezone.utc)
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bpflab report {now:%Y-%m-%d %H:%M} UTC</title><style>{STYLE}</style></head><body>"
        f"<h1>bpflab report</h1><p><small>Made {now:%Y-%m-%d %H:%M} UTC from {html.escape(str(runs))} "
        f"on {html.escape(os.uname().nodename)}.</small></p>"
        f"<h2>lab.verify</h2>{verify_section(runs)}"
        f"<h2>Exercises</h2>{exercises_section(runs)}"
        f"<h2>Counts</h2>{plots_section(runs, catalog)}"
        f"<h2>Runs (newest {limit})</h2>{runs_section(runs, limit)}</body></html>\n"
    )
    path = runs / f"report-{now:%Y%m%dT%H%M%SZ}.html"
    path.write_text(page)
    return path
