"""Registry operations with JSON-shaped results: one implementation behind both the admin
API (kaizenlm.registry.api) and the CLI's direct-to-DuckDB path (kaizenlm.registry.client),
so the two answer identically."""

from __future__ import annotations

from pathlib import Path

import duckdb

from kaizenlm.registry import aliases as alias_ops
from kaizenlm.registry import lineage as lineage_ops
from kaizenlm.registry import versions as version_ops


def _with_aliases(con: duckdb.DuckDBPyConnection, version: version_ops.Version) -> dict:
    return {**version.to_dict(), "aliases": alias_ops.aliases_of(con, version.version_id)}


def list_versions(con: duckdb.DuckDBPyConnection, kind: str | None = None, status: str | None = None) -> list[dict]:
    return [_with_aliases(con, v) for v in version_ops.list_versions(con, kind=kind, status=status)]


def show(con: duckdb.DuckDBPyConnection, version_id: str) -> dict:
    return _with_aliases(con, version_ops.get_version(con, version_id))


def lineage(con: duckdb.DuckDBPyConnection, version_id: str) -> dict:
    return lineage_ops.lineage(con, version_id)


def register(con: duckdb.DuckDBPyConnection, home: Path, kind: str, artifact_src_dir: str,
             parent_id: str | None = None, config: dict | None = None, snapshot_id: str | None = None,
             snapshot_hash: str | None = None, metrics: dict | None = None, status: str = "candidate",
             note: str | None = None, move: bool = False) -> dict:
    version = version_ops.register_version(
        con, kind, artifact_src_dir, home, parent_id=parent_id, config=config, snapshot_id=snapshot_id,
        snapshot_hash=snapshot_hash, metrics=metrics, status=status, note=note, move=move,
    )
    return _with_aliases(con, version)


def set_status(con: duckdb.DuckDBPyConnection, version_id: str, status: str, note: str | None = None) -> dict:
    return _with_aliases(con, version_ops.set_status(con, version_id, status, note))


def set_metrics(con: duckdb.DuckDBPyConnection, version_id: str, metrics: dict, merge: bool = True) -> dict:
    return _with_aliases(con, version_ops.set_metrics(con, version_id, metrics, merge=merge))


def mark_tainted(con: duckdb.DuckDBPyConnection, snapshot_ids: list[str]) -> dict:
    return {"tainted": version_ops.mark_tainted(con, snapshot_ids)}


def list_aliases(con: duckdb.DuckDBPyConnection) -> dict:
    return {"aliases": alias_ops.list_aliases(con)}


def alias_history(con: duckdb.DuckDBPyConnection, alias: str | None = None) -> list[dict]:
    return [m.to_dict() for m in alias_ops.alias_history(con, alias)]


def set_alias(con: duckdb.DuckDBPyConnection, alias: str, version_id: str, reason: str = "",
              actor: str = "system") -> dict:
    return alias_ops.set_alias(con, alias, version_id, reason=reason, actor=actor).to_dict()


def rollback_alias(con: duckdb.DuckDBPyConnection, alias: str, to_version: str | None = None, reason: str = "",
                   actor: str = "system") -> dict:
    return alias_ops.rollback_alias(con, alias, to_version=to_version, reason=reason, actor=actor).to_dict()
