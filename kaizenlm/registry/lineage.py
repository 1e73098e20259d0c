"""Lineage: version -> parents -> dataset snapshots -> the source time windows.

Answers "what data is this model built from?": the version, each ancestor (an adapter's
parent is the base model or the previous adapter it continued from), the dataset snapshot
each was built from (table `dataset_snapshots`, written by curation) with its window of
turns (since <= ts < until, as ingested by as_of), and whether the snapshot's content hash
still matches the hash recorded at registration.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import duckdb

from kaizenlm.registry.aliases import aliases_of
from kaizenlm.registry.artifacts import find_dir
from kaizenlm.registry.versions import Version, find_version, get_version, utc_from_epoch_us

SNAPSHOT_TABLE = "dataset_snapshots"
# Shown in lineage; the full manifest stays in the snapshot directory (`path`).
_SNAPSHOT_COLUMNS = ("snapshot_id", "content_hash", "created_at", "since", "until", "as_of", "path", "counts")
_TIMESTAMPS = {"created_at", "since", "until", "as_of"}
# Timestamps leave DuckDB as epoch microseconds (fetching TIMESTAMPTZ directly needs pytz).
_SNAPSHOT_SELECT = ", ".join(f"epoch_us({c})" if c in _TIMESTAMPS else c for c in _SNAPSHOT_COLUMNS)


def _iso(us: int | None) -> str | None:
    moment = utc_from_epoch_us(us)
    return moment.isoformat() if moment else None


def _snapshot_table_exists(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [SNAPSHOT_TABLE]).fetchone()
    return bool(row[0])


def _snapshot(con: duckdb.DuckDBPyConnection, snapshot_id: str) -> dict | None:
    if not _snapshot_table_exists(con):
        return None
    row = con.execute(
        f"SELECT {_SNAPSHOT_SELECT} FROM {SNAPSHOT_TABLE} WHERE snapshot_id = ?", [snapshot_id]
    ).fetchone()
    if row is None:
        return None
    snap = {k: _iso(v) if k in _TIMESTAMPS else v for k, v in zip(_SNAPSHOT_COLUMNS, row, strict=True)}
    snap["counts"] = json.loads(snap["counts"]) if isinstance(snap["counts"], str) else snap["counts"]
    return snap


def _ancestors(con: duckdb.DuckDBPyConnection, version_id: str) -> list[Version]:
    """The version, its parent, its parent's parent, ... (oldest last)."""
    chain: list[Version] = []
    seen: set[str] = set()
    current: str | None = version_id
    while current is not None and current not in seen:
        seen.add(current)
        version = get_version(con, current)
        chain.append(version)
        current = version.parent_id
    return chain


def _link(con: duckdb.DuckDBPyConnection, version: Version) -> dict:
    snapshot = _snapshot(con, version.snapshot_id) if version.snapshot_id else None
    verified = None if snapshot is None else snapshot["content_hash"] == version.snapshot_hash
    return {
        "version": version.to_dict(),
        "aliases": aliases_of(con, version.version_id),
        "snapshot": snapshot,
        # True: the snapshot still holds the data the version was built from; False: it changed;
        # None: no snapshot recorded, or the snapshot row is gone.
        "snapshot_verified": verified,
    }


def lineage(con: duckdb.DuckDBPyConnection, version_id: str) -> dict:
    """{version_id, chain: [{version, aliases, snapshot, snapshot_verified}, ...], source_windows}.

    `chain` starts at the version and walks up its parents. `source_windows` lists, per
    version in the chain that names a snapshot, the snapshot id and its time window.
    """
    chain = [_link(con, v) for v in _ancestors(con, version_id)]
    windows = []
    for link in chain:
        version, snap = link["version"], link["snapshot"]
        if version["snapshot_id"] is None:
            continue
        windows.append({
            "version_id": version["version_id"],
            "snapshot_id": version["snapshot_id"],
            "since": snap["since"] if snap else None,
            "until": snap["until"] if snap else None,
            "as_of": snap["as_of"] if snap else None,
            "snapshot_found": snap is not None,
        })
    return {"version_id": version_id, "chain": chain, "source_windows": windows}


def model_dirs(version: dict, lookup: Callable[[str], dict | None]) -> tuple[str | None, str | None]:
    """(base model directory, adapter directory) that serve a base or adapter version.

    `version` is a version as a dict (`Version.to_dict()` or the admin API's answer) and
    `lookup(version_id)` returns another one or None, so this serves a DuckDB connection
    (`version_lookup(con)`) and the registry client alike. An adapter may continue another
    adapter: its base is the first base version up its parents, or else the base path
    lora_sft recorded in its config. The adapter directory is None for a base version; a
    None base directory means the lineage names no base model on disk (callers say so).
    """
    if version["kind"] == "base":
        return find_dir(version["artifact_dir"], "config.json"), None
    adapter_dir = find_dir(version["artifact_dir"], "adapter_config.json")
    parent, seen = version.get("parent_id"), set()
    while parent and parent not in seen:
        seen.add(parent)
        ancestor = lookup(parent)
        if ancestor is None:
            break
        if ancestor["kind"] == "base":
            return find_dir(ancestor["artifact_dir"], "config.json"), adapter_dir
        parent = ancestor.get("parent_id")
    recorded = (version.get("config") or {}).get("base")
    return (find_dir(str(recorded), "config.json") if recorded else None), adapter_dir


def version_lookup(con: duckdb.DuckDBPyConnection) -> Callable[[str], dict | None]:
    """`lookup` for model_dirs on a DuckDB connection."""
    def lookup(version_id: str) -> dict | None:
        version = find_version(con, version_id)
        return version.to_dict() if version else None
    return lookup
