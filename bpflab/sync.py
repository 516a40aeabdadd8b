"""Copy labs/ and bpf/ (or a learner's program and the files beside it) into the VM:
only what changed, deletions included.

One round trip reads the VM's manifest (path and SHA-256 of every file); when
nothing differs that is all. Otherwise one tar upload and one command apply the
difference, however many files changed. A run needs no round trip of its own: its
start checks the host's manifest in the VM (`check_script`) and hands back the VM's
when they differ.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fabric import Connection

from .commands import remote_run
from .errors import LabError

REMOTE_ROOT = "/home/vagrant/bpflab"
FOLDERS = ("labs", "bpf")
SKIPPED = {"__pycache__", ".pytest_cache"}
# Starts each line of the VM's manifest when it differs from the host's (see Tree.check_script).
UNSYNCED = "@@bpflab-unsynced"


def tree_files(root: Path, folders=FOLDERS) -> dict[str, Path]:
    """{relative path: file} of every file under `folders`, caches left out."""
    files = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and not SKIPPED & set(path.parts) and not path.name.endswith(".pyc"):
                files[path.relative_to(root).as_posix()] = path
    return files


def manifest(files: dict[str, Path]) -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}


def parse_remote_manifest(text: str) -> dict[str, str]:
    """`sha256sum` lines (`<hash>  ./path`) -> {path: hash}."""
    manifest = {}
    for line in text.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64 and path:
            manifest[path.removeprefix("./")] = digest
    return manifest


@dataclass
class Difference:
    upload: list[str]
    delete: list[str]

    @property
    def empty(self) -> bool:
        return not self.upload and not self.delete


def compare(local: dict, remote: dict) -> Difference:
    upload = [path for path, digest in local.items() if remote.get(path) != digest]
    delete = [path for path in remote if path not in local]
    return Difference(sorted(upload), sorted(delete))


def tar_of(files: dict[str, Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, path in files.items():
            archive.add(path, arcname=name)
    return buffer.getvalue()


@dataclass
class Tree:
    """What the VM must hold: exactly `files` ({relative path: host file}) in the `scope`
    folders under `remote_root`."""

    files: dict[str, Path]
    remote_root: str
    scope: str = "."

    def listing_command(self) -> str:
        """Prints the VM's manifest (`sha256sum` lines) of the scope."""
        return f"find {self.scope} -type f -not -path '*/__pycache__/*' -print0 2>/dev/null | xargs -0 -r sha256sum"

    def check_script(self) -> str:
        """Shell that goes on when the VM holds exactly these files (one process: sha256sum), and
        otherwise prints UNSYNCED before each line of the VM's manifest, then alone, and exits."""
        mark = UNSYNCED
        lines = "".join(f"{digest}  {name}\n" for name, digest in manifest(self.files).items())
        globs = " ".join(f"{folder}/**" for folder in self.scope.split()) if self.scope != "." else "**"
        quoted = shlex.quote(self.remote_root)
        return f"""synced() {{
  cd {quoted} 2>/dev/null && sha256sum --quiet --strict -c - >/dev/null 2>&1 <<'{mark}' || return 1
{lines}{mark}
  local count=0 file
  shopt -s globstar dotglob nullglob
  for file in {globs}; do [[ -f $file && $file != */__pycache__/* ]] && ((++count)); done
  shopt -u globstar dotglob nullglob
  [ $count = {len(self.files)} ]
}}
if ! synced; then
  {{ cd {quoted} 2>/dev/null && {self.listing_command()}; }} | sed 's/^/{mark} /'; echo {mark}; exit 0
fi
"""


def unsynced_listing(output: str) -> str | None:
    """The VM's manifest from check_script's output; None when the VM was in sync."""
    lines = [line for line in output.splitlines() if line.startswith(UNSYNCED)]
    return "\n".join(line[len(UNSYNCED) + 1 :] for line in lines if line != UNSYNCED) if lines else None


def mirror(connection: Connection, tree: Tree, listing: str | None = None) -> Difference:
    """Make the VM hold exactly `tree`; `listing`: the VM's manifest if already read. Returns what was done."""
    files, quoted, scope = tree.files, shlex.quote(tree.remote_root), tree.scope
    if listing is None:
        checked = remote_run(connection, tree.check_script(), what="reading the labs in the VM")
        listing = unsynced_listing(checked.stdout)
        if listing is None:
            return Difference([], [])
    difference = compare(manifest(files), parse_remote_manifest(listing))
    if difference.empty:
        return difference
    commands = [f"mkdir -p {quoted} && cd {quoted}"]
    if difference.delete:
        commands.append("rm -f -- " + " ".join(shlex.quote(path) for path in difference.delete))
    if difference.upload:
        with tempfile.NamedTemporaryFile(prefix="bpflab-sync-", suffix=".tar.gz") as bundle:
            bundle.write(tar_of({name: files[name] for name in difference.upload}))
            bundle.flush()
            uploaded = f"/tmp/{Path(bundle.name).name}"  # /tmp is there before the folder is
            connection.put(bundle.name, uploaded)
        commands.append(f"tar -xzf {uploaded} --no-same-owner -m && rm -f {uploaded}")
    commands.append(f"{{ find {scope} -mindepth 1 -type d -empty -delete 2>/dev/null || true; }}")
    remote_run(connection, " && ".join(commands), what="updating the labs in the VM")
    return difference


def labs_tree(root: Path) -> Tree:
    """The project's labs/ and bpf/ -> REMOTE_ROOT."""
    for folder in FOLDERS:
        if not (root / folder).is_dir():
            raise LabError(f"{root / folder} does not exist: run bpflab from a complete checkout.")
    return Tree(tree_files(root), REMOTE_ROOT, " ".join(FOLDERS))


def push(connection: Connection, root: Path) -> Difference:
    return mirror(connection, labs_tree(root))
