"""Aliases (champion, challenger, ...) and their append-only history, with rollback.

Every alias move appends one row to `alias_history` in the same transaction as the move.
A row is either a `set` (promote, tag, or any other deliberate move) or a `rollback`.

Rollback rule ("move the alias back one step"):
  * The *undo chain* of an alias is its `set` moves that no rollback has undone yet,
    newest first. A rollback row records in `undoes` the seq of the oldest `set` move it
    undid; it undoes that move and every history row after it (up to the rollback itself).
  * `rollback_alias(alias)` takes the newest move on the undo chain and moves the alias to
    that move's `from_version`. A second rollback therefore goes further back, never forth.
  * `rollback_alias(alias, to_version=X)` walks the undo chain to the newest move whose
    `from_version` is X and undoes it and everything after it in one step. X must be a
    version the alias pointed at earlier on the chain; moving anywhere else is a `set`.
  * A new `set` after a rollback starts the chain again from there (like an editor's undo:
    a new edit discards the redo).
Example: set A, set B, set C, rollback (C -> B), rollback (B -> A); or from C,
rollback --to A (C -> A) in one row.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime

import duckdb

from kaizenlm.registry.errors import Conflict, NotFound, RegistryError
from kaizenlm.registry.transaction import transaction
from kaizenlm.registry.versions import get_version, utc_from_epoch_us

CHAMPION = "champion"  # the alias users are served by default
CHALLENGER = "challenger"
KNOWLEDGE = "knowledge"  # the alias of the knowledge index gateways retrieve from
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_HISTORY_COLUMNS = ("seq", "alias", "from_version", "to_version", "action", "undoes", "reason", "actor", "ts")
# ts leaves DuckDB as epoch microseconds (fetching TIMESTAMPTZ directly needs pytz).
_HISTORY_SELECT = ", ".join("epoch_us(ts)" if c == "ts" else c for c in _HISTORY_COLUMNS)


@dataclass
class AliasMove:
    """One row of the alias history."""

    seq: int
    alias: str
    from_version: str | None
    to_version: str
    action: str  # "set" | "rollback"
    undoes: int | None
    reason: str
    actor: str
    ts: datetime | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ts"] = self.ts.isoformat() if self.ts else None
        return d


def _move_from_row(row: tuple) -> AliasMove:
    values = dict(zip(_HISTORY_COLUMNS, row, strict=True))
    values["ts"] = utc_from_epoch_us(values["ts"])
    return AliasMove(**values)


def check_alias_name(alias: str) -> None:
    if not ALIAS_PATTERN.match(alias or ""):
        raise RegistryError(
            f"invalid alias name '{alias}': use lowercase letters, digits, '-' or '_', starting with a letter"
        )


def get_alias(con: duckdb.DuckDBPyConnection, alias: str) -> str | None:
    """The version id the alias points at, or None when the alias was never set."""
    row = con.execute("SELECT version_id FROM aliases WHERE name = ?", [alias]).fetchone()
    return row[0] if row else None


def list_aliases(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(con.execute("SELECT name, version_id FROM aliases ORDER BY name").fetchall())


def aliases_of(con: duckdb.DuckDBPyConnection, version_id: str) -> list[str]:
    rows = con.execute("SELECT name FROM aliases WHERE version_id = ? ORDER BY name", [version_id]).fetchall()
    return [r[0] for r in rows]


def alias_history(con: duckdb.DuckDBPyConnection, alias: str | None = None) -> list[AliasMove]:
    """History rows oldest first; all aliases when `alias` is None."""
    sql = f"SELECT {_HISTORY_SELECT} FROM alias_history"
    params: list = []
    if alias is not None:
        sql += " WHERE alias = ?"
        params.append(alias)
    rows = con.execute(sql + " ORDER BY seq", params).fetchall()
    return [_move_from_row(r) for r in rows]


def _check_servable(con: duckdb.DuckDBPyConnection, version_id: str) -> None:
    version = get_version(con, version_id)
    if version.tainted:
        raise Conflict(
            f"version '{version_id}' is tainted (built from data of a forgotten user) and cannot be "
            "given an alias; pick a clean version (`kaizen registry list`)"
        )


def _record_move(con: duckdb.DuckDBPyConnection, alias: str, from_version: str | None, to_version: str,
                 action: str, undoes: int | None, reason: str, actor: str) -> AliasMove:
    con.execute(
        "INSERT INTO aliases (name, version_id) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET version_id = excluded.version_id, updated_at = now()",
        [alias, to_version],
    )
    row = con.execute(
        f"INSERT INTO alias_history (alias, from_version, to_version, action, undoes, reason, actor) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {_HISTORY_SELECT}",
        [alias, from_version, to_version, action, undoes, reason, actor],
    ).fetchone()
    return _move_from_row(row)


def set_alias(con: duckdb.DuckDBPyConnection, alias: str, version_id: str, reason: str = "",
              actor: str = "system") -> AliasMove:
    """Point `alias` at `version_id` and append the move to the history (one transaction)."""
    check_alias_name(alias)
    with transaction(con):
        _check_servable(con, version_id)
        current = get_alias(con, alias)
        if current == version_id:
            raise Conflict(f"alias '{alias}' already points at '{version_id}'; nothing to do")
        return _record_move(con, alias, current, version_id, "set", None, reason or f"set {alias}", actor)


def undo_chain(history: list[AliasMove]) -> list[AliasMove]:
    """The `set` moves no rollback has undone yet, newest first (see the module docstring)."""
    live: list[AliasMove] = []
    skip_from: int | None = None  # rows with seq >= this were undone by a later rollback
    for move in reversed(history):
        if skip_from is not None and move.seq >= skip_from:
            continue
        if move.action == "rollback":
            skip_from = move.undoes
            continue
        live.append(move)
    return live


def _rollback_target(alias: str, current: str, chain: list[AliasMove], to_version: str | None) -> AliasMove:
    """The oldest move the rollback undoes (its from_version is where the alias goes)."""
    if to_version is None:
        if not chain or chain[0].from_version is None:
            raise Conflict(f"alias '{alias}' has no earlier version to roll back to (it points at '{current}')")
        return chain[0]
    if to_version == current:
        raise Conflict(f"alias '{alias}' already points at '{to_version}'; nothing to roll back")
    for move in chain:
        if move.from_version == to_version:
            return move
    earlier = [m.from_version for m in chain if m.from_version]
    raise Conflict(
        f"'{to_version}' is not an earlier version of alias '{alias}' (earlier: {', '.join(earlier) or 'none'}); "
        f"to move it there anyway use `kaizen registry promote {to_version} --alias {alias}`"
    )


def rollback_alias(con: duckdb.DuckDBPyConnection, alias: str, to_version: str | None = None,
                   reason: str = "", actor: str = "system") -> AliasMove:
    """Move `alias` back one step (or back to `to_version`) and record it; returns the move.

    The returned move's from_version/to_version are where the alias was and now is.
    """
    with transaction(con):
        current = get_alias(con, alias)
        if current is None:
            raise NotFound(f"no alias '{alias}'; run `kaizen registry list` to see aliases")
        undone = _rollback_target(alias, current, undo_chain(alias_history(con, alias)), to_version)
        target = undone.from_version
        assert target is not None  # _rollback_target only returns moves with a from_version
        _check_servable(con, target)
        return _record_move(con, alias, current, target, "rollback", undone.seq,
                            reason or f"rollback {alias}", actor)
