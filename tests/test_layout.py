"""The package follows the data: each module imports only the stages before it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bpflab"
# Helpers first (used by every stage), then the stages in the order data flows.
ORDER = [
    "errors",
    "console",
    "commands",
    "config",
    "catalog",
    "arch",
    "libvirt",
    "host",
    "vagrant",
    "buildroot",
    "artifacts",
    "box",
    "domain",
    "vm",
    "held",
    "hosts",
    "inventory",
    "keeper",
    "provision",
    "sync",
    "packaging",
    "runs",
    "grading",
    "run",
    "counts",
    "report",
    "orchestrate",
]


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


def test_every_module_has_its_place():
    assert sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__") == sorted(ORDER)


def test_each_module_imports_only_earlier_stages():
    for module in ORDER:
        later = set(ORDER[ORDER.index(module) :])
        assert not imported_modules(PACKAGE / f"{module}.py") & later, module
