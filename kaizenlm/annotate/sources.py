"""Where review items come from: rows for `queue.enqueue`, selected from the event tables.

- corrections: turns a user sent a correction for (the latest correction per turn);
- disagreements: turns whose explicit feedback (thumbs, rating) and implicit signals
  (regenerate, copy, abandon, ...) point opposite ways, scored by kaizenlm.feedback.rewards;
- sample: a seeded random sample of served turns (default 100 a week, `annotate.sample_size`).

Blind pairs are not selected here: they need both versions' answers to the same question,
which the evaluation produces (`queue.enqueue(con, "blind_pair", rows)` takes them).
Each function takes a time window (since <= ts < until) and returns plain dicts.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from kaizenlm.annotate.settings import AnnotateError


def _window(since: datetime | None, until: datetime | None, alias: str = "t") -> tuple[str, list]:
    if since and until and since >= until:
        raise AnnotateError("since", f"must be before until ({since.isoformat()} >= {until.isoformat()})")
    return (f"(?::TIMESTAMPTZ IS NULL OR {alias}.ts >= ?::TIMESTAMPTZ) AND "
            f"(?::TIMESTAMPTZ IS NULL OR {alias}.ts < ?::TIMESTAMPTZ)", [since, since, until, until])


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def corrections(con: duckdb.DuckDBPyConnection, since: datetime | None = None, until: datetime | None = None,
                limit: int | None = None) -> list[dict]:
    """Turns with a user correction (the latest per turn), oldest first: rows of kind `correction`."""
    cond, params = _window(since, until)
    rows = _rows(con.execute(
        f"""SELECT t.turn_id, t.prompt, t.response AS answer, f.correction, t.user_id,
               f.ts AS corrected_at, t.model_version
        FROM turns t JOIN feedback f ON f.turn_id = t.turn_id
        WHERE f.correction IS NOT NULL AND trim(f.correction) <> '' AND {cond}
        QUALIFY row_number() OVER (PARTITION BY t.turn_id ORDER BY f.ts DESC, f.event_id DESC) = 1
        ORDER BY t.ts, t.turn_id LIMIT ?""", [*params, limit]))
    for r in rows:
        r["source"] = {"why": "user correction", "corrected_at": r.pop("corrected_at").isoformat(),
                       "model_version": r.pop("model_version")}
    return rows


def disagreements(con: duckdb.DuckDBPyConnection, weights, since: datetime | None = None,
                  until: datetime | None = None, limit: int | None = None) -> list[dict]:
    """Turns whose explicit and implicit feedback disagree: a thumbs-up (or 4-5 stars) with a
    negative implicit reward (regenerated, abandoned), or a thumbs-down (1-2 stars, a
    correction) with a positive one (copied, completed). `weights`: the [rewards] section."""
    import numpy as np

    from kaizenlm.feedback.rewards import Window, reward_frame

    frame = reward_frame(con, Window(since=since, until=until), weights)
    if not len(frame):
        return []
    thumbs = frame["thumbs"].to_numpy(dtype=float)
    rating = frame["rating"].to_numpy(dtype=float)
    explicit = np.where(~np.isnan(thumbs), thumbs, np.where(~np.isnan(rating), np.sign(rating - 3.0), np.nan))
    explicit = np.where(frame["has_correction"].to_numpy() == 1, -1.0, explicit)
    implicit = np.sign(frame["implicit_reward"].to_numpy(dtype=float))
    mask = ~np.isnan(explicit) & ~np.isnan(implicit) & (explicit != 0) & (implicit != 0) & (explicit != implicit)
    picked = frame[mask]
    if not len(picked):
        return []
    signs = {row.turn_id: (int(e), float(r)) for row, e, r in zip(
        picked.itertuples(), explicit[mask], picked["implicit_reward"].to_numpy(dtype=float), strict=True)}
    turns = _rows(con.execute(
        "SELECT turn_id, prompt, response AS answer, user_id, ts FROM turns WHERE turn_id IN (SELECT unnest(?)) "
        "QUALIFY row_number() OVER (PARTITION BY turn_id ORDER BY ts, event_id) = 1 ORDER BY ts, turn_id",
        [list(signs)]))
    out = []
    for t in turns[:limit] if limit else turns:
        e, r = signs[t["turn_id"]]
        t.pop("ts")
        t["source"] = {"why": "explicit and implicit feedback disagree", "explicit": e,
                       "implicit_reward": round(r, 4)}
        out.append(t)
    return out


def sample(con: duckdb.DuckDBPyConnection, size: int, since: datetime | None = None, until: datetime | None = None,
           seed: str = "") -> list[dict]:
    """A random sample of `size` served turns from the window, the same every time for the same
    seed and data: the turns with the smallest sha256(seed | turn id), drawn in DuckDB so a big
    window is never loaded (the default seed is the window)."""
    if not isinstance(size, int) or size < 0:
        raise AnnotateError("size", f"must be a whole number >= 0 (got {size!r})")
    cond, params = _window(since, until)
    seed = seed or f"{since.isoformat() if since else ''}|{until.isoformat() if until else ''}"
    rows = _rows(con.execute(
        f"""SELECT turn_id, prompt, response AS answer, user_id, model_version FROM turns t WHERE {cond}
        QUALIFY row_number() OVER (PARTITION BY turn_id ORDER BY ts, event_id) = 1
        ORDER BY sha256(? || '|' || turn_id), turn_id LIMIT ?""", [*params, seed, size]))
    for r in rows:
        r["source"] = {"why": "random sample", "seed": seed, "model_version": r.pop("model_version")}
    return rows
