"""A snapshot on disk: its canonical hashes, its manifest, reading and checking it, and the
marks `kaizen forget` leaves on it. (kaizenlm.datasets.snapshots builds snapshots and
re-exports everything here, so callers use one module.)"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMAT_VERSION = 1
TABLES = ("sft_train", "sft_eval", "dpo_train", "dpo_eval")


class SnapshotError(ValueError):
    """A snapshot is missing, incomplete or does not match its manifest."""


# ---------------------------------------------------------------------------------------------
# Hashes and files


def table_hash(table: pa.Table) -> str:
    """SHA-256 over a table's rows in a canonical form (sorted keys, ISO timestamps, rows in
    id order): independent of Parquet writer versions and compression."""
    h = hashlib.sha256()
    h.update(orjson.dumps(table.schema.names))
    for batch in table.to_batches(max_chunksize=10_000):
        for row in batch.to_pylist():
            h.update(orjson.dumps(row, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z))
            h.update(b"\n")
    return h.hexdigest()


def content_hash(table_hashes: dict[str, str]) -> str:
    return hashlib.sha256(orjson.dumps({"format": FORMAT_VERSION, "tables": table_hashes},
                                       option=orjson.OPT_SORT_KEYS)).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: dict) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Read


def read_manifest(path: Path) -> dict:
    try:
        return orjson.loads((Path(path) / "manifest.json").read_bytes())
    except FileNotFoundError:
        raise SnapshotError(f"{path} is not a snapshot (no manifest.json)") from None
    except orjson.JSONDecodeError as e:
        raise SnapshotError(f"{path}/manifest.json is not valid JSON: {e}") from None


def list_snapshots(root: Path) -> list[dict]:
    """Manifests of the snapshots under root, newest first (reads the files, not DuckDB, so it
    works while the controller holds the database)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("ds-") and (d / "manifest.json").is_file():
            try:
                out.append(read_manifest(d))
            except SnapshotError:
                continue
    return sorted(out, key=lambda m: (m.get("created_at", ""), m["snapshot_id"]), reverse=True)


def resolve(root: Path, snapshot_id: str) -> Path:
    """The directory of a snapshot, by full id or unambiguous prefix (with or without 'ds-')."""
    root = Path(root)
    wanted = snapshot_id if snapshot_id.startswith("ds-") else f"ds-{snapshot_id}"
    if (root / wanted / "manifest.json").is_file():
        return root / wanted
    matches = sorted(d for d in root.glob(f"{wanted}*") if (d / "manifest.json").is_file()) if root.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SnapshotError(f"no snapshot {snapshot_id} under {root}")
    raise SnapshotError(f"{snapshot_id} is ambiguous: " + ", ".join(m.name for m in matches))


def verify(path: Path) -> list[str]:
    """Problems of a snapshot directory (empty list: intact): missing or changed files,
    rows that no longer match the manifest's hashes."""
    path = Path(path)
    manifest = read_manifest(path)
    problems = []
    table_hashes = {}
    for name in TABLES:
        file = path / f"{name}.parquet"
        meta = manifest.get("files", {}).get(file.name)
        if not file.is_file():
            problems.append(f"{file.name}: missing")
            continue
        if meta and _file_sha256(file) != meta["sha256"]:
            problems.append(f"{file.name}: file checksum differs from the manifest")
        try:
            table = pq.read_table(file)
        except Exception as e:  # pyarrow raises several types for a damaged file
            problems.append(f"{file.name}: unreadable ({e})")
            continue
        table_hashes[name] = table_hash(table)
        expected = manifest["tables"][name]
        if table.num_rows != expected["rows"]:
            problems.append(f"{file.name}: {table.num_rows} rows, manifest says {expected['rows']}")
        if table_hashes[name] != expected["data_hash"]:
            problems.append(f"{file.name}: data hash differs from the manifest")
    if len(table_hashes) == len(TABLES) and content_hash(table_hashes) != manifest["content_hash"]:
        problems.append("content hash differs from the manifest")
    return problems


