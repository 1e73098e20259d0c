"""Content-addressed artifact storage: $KAIZEN_HOME/artifacts/<sha256 of the directory>.

A version's files (adapter weights, a FAISS index, a tokenizer, ...) are stored once per
distinct content: registering the same files twice yields the same directory. Files land
in a temporary directory next to the store first and reach their final name with one
`os.replace`, so a reader never sees a half-written artifact directory and a crash leaves
at most an unused `.incoming-*` directory behind (which `sweep_incoming` removes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

ARTIFACTS_DIR = "artifacts"
_CHUNK = 1 << 20


def artifacts_root(home: Path) -> Path:
    return Path(home) / ARTIFACTS_DIR


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_dir(directory: Path) -> str:
    """sha256 over every file's relative path and content hash, in sorted path order.

    Names count (renaming a file changes the hash); timestamps and permissions do not.
    Empty directories are ignored.
    """
    directory = Path(directory)
    h = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(directory).as_posix()
        h.update(f"{rel}\0{hash_file(path)}\n".encode())
    return h.hexdigest()


def store_artifacts(src_dir: Path, home: Path, move: bool = False) -> tuple[Path, str]:
    """Put `src_dir`'s files into the content-addressed store; returns (directory, sha256).

    move=False copies (the source stays); move=True renames the source into the store,
    which is instant on the same filesystem (job outputs under $KAIZEN_HOME/tmp are).
    The hash is computed on the staged copy, so later changes to the source cannot make
    the stored content disagree with its name.
    """
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"artifact directory {src_dir} does not exist or is not a directory")
    root = artifacts_root(home)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".incoming-{uuid.uuid4().hex}"
    if move:
        try:
            os.replace(src_dir, staging)
        except OSError:  # another filesystem: fall back to copy, then drop the source
            shutil.copytree(src_dir, staging)
            shutil.rmtree(src_dir)
    else:
        shutil.copytree(src_dir, staging)
    digest = hash_dir(staging)
    final = root / digest
    if final.exists():
        shutil.rmtree(staging)  # same content is already stored
        return final, digest
    try:
        os.replace(staging, final)
    except OSError:
        # Lost a race with an identical registration (the target appeared meanwhile).
        shutil.rmtree(staging, ignore_errors=True)
        if not final.exists():
            raise
    return final, digest


def sweep_incoming(home: Path) -> int:
    """Remove staging directories a crash left behind; returns how many. Call with no
    registration in flight (e.g. at controller start)."""
    root = artifacts_root(home)
    stale = list(root.glob(".incoming-*")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def find_dir(directory: str, marker: str) -> str | None:
    """The directory holding `marker` (config.json, adapter_config.json): the artifact
    directory itself or its model/ or adapter/ subdirectory (how training runs save them)."""
    for candidate in (Path(directory), Path(directory) / "adapter", Path(directory) / "model"):
        if (candidate / marker).is_file():
            return str(candidate)
    return None
