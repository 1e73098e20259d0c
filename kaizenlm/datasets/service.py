"""Dataset and right-to-be-forgotten operations with JSON-shaped results: one implementation
behind both the controller's admin API (kaizenlm.datasets.api) and the CLI's direct-to-DuckDB
path (kaizenlm.datasets.client), so the two answer identically.

Errors: ValueError for bad input (HTTP 400), LookupError for an unknown snapshot (HTTP 404).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from pathlib import Path

import duckdb
import orjson

from kaizenlm.config import Config, ConfigError, CurationConfig
from kaizenlm.datasets import integrity
from kaizenlm.datasets import snapshots as datasets
from kaizenlm.datasets.decontam import load_holdout
from kaizenlm.datasets.reviewed import ReviewedRows
from kaizenlm.feedback import rewards
from kaizenlm.registry import versions as version_ops
from kaizenlm.registry.transaction import transaction

# ---------------------------------------------------------------------------------------------
# Datasets


def _curation_with(cfg: Config, overrides: dict | None) -> Config:
    """cfg with some [curation] keys replaced (validated like the file's)."""
    if not overrides:
        return cfg
    known = {f.name for f in dataclasses.fields(CurationConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown curation key {unknown[0]}; known keys: {', '.join(sorted(known))}")
    try:
        section = CurationConfig(**{**vars(cfg.curation), **overrides})
    except (ConfigError, TypeError) as e:
        raise ValueError(str(e)) from None
    return dataclasses.replace(cfg, curation=section)


REVIEWS_PROVIDER = "kaizenlm.annotate.training:reviewed_rows"
"""What human reviewers decided, for a build: `f(con, cfg) -> ReviewedRows`. Named by import path
(like the scheduler's DEFAULT_TIERS) because the annotation package sits above this one: the
datasets package never imports it, and a build runs without it when it is not installed."""


def reviewed_rows(con: duckdb.DuckDBPyConnection, cfg: Config) -> ReviewedRows | None:
    """The reviews a build uses (REVIEWS_PROVIDER), gated by the reviewers' agreement; None
    when no annotation package is installed."""
    module, _, name = REVIEWS_PROVIDER.partition(":")
    try:
        provider = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        return None
    if not _has_review_tables(con):  # a file opened read-only before its review tables were added
        return None
    return provider(con, cfg)


def _has_review_tables(con: duckdb.DuckDBPyConnection) -> bool:
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name IN (SELECT unnest(?))",
                        [list(REVIEW_TABLES)]).fetchone()[0]
    return found == len(REVIEW_TABLES)


def build(con: duckdb.DuckDBPyConnection, cfg: Config, *, since: str | None = None, until: str | None = None,
          as_of: str | None = None, all_data: bool = False, holdout: list[str] | None = None,
          replay: str | None = None, dry_run: bool = False, curation_overrides: dict | None = None,
          accepted_corrections: list[str] | None = None, reviews: bool = True) -> dict:
    """Curate a window and write (or reuse) its snapshot. ``holdout``: files of held-out texts
    (added to curation.holdout_path); ``replay``: a JSONL file of general examples (default:
    Config.replay_path: curation.replay_path, else the base's own general answers; else none).
    Paths are on this machine.
    ``accepted_corrections``: turn ids whose correction a reviewer accepted (kaizenlm.datasets.integrity).
    ``reviews``: use what human reviewers decided (`reviewed_rows`; only while they agree, else
    the manifest's ``reviews.reason`` and a warning say why not).
    Returns the manifest plus ``path``, ``reused``, ``dry_run`` and ``user_anomalies`` (the
    per-user report, kaizenlm.datasets.integrity.report_summary; not stored in the manifest)."""
    cfg = _curation_with(cfg, curation_overrides)
    window = datasets.default_window(cfg.curation, since=since, until=until, as_of=as_of, all_data=all_data)
    holdout_files = ([cfg.curation.holdout_path] if cfg.curation.holdout_path else []) + list(holdout or [])
    replay_file = replay or cfg.replay_path or None
    texts = [text for f in holdout_files for text in load_holdout(f)]
    replay_rows = datasets.load_replay(replay_file) if replay_file else None
    sources = {"holdout_files": [str(Path(f).expanduser()) for f in holdout_files], "holdout_texts": len(texts),
               "replay_file": str(Path(replay_file).expanduser()) if replay_file else ""}
    snap = datasets.build_snapshot(con, cfg, window, holdout=texts, replay=replay_rows,
                                   replay_source=sources["replay_file"], dry_run=dry_run, sources=sources,
                                   accepted_corrections=accepted_corrections or (),
                                   reviews=reviewed_rows(con, cfg) if reviews else None)
    warnings = list(snap.manifest.get("warnings", []))
    note = snap.reviews  # this build's, also when the snapshot was reused
    if note is not None and not note["gate_open"] and note.get("labelled_items") and \
            not any(w.startswith("reviewed labels not used") for w in warnings):
        warnings.append(f"reviewed labels not used: {note['reason']}")
    return {**snap.manifest, "path": str(snap.path), "reused": snap.reused, "dry_run": dry_run,
            "user_anomalies": snap.user_report, "reviews": note, "warnings": warnings}


def user_anomalies(con: duckdb.DuckDBPyConnection, cfg: Config, *, since: str | None = None,
                   until: str | None = None, as_of: str | None = None, all_data: bool = False,
                   limit: int = 25) -> dict:
    """The per-user anomaly report of a window (correction rate, repeated corrections, bursts;
    who is flagged and why), as a dataset build would compute it."""
    window = datasets.default_window(cfg.curation, since=since, until=until, as_of=as_of, all_data=all_data)
    report = integrity.user_report(con, window, cfg.curation)
    return {**integrity.report_summary(report, cfg.curation, limit), "window": window.to_json()}


def _summary(row: dict) -> dict:
    manifest = orjson.loads(row["manifest"])
    return {
        "snapshot_id": row["snapshot_id"], "content_hash": row["content_hash"], "created_at": manifest["created_at"],
        "window": manifest["window"], "counts": manifest["counts"], "path": row["path"],
        "mix_ratio": manifest.get("mix_ratio"), "pair_sources": manifest.get("pair_sources"),
        "forgotten": len(manifest.get("forgotten", [])),
    }


def _snapshot_rows(con: duckdb.DuckDBPyConnection, where: str = "TRUE", params: list | None = None) -> list[dict]:
    result = con.execute(f"SELECT snapshot_id, content_hash, path, manifest FROM dataset_snapshots WHERE {where} "
                         "ORDER BY created_at DESC, snapshot_id DESC", params or [])
    cols = [d[0] for d in result.description]
    return [dict(zip(cols, r, strict=True)) for r in result.fetchall()]


def list_snapshots(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Registered snapshots, newest first: id, window, counts, mix ratio, pair sources, forgotten marks."""
    return [_summary(r) for r in _snapshot_rows(con)]


def show(con: duckdb.DuckDBPyConnection, snapshot_id: str) -> dict:
    """The full manifest of a registered snapshot (id or unambiguous prefix, with or without 'ds-')."""
    wanted = snapshot_id if snapshot_id.startswith("ds-") else f"ds-{snapshot_id}"
    rows = _snapshot_rows(con, "snapshot_id = ?", [wanted]) or _snapshot_rows(con, "starts_with(snapshot_id, ?)",
                                                                               [wanted])
    if not rows:
        raise LookupError(f"no snapshot {snapshot_id}; `kaizen dataset list` shows the registered ones")
    if len(rows) > 1:
        raise ValueError(f"{snapshot_id} is ambiguous: " + ", ".join(r["snapshot_id"] for r in rows))
    return {**orjson.loads(rows[0]["manifest"]), "path": rows[0]["path"]}


def reward_report(con: duckdb.DuckDBPyConnection, cfg: Config, *, since: str | None = None, until: str | None = None,
                  as_of: str | None = None, all_data: bool = False) -> dict:
    """Reward distribution of a window and the calibration of implicit against explicit feedback."""
    window = datasets.default_window(cfg.curation, since=since, until=until, as_of=as_of, all_data=all_data)
    frame = rewards.reward_frame(con, window, cfg.rewards)
    return {**rewards.summarize(frame), "calibration": rewards.calibration(frame, cfg.rewards),
            "window": window.to_json()}


# ---------------------------------------------------------------------------------------------
# Right to be forgotten


def subject_hash(user_id: str) -> str:
    """What a forget mark records instead of the user id."""
    return hashlib.sha256(f"kaizen-forget:{user_id}".encode()).hexdigest()[:16]


def _ids(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> list[str]:
    return sorted(r[0] for r in con.execute(sql, params).fetchall() if r[0] is not None)


def _snapshot_roots(con: duckdb.DuckDBPyConnection, cfg: Config) -> list[Path]:
    roots = {cfg.snapshots_dir} | {Path(r[0]).parent for r in con.execute("SELECT path FROM dataset_snapshots").fetchall()}
    return sorted(roots)


REVIEW_TABLES = ("review_labels", "review_assignments", "review_items")


def forget(con: duckdb.DuckDBPyConnection, cfg: Config, user_id: str, dry_run: bool = False) -> dict:
    """Delete a user's turns, feedback and signals, and reviewers' copies of their texts
    (review items of their turns, the labels and assignments on those); list and mark every snapshot that holds
    their data and, through lineage (model_versions.snapshot_id, then parents), every model
    version built from those snapshots (tainted: aliases refuse them).

    The marks come first and the deletion last, so a failure half-way leaves the user's rows
    in place with the marks set, never the other way round. Returns what was (or, with
    dry_run, would be) deleted and marked.
    """
    user_id = user_id.strip() if isinstance(user_id, str) else ""
    if not user_id:
        raise ValueError("user_id is empty; pass the pseudonymous user id the events carry")
    turns = _ids(con, "SELECT DISTINCT turn_id FROM turns WHERE user_id = ?", [user_id])
    conversations = _ids(con, "SELECT DISTINCT conversation_id FROM turns WHERE user_id = ?", [user_id])
    # their feedback on any turn: a correction they wrote may be a training target
    rated = _ids(con, "SELECT DISTINCT turn_id FROM feedback WHERE user_id = ?", [user_id])
    touched = sorted(set(turns) | set(rated))
    feedback_where = "user_id = ? OR list_contains(?, turn_id)"
    signals_where = ("user_id = ? OR list_contains(?, turn_id) "
                     "OR (turn_id IS NULL AND list_contains(?, conversation_id))")
    # reviewers' copies of the user's text (kaizenlm.annotate's tables, in this DuckDB file): items
    # of their turns or with their user id, and the labels (gold answers) and assignments on them
    review_where = "item_id IN (SELECT item_id FROM review_items WHERE user_id = ? OR list_contains(?, turn_id))"
    counts = {
        "turns": con.execute("SELECT count(*) FROM turns WHERE user_id = ?", [user_id]).fetchall()[0][0],
        "feedback": con.execute(f"SELECT count(*) FROM feedback WHERE {feedback_where}", [user_id, turns]).fetchall()[0][0],
        "signals": con.execute(f"SELECT count(*) FROM signals WHERE {signals_where}",
                               [user_id, turns, conversations]).fetchall()[0][0],
    }
    review_tables = REVIEW_TABLES if _has_review_tables(con) else ()
    counts.update({table: con.execute(f"SELECT count(*) FROM {table} WHERE {review_where}",
                                      [user_id, touched]).fetchall()[0][0] for table in review_tables})
    snapshots = sorted({s for root in _snapshot_roots(con, cfg) for s in datasets.snapshots_with_turns(root, touched)})
    direct = _ids(con, "SELECT version_id FROM model_versions WHERE list_contains(?, snapshot_id)", [snapshots])
    model_versions = version_ops.descendants(con, direct)
    report = {"user_id": user_id, "subject": subject_hash(user_id), "dry_run": dry_run, "deleted": counts,
              "snapshots": snapshots, "model_versions": model_versions, "model_versions_direct": direct}
    if dry_run:
        return report
    for root in _snapshot_roots(con, cfg):
        here = [s for s in snapshots if (root / s / "manifest.json").is_file()]
        datasets.mark_forgotten(con, root, here, report["subject"], touched)
    report["model_versions"] = version_ops.mark_tainted(con, snapshots)
    with transaction(con):
        con.execute(f"DELETE FROM feedback WHERE {feedback_where}", [user_id, turns])
        con.execute(f"DELETE FROM signals WHERE {signals_where}", [user_id, turns, conversations])
        con.execute("DELETE FROM turns WHERE user_id = ?", [user_id])
        for table in review_tables:  # items last: the others find their rows through them
            con.execute(f"DELETE FROM {table} WHERE {review_where}", [user_id, touched])
    return report
