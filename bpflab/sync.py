"""Copy labs/ and bpf/ into the VM: only what changed, deletions included.

One round trip reads the VM's manifest (path and SHA-256 of every file); when
nothing differs that is all. Otherwise one tar upload and one command apply the
difference, however many files changed.
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


def mirror(connection: Connection, files: dict[str, Path], remote_root: str, scope: str = ".") -> Difference:
    """Make `scope` folders under `remote_root` hold exactly `files`; return what was done."""
    quoted = shlex.quote(remote_root)
    listing = remote_run(connection, f"mkdir -p {quoted} && cd {quoted} && "
                                     f"find {scope} -type f -not -path '*/__pycache__/*' -print0 2>/dev/null "
                                     "| xargs -0 -r sha256sum",
                         what="reading the labs in the VM")
    difference = compare(manifest(files), parse_remote_manifest(listing.stdout))
    if difference.empty:
        return difference
    commands = [f"cd {quoted}"]
    if difference.delete:
        commands.append("rm -f -- " + " ".join(shlex.quote(path) for path in difference.delete))
    if difference.upload:
        with tempfile.NamedTemporaryFile(suffix=".tar.gz") as bundle:
            bundle.write(tar_of({name: files[name] for name in difference.upload}))
            bundle.flush()
            connection.put(bundle.name, f"{remote_root}/.sync.tar.gz")
        commands.append("tar -xzf .sync.tar.gz --no-same-owner -m && rm -f .sync.tar.gz")
    commands.append(f"{{ find {scope} -mindepth 1 -type d -empty -delete 2>/dev/null || true; }}")
    remote_run(connection, " && ".join(commands), what="updating the labs in the VM")
    return difference


def push(connection: Connection, root: Path) -> Difference:
    """The project's labs/ and bpf/ -> REMOTE_ROOT."""
    for folder in FOLDERS:
        if not (root / folder).is_dir():
            raise LabError(f"{root / folder} does not exist: run bpflab from a complete checkout.")
    return mirror(connection, tree_files(root), REMOTE_ROOT, " ".join(FOLDERS))


def push_files(connection: Connection, folder: Path, remote_root: str, names: list[str],
               extra: dict[str, Path]) -> Difference:
    """A learner's own program and the files beside it -> their own folder in the VM."""
    return mirror(connection, {**{name: folder / name for name in names}, **extra}, remote_root)
