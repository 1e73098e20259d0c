"""Model versions: register, read, update metrics/status, and mark tainted.

A version id is "<kind>-<seq>" with a per-kind sequence number padded to four digits:
`base-0001`, `adapter-0003`, `knowledge-0012` (then `adapter-10000` past 9999). Ids are
readable in logs and CLI output, say what a version is, and never get reused.

All functions take an open DuckDB connection (the controller's, or one the CLI opened
when no controller runs) and write in their own transaction or the caller's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from kaizenlm.registry.artifacts import store_artifacts
from kaizenlm.registry.errors import NotFound, RegistryError
from kaizenlm.registry.transaction import transaction

KINDS = ("base", "adapter", "knowledge")
# Lifecycle labels; which version *serves* is decided by aliases, not by status.
STATUSES = ("candidate", "challenger", "promoted", "rejected", "archived")

_COLUMNS = ("version_id", "kind", "seq", "parent_id", "status", "config", "metrics", "snapshot_id",
            "snapshot_hash", "artifact_dir", "artifact_hash", "created_at", "note", "tainted")
# Timestamps leave DuckDB as epoch microseconds: fetching TIMESTAMPTZ directly needs pytz.
_SELECT = "SELECT {} FROM model_versions".format(
    ", ".join("epoch_us(created_at)" if c == "created_at" else c for c in _COLUMNS)
)


@dataclass
class Version:
    version_id: str
    kind: str
    seq: int
    parent_id: str | None
    status: str
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    snapshot_id: str | None = None
    snapshot_hash: str | None = None
    artifact_dir: str = ""
    artifact_hash: str = ""
    created_at: datetime | None = None
    note: str | None = None
    tainted: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat() if self.created_at else None
        return d


def utc_from_epoch_us(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, UTC)


def _version_from_row(row: tuple) -> Version:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["created_at"] = utc_from_epoch_us(values["created_at"])
    values["config"] = json.loads(values["config"]) if values["config"] else {}
    values["metrics"] = json.loads(values["metrics"]) if values["metrics"] else {}
    return Version(**values)


def format_version_id(kind: str, seq: int) -> str:
    return f"{kind}-{seq:04d}"


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise RegistryError(f"unknown version kind '{kind}'; use one of: {', '.join(KINDS)}")


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise RegistryError(f"unknown status '{status}'; use one of: {', '.join(STATUSES)}")


def register_version(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    artifact_src_dir: str | Path,
    home: str | Path,
    parent_id: str | None = None,
    config: dict | None = None,
    snapshot_id: str | None = None,
    snapshot_hash: str | None = None,
    metrics: dict | None = None,
    status: str = "candidate",
    note: str | None = None,
    move: bool = False,
) -> Version:
    """Store the artifacts (content-addressed) and record a new version; returns it.

    Files are placed first, the row second: a crash in between leaves an unreferenced
    artifact directory, never a version without its files. move=True renames the source
    directory into the store instead of copying it (job outputs use this).
    """
    check_kind(kind)
    check_status(status)
    if parent_id is not None:
        get_version(con, parent_id)  # raises NotFound with a helpful message
    artifact_dir, artifact_hash = store_artifacts(Path(artifact_src_dir), Path(home), move=move)
    with transaction(con):
        (seq,) = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM model_versions WHERE kind = ?", [kind]).fetchone()
        version_id = format_version_id(kind, seq)
        con.execute(
            "INSERT INTO model_versions (version_id, kind, seq, parent_id, status, config, metrics, snapshot_id, "
            "snapshot_hash, artifact_dir, artifact_hash, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [version_id, kind, seq, parent_id, status, json.dumps(config or {}, sort_keys=True),
             json.dumps(metrics or {}, sort_keys=True), snapshot_id, snapshot_hash, str(artifact_dir),
             artifact_hash, note],
        )
    return get_version(con, version_id)


def find_version(con: duckdb.DuckDBPyConnection, version_id: str) -> Version | None:
    row = con.execute(f"{_SELECT} WHERE version_id = ?", [version_id]).fetchone()
    return _version_from_row(row) if row else None


def get_version(con: duckdb.DuckDBPyConnection, version_id: str) -> Version:
    version = find_version(con, version_id)
    if version is None:
        raise NotFound(f"no version '{version_id}'; run `kaizen registry list` to see version ids")
    return version


def list_versions(con: duckdb.DuckDBPyConnection, kind: str | None = None, status: str | None = None) -> list[Version]:
    """Versions oldest first, optionally only one kind and/or status."""
    where, params = [], []
    if kind is not None:
        check_kind(kind)
        where.append("kind = ?")
        params.append(kind)
    if status is not None:
        check_status(status)
        where.append("status = ?")
        params.append(status)
    sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY created_at, kind, seq"
    return [_version_from_row(r) for r in con.execute(sql, params).fetchall()]


def set_metrics(con: duckdb.DuckDBPyConnection, version_id: str, metrics: dict, merge: bool = True) -> Version:
    """Record evaluation metrics; merge=True keeps existing keys not in `metrics`."""
    with transaction(con):
        current = get_version(con, version_id)
        new = {**current.metrics, **metrics} if merge else dict(metrics)
        con.execute("UPDATE model_versions SET metrics = ? WHERE version_id = ?",
                    [json.dumps(new, sort_keys=True), version_id])
    return get_version(con, version_id)


def set_status(con: duckdb.DuckDBPyConnection, version_id: str, status: str, note: str | None = None) -> Version:
    """Change the lifecycle status (and the note, when given)."""
    check_status(status)
    with transaction(con):
        get_version(con, version_id)
        con.execute("UPDATE model_versions SET status = ?, note = coalesce(?, note) WHERE version_id = ?",
                    [status, note, version_id])
    return get_version(con, version_id)


def descendants(con: duckdb.DuckDBPyConnection, version_ids: list[str]) -> list[str]:
    """The given versions and every version built on them (children, grandchildren, ...)."""
    if not version_ids:
        return []
    rows = con.execute(
        """
        WITH RECURSIVE tree(version_id) AS (
            SELECT version_id FROM model_versions WHERE list_contains(?, version_id)
            UNION
            SELECT v.version_id FROM model_versions v JOIN tree t ON v.parent_id = t.version_id
        )
        SELECT version_id FROM tree ORDER BY version_id
        """,
        [list(version_ids)],
    ).fetchall()
    return [r[0] for r in rows]


def mark_tainted(con: duckdb.DuckDBPyConnection, snapshot_ids: list[str]) -> list[str]:
    """Mark versions built from these snapshots, and their descendants, as tainted.

    For the right to be forgotten: a version trained on a forgotten user's data must not
    be served again (aliases refuse tainted versions). Returns every version id that is
    tainted because of these snapshots (including ones marked earlier), sorted.
    """
    if not snapshot_ids:
        return []
    with transaction(con):
        direct = [r[0] for r in con.execute(
            "SELECT version_id FROM model_versions WHERE list_contains(?, snapshot_id)", [list(snapshot_ids)]
        ).fetchall()]
        affected = descendants(con, direct)
        if affected:
            con.execute("UPDATE model_versions SET tainted = true WHERE list_contains(?, version_id)", [affected])
    return affected
