"""The review queue in DuckDB: enqueue items, assign them to reviewers with overlap, and hand a
reviewer their next item. Functions on a DuckDB connection; the controller is the one writer.

Tables (migration 7 in kaizenlm/ingest/store.py; docs/ANNOTATION.md):

- review_items: one row per item. Its id is a hash of where it came from (kind + turn id, or
  the blind pair's prompt and versions), so enqueueing the same source twice adds nothing.
  Blind pairs store both answers as A and B in an order drawn from the item id, and the
  versions behind A and B, which never leave the server (`reviewer_view` drops them).
- review_assignments: (item, reviewer); `overlap` marks the items given to 2+ reviewers.

Assignment is deterministic: the same queue and reviewer list give the same assignment.
Per kind, the overlap items are the unassigned items with the smallest hash until
ceil(overlap * items of that kind) items have 2+ reviewers; each item goes to the reviewer(s)
with the fewest open items (assigned, not yet labelled), ties broken by a hash of
(item, reviewer) so no reviewer is always first.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import duckdb

from kaizenlm.annotate.settings import KINDS, AnnotateError
from kaizenlm.registry.transaction import transaction

ITEM_COLUMNS = ("item_id", "kind", "turn_id", "user_id", "prompt", "answer", "correction", "answer_a", "answer_b",
                "version_a", "version_b", "source", "batch", "created_at")
HIDDEN = ("version_a", "version_b", "user_id")
"""Columns a reviewer never sees (the versions behind a blind pair; whose text it is)."""


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def item_id_for(kind: str, row: Mapping) -> str:
    """The id of the item a source row becomes: the same source gives the same id."""
    if kind == "blind_pair":
        versions = sorted(str(c["version"]) for c in row["candidates"])
        key = str(row.get("question_id") or row["prompt"])
        return "rv-" + _hash(kind, key, *versions)[:16]
    return "rv-" + _hash(kind, str(row["turn_id"]))[:16]


def _text(row: Mapping, key: str, where: str, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise AnnotateError(f"{where}.{key}", f"must be a non-empty string (got {value!r})")
    return value


def _item(kind: str, row: Mapping, where: str, batch: str | None, now: datetime) -> dict:
    if not isinstance(row, Mapping):
        raise AnnotateError(where, f"must be an object with the item's fields (got {type(row).__name__})")
    source = row.get("source") or {}
    if not isinstance(source, Mapping):
        raise AnnotateError(f"{where}.source", "must be an object (why the item was queued)")
    item = dict.fromkeys(ITEM_COLUMNS)
    item.update(kind=kind, prompt=_text(row, "prompt", where), source=json.dumps(dict(source), sort_keys=True),
                batch=batch, created_at=now, user_id=_text(row, "user_id", where, required=False))
    if kind == "blind_pair":
        candidates = row.get("candidates")
        if not isinstance(candidates, Sequence) or isinstance(candidates, str) or len(candidates) != 2:
            raise AnnotateError(f"{where}.candidates", "must be a list of exactly 2 {version, answer} objects")
        for n, c in enumerate(candidates):
            if not isinstance(c, Mapping):
                raise AnnotateError(f"{where}.candidates[{n}]", "must be an object {version, answer}")
            _text(c, "version", f"{where}.candidates[{n}]")
            _text(c, "answer", f"{where}.candidates[{n}]")
        if candidates[0]["version"] == candidates[1]["version"]:
            raise AnnotateError(f"{where}.candidates", "must name two different versions")
        item["item_id"] = item_id_for(kind, row)
        first, second = candidates
        if int(_hash(item["item_id"], "order")[:8], 16) & 1:  # the order shown as A/B: drawn from the id
            first, second = second, first
        item.update(answer_a=first["answer"], answer_b=second["answer"],
                    version_a=first["version"], version_b=second["version"])
        return item
    item["turn_id"] = _text(row, "turn_id", where)
    item["answer"] = _text(row, "answer", where)
    item["correction"] = _text(row, "correction", where, required=kind == "correction")
    item["item_id"] = item_id_for(kind, row)
    return item


def enqueue(con: duckdb.DuckDBPyConnection, kind: str, rows: Iterable[Mapping], *, batch: str | None = None,
            now: datetime | None = None) -> dict:
    """Add review items of one kind from plain rows; an item already queued is left as it is.

    Rows by kind (`source`, an object saying why the item was queued, and `user_id`, whose
    text it is, are optional for every kind):

    - correction: turn_id, prompt, answer, correction
    - disagreement, sample: turn_id, prompt, answer (correction optional)
    - blind_pair: prompt, candidates = [{version, answer}, {version, answer}], question_id optional

    Every row is checked before anything is written; an error names the row and field
    (`rows[3].prompt`). Returns {kind, added, already_queued, item_ids}.
    """
    if kind not in KINDS:
        raise AnnotateError("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    now = now or datetime.now(UTC)
    items: dict[str, dict] = {}
    for n, row in enumerate(rows):
        item = _item(kind, row, f"rows[{n}]", batch, now)
        items.setdefault(item["item_id"], item)
    if not items:
        return {"kind": kind, "added": 0, "already_queued": 0, "item_ids": []}
    ids = list(items)
    existing = {i for (i,) in con.execute(
        "SELECT item_id FROM review_items WHERE item_id IN (SELECT unnest(?))", [ids]).fetchall()}
    new = [items[i] for i in ids if i not in existing]
    if new:
        with transaction(con):
            con.executemany(
                f"INSERT OR IGNORE INTO review_items ({', '.join(ITEM_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(ITEM_COLUMNS))})", [[item[c] for c in ITEM_COLUMNS] for item in new])
    return {"kind": kind, "added": len(new), "already_queued": len(existing), "item_ids": ids}


def _check_reviewers(reviewers: Sequence[str]) -> list[str]:
    if isinstance(reviewers, str):
        raise AnnotateError("reviewers", "must be a list of names, not one string")
    names = [str(r).strip() for r in reviewers]
    if not names or not all(names):
        raise AnnotateError("reviewers", "must name at least one reviewer, none empty")
    if len(set(names)) != len(names):
        raise AnnotateError("reviewers", f"names a reviewer twice: {sorted(names)}")
    return sorted(names)


def assign(con: duckdb.DuckDBPyConnection, reviewers: Sequence[str], *, overlap: float = 0.1,
           overlap_reviewers: int = 2, now: datetime | None = None) -> dict:
    """Assign every unassigned item: one reviewer each, 2+ for the overlap share of each kind.

    Returns {assigned_items, assignments, overlap_items (newly assigned to 2+), per_kind,
    per_reviewer (open items after), warnings}. With one reviewer there can be no overlap
    (a warning says so); agreement then cannot be measured.
    """
    names = _check_reviewers(reviewers)
    if not 0.0 <= overlap <= 1.0:
        raise AnnotateError("overlap", f"must be in 0..1 (got {overlap})")
    if overlap_reviewers < 2:
        raise AnnotateError("overlap_reviewers", f"must be >= 2 (got {overlap_reviewers})")
    now = now or datetime.now(UTC)
    per_item = min(overlap_reviewers, len(names))
    load = dict.fromkeys(names, 0)
    for reviewer, n in con.execute(
            "SELECT a.reviewer, count(*) FROM review_assignments a WHERE NOT EXISTS (SELECT 1 FROM review_labels l "
            "WHERE l.item_id = a.item_id AND l.reviewer = a.reviewer) GROUP BY a.reviewer").fetchall():
        if reviewer in load:
            load[reviewer] = n
    rows, per_kind, warnings = [], {}, []
    for kind in KINDS:
        total, overlapped = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE n >= 2) FROM (SELECT i.item_id, count(a.reviewer) AS n "
            "FROM review_items i LEFT JOIN review_assignments a USING (item_id) WHERE i.kind = ? GROUP BY i.item_id)",
            [kind]).fetchone()
        unassigned = [i for (i,) in con.execute(
            "SELECT item_id FROM review_items i WHERE kind = ? AND NOT EXISTS "
            "(SELECT 1 FROM review_assignments a WHERE a.item_id = i.item_id) ORDER BY created_at, item_id",
            [kind]).fetchall()]
        if not unassigned:
            continue
        need = max(0, math.ceil(overlap * total) - overlapped) if per_item >= 2 else 0
        chosen = set(sorted(unassigned, key=lambda i: _hash(i, "overlap"))[:need])
        for item_id in unassigned:
            k = per_item if item_id in chosen else 1
            picked = sorted(names, key=lambda r, i=item_id: (load[r], _hash(i, r)))[:k]
            for reviewer in picked:
                load[reviewer] += 1
                rows.append([item_id, reviewer, now, item_id in chosen])
        per_kind[kind] = {"assigned_items": len(unassigned), "overlap_items": len(chosen),
                          "overlap_share": round((overlapped + len(chosen)) / total, 4)}
    if len(names) < 2 and overlap > 0:
        warnings.append("one reviewer only: no item can be labelled twice, so agreement cannot be measured")
    if rows:
        with transaction(con):
            con.executemany("INSERT OR IGNORE INTO review_assignments (item_id, reviewer, assigned_at, overlap) "
                            "VALUES (?, ?, ?, ?)", rows)
    return {"assigned_items": sum(k["assigned_items"] for k in per_kind.values()), "assignments": len(rows),
            "overlap_items": sum(k["overlap_items"] for k in per_kind.values()), "per_kind": per_kind,
            "per_reviewer": load, "warnings": warnings}


def reviewer_view(item: Mapping) -> dict:
    """What a reviewer is shown: the item without the hidden columns (blind pairs keep only A/B)."""
    view = {k: v for k, v in item.items() if k not in HIDDEN}
    if isinstance(view.get("source"), str):
        view["source"] = json.loads(view["source"])
    if isinstance(view.get("created_at"), datetime):
        view["created_at"] = view["created_at"].isoformat()
    if item.get("kind") == "blind_pair":
        for key in ("turn_id", "answer", "correction", "source"):
            view.pop(key, None)  # nothing that could tell which version wrote which answer
    else:
        view.pop("answer_a", None)
        view.pop("answer_b", None)
    return view


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def get_item(con: duckdb.DuckDBPyConnection, item_id: str) -> dict | None:
    """The full item row (hidden columns included: for the server side only), or None."""
    found = _rows(con.execute(f"SELECT {', '.join(ITEM_COLUMNS)} FROM review_items WHERE item_id = ?", [item_id]))
    return found[0] if found else None


def next_item(con: duckdb.DuckDBPyConnection, reviewer: str, kind: str | None = None) -> dict | None:
    """The reviewer's oldest assigned item they have not labelled yet (reviewer view), or None.

    The result carries `remaining`: how many open items the reviewer has, this one included.
    """
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise AnnotateError("reviewer", "must be a non-empty name")
    if kind is not None and kind not in KINDS:
        raise AnnotateError("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    cols = ", ".join(f"i.{c}" for c in ITEM_COLUMNS)
    found = _rows(con.execute(
        f"SELECT {cols}, count(*) OVER () AS remaining FROM review_assignments a JOIN review_items i USING (item_id) "
        "WHERE a.reviewer = ? AND (? IS NULL OR i.kind = ?) AND NOT EXISTS (SELECT 1 FROM review_labels l "
        "WHERE l.item_id = a.item_id AND l.reviewer = a.reviewer) "
        "ORDER BY a.assigned_at, i.created_at, i.item_id LIMIT 1", [reviewer, kind, kind]))
    return reviewer_view(found[0]) if found else None


def queue_status(con: duckdb.DuckDBPyConnection) -> dict:
    """Counts per kind (items, assigned, labelled, overlap items) and open items per reviewer."""
    per_kind = {}
    for kind, items, assigned, labelled, overlap in con.execute(
            "SELECT i.kind, count(*), count(*) FILTER (WHERE a.n > 0), count(*) FILTER (WHERE l.n > 0), "
            "count(*) FILTER (WHERE a.n >= 2) FROM review_items i "
            "LEFT JOIN (SELECT item_id, count(*) AS n FROM review_assignments GROUP BY item_id) a USING (item_id) "
            "LEFT JOIN (SELECT item_id, count(DISTINCT reviewer) AS n FROM review_labels GROUP BY item_id) l "
            "USING (item_id) GROUP BY i.kind ORDER BY i.kind").fetchall():
        per_kind[kind] = {"items": items, "assigned": assigned, "labelled": labelled, "overlap_items": overlap}
    open_items = dict(con.execute(
        "SELECT a.reviewer, count(*) FROM review_assignments a WHERE NOT EXISTS (SELECT 1 FROM review_labels l "
        "WHERE l.item_id = a.item_id AND l.reviewer = a.reviewer) GROUP BY a.reviewer ORDER BY a.reviewer").fetchall())
    return {"per_kind": per_kind, "open_per_reviewer": open_items,
            "items": sum(k["items"] for k in per_kind.values())}


def list_items(con: duckdb.DuckDBPyConnection, *, kind: str | None = None, reviewer: str | None = None,
               limit: int = 50) -> list[dict]:
    """Items newest first (reviewer view), with their reviewers and how many labels each has."""
    if kind is not None and kind not in KINDS:
        raise AnnotateError("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    if not 1 <= limit <= 10_000:
        raise AnnotateError("limit", f"must be in 1..10000 (got {limit})")
    cols = ", ".join(f"i.{c}" for c in ITEM_COLUMNS)
    found = _rows(con.execute(
        f"SELECT {cols}, coalesce(a.reviewers, []) AS reviewers, coalesce(l.n, 0) AS labels FROM review_items i "
        "LEFT JOIN (SELECT item_id, list(reviewer ORDER BY reviewer) AS reviewers FROM review_assignments "
        "GROUP BY item_id) a USING (item_id) "
        "LEFT JOIN (SELECT item_id, count(DISTINCT reviewer) AS n FROM review_labels GROUP BY item_id) l USING (item_id) "
        "WHERE (? IS NULL OR i.kind = ?) AND (? IS NULL OR list_contains(a.reviewers, ?)) "
        "ORDER BY i.created_at DESC, i.item_id LIMIT ?", [kind, kind, reviewer, reviewer, limit]))
    return [reviewer_view(r) for r in found]