def open_snapshot(path: Path, check: bool = True, allow_forgotten: bool = False) -> dict[str, pa.Table]:
    """The four tables of a snapshot (verified first unless check=False). A snapshot marked by
    `kaizen forget` is refused unless allow_forgotten: build a new one from the remaining data."""
    path = Path(path)
    if not allow_forgotten and read_manifest(path).get("forgotten"):
        raise SnapshotError(f"snapshot {path.name} holds data of a user who asked to be forgotten; "
                            "build a new snapshot (`kaizen dataset build`) and train on that")
    if check:
        problems = verify(path)
        if problems:
            raise SnapshotError(f"snapshot {path.name} is damaged: " + "; ".join(problems))
    return {name: pq.read_table(path / f"{name}.parquet") for name in TABLES}


TURN_COLUMNS = {"sft_train": ("turn_id",), "sft_eval": ("turn_id",),
                "dpo_train": ("chosen_turn_id", "rejected_turn_id"), "dpo_eval": ("chosen_turn_id", "rejected_turn_id")}


def snapshots_with_turns(root: Path, turn_ids: Iterable[str]) -> list[str]:
    """Ids of the snapshots under root that hold any of these turns (e.g. the turns of a user
    who asked to be forgotten: the registry's `mark_tainted` takes these ids)."""
    wanted = pa.array(sorted(set(turn_ids)), type=pa.string())
    if not len(wanted):
        return []
    hits = []
    for manifest in list_snapshots(root):
        path = Path(root) / manifest["snapshot_id"]
        for name, columns in TURN_COLUMNS.items():
            table = pq.read_table(path / f"{name}.parquet", columns=list(columns))
            if any(pc.any(pc.is_in(table.column(c), value_set=wanted)).as_py() for c in columns):
                hits.append(manifest["snapshot_id"])
                break
    return sorted(hits)


def sft_records(table: pa.Table) -> Iterator[dict]:
    """TRL conversational SFT rows: {"messages": prompt messages + [assistant answer]}.

    (The Parquet rows themselves, {prompt: messages, response}, are what
    kaizenlm.retrain.lora_sft reads as prompt/completion data.)"""
    for row in table.select(["prompt", "response"]).to_pylist():
        yield {"messages": [*row["prompt"], {"role": "assistant", "content": row["response"]}]}


def dpo_records(table: pa.Table) -> Iterator[dict]:
    """TRL conversational preference rows: {"prompt": context, "chosen": [...], "rejected": [...]}."""
    for row in table.select(["prompt", "chosen", "rejected"]).to_pylist():
        yield {
            "prompt": row["prompt"],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }


REDACTED = "<forgotten>"


def _redact_examples(manifest: dict, turn_ids: set[str]) -> int:
    """Blank the funnel examples that quote any of these turns; returns how many."""
    n = 0
    for steps in manifest.get("curation", {}).get("steps", {}).values():
        for step in steps:
            for example in step.get("examples", []):
                if set(str(example.get("id", "")).split(">")) & turn_ids:
                    example["text"] = REDACTED
                    n += 1
    return n


def mark_forgotten(con: duckdb.DuckDBPyConnection, root: Path, snapshot_ids: Iterable[str], subject: str,
                   turn_ids: Iterable[str]) -> list[str]:
    """Mark snapshots as holding a forgotten user's data: append {subject, at} to the
    manifest's ``forgotten`` list (on disk and in ``dataset_snapshots``) and blank the funnel
    examples that quote the user's turns. ``subject`` is a hash, never the user id itself."""
    turn_ids = set(turn_ids)
    marked = []
    for snapshot_id in sorted(set(snapshot_ids)):
        path = Path(root) / snapshot_id
        manifest = read_manifest(path)
        manifest.setdefault("forgotten", []).append({"subject": subject, "at": datetime.now(UTC).isoformat()})
        _redact_examples(manifest, turn_ids)
        tmp = path / f".manifest-{uuid.uuid4().hex[:8]}.json"
        _write_json(tmp, manifest)
        os.replace(tmp, path / "manifest.json")
        con.execute("UPDATE dataset_snapshots SET manifest = ? WHERE snapshot_id = ?",
                    [orjson.dumps(manifest).decode(), snapshot_id])
        marked.append(snapshot_id)
    return marked
