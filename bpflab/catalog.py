"""The lab catalog (labs/catalog.yaml) and the learner's own copies of its labs."""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import load_yaml
from .errors import LabError, shorten


@dataclass
class Lab:
    """One catalog entry; `kind` bcc: labs/<name>.py with bpf/<name>.bpf.c, bpftrace: labs/<name>.bt.
    `plot`: for a lab that counts, what it counts (lab.plot and the report draw it)."""

    name: str
    summary: str
    note: str
    probe: str
    trigger: str
    expect: list
    reject: list
    kind: str = "bcc"
    plot: dict | None = None


def load_catalog(root: Path) -> dict[str, Lab]:
    path = root / "labs" / "catalog.yaml"
    try:
        return dict(catalog_of(path.read_text()))
    except (OSError, yaml.YAMLError) as error:
        raise LabError(f"Cannot read the lab catalog {path}: {error}") from None


@functools.lru_cache(maxsize=4)
def catalog_of(text: str) -> dict[str, Lab]:
    """The labs of this catalog text, parsed once per process (a run reads the catalog more than once)."""
    return {name: Lab(name=name, **entry) for name, entry in load_yaml(text).items()}


@dataclass(frozen=True)
class Exercise:
    """One of the book's chapter 2 exercises (labs/exercises.yaml): the lab a learner starts from,
    bpflab's own solution, and the trigger that `lab.check` runs."""

    number: int
    title: str
    start: str
    solution: str
    trigger: str


def load_exercises(root: Path) -> dict[int, Exercise]:
    path = root / "labs" / "exercises.yaml"
    try:
        entries = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise LabError(f"Cannot read the exercises {path}: {error}") from None
    return {number: Exercise(number, **entry) for number, entry in entries.items()}


def exercise(exercises: dict[int, Exercise], number: str | int) -> Exercise:
    """Exercise `number`, or a message that lists them."""
    try:
        return exercises[int(str(number).strip())]
    except (ValueError, KeyError):
        listing = "; ".join(f"{found.number}: {found.title}" for found in exercises.values())
        raise LabError(f"There is no exercise {shorten(str(number))!r}. The book's chapter 2 has: {listing}.") from None


def resolve(catalog: dict[str, Lab], name: str) -> Lab:
    if name in catalog:
        return catalog[name]
    close = difflib.get_close_matches(name, catalog, n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise LabError(
        f"There is no lab named {shorten(name)!r}.{hint} Labs: {', '.join(catalog)}. "
        "To run your own program, give its path (for example exercises/my-hello/my-hello.py)."
    )


EXERCISE_FILE = "exercise.yaml"  # exercises/<name>/exercise.yaml: which exercise lab.check grades it for


def exercise_of(program: Path) -> int | None:
    """The exercise that `lab.new --exercise N` started this program for."""
    try:
        return int(load_yaml((program.parent / EXERCISE_FILE).read_text())["exercise"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def new_exercise(
    root: Path, name: str, template: str, catalog: dict[str, Lab], exercise: Exercise | None = None
) -> Path:
    """Copy a lab (both sides) into exercises/<name>/ as the learner's own program; for an exercise,
    the lab it starts from, remembered for lab.check."""
    lab = resolve(catalog, exercise.start if exercise else template)
    if not re.fullmatch(r"[A-Za-z][\w-]*", name):
        raise LabError(f"{name!r} is not a usable program name: use letters, digits, '-' and '_'.")
    folder = root / "exercises" / name
    if folder.exists():
        raise LabError(
            f"{folder} already exists: pick another name, or run it with `invoke lab.run exercises/{name}/{name}.py`."
        )
    folder.mkdir(parents=True)
    program = (root / "labs" / f"{lab.name}.py").read_text()
    (folder / f"{name}.py").write_text(program.replace(f'labkit.source("{lab.name}")', f'labkit.source("{name}")'))
    (folder / f"{name}.bpf.c").write_text((root / "bpf" / f"{lab.name}.bpf.c").read_text())
    if exercise:
        (folder / EXERCISE_FILE).write_text(f"# {exercise.title}\nexercise: {exercise.number}\n")
    return folder / f"{name}.py"
