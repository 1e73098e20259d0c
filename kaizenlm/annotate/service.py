"""Annotation operations with JSON-shaped results: one implementation behind both the
controller's admin API (kaizenlm.annotate.api) and the CLI's direct-to-DuckDB path
(kaizenlm.annotate.client), so the two answer identically.

Errors: AnnotateError (HTTP 400, `field` names what is wrong), NotFound (HTTP 404). Every
write checks all of its input before it stores anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import duckdb

from kaizenlm.annotate import label_studio, labels, queue, sources, training, weekly
from kaizenlm.annotate.settings import KINDS, AnnotateError, label_schema, settings_of

FROM_SOURCES = ("corrections", "disagreements", "sample")


def when(value: str | datetime | None, name: str) -> datetime | None:
    """An ISO 8601 date or time (UTC when it names no zone), or None."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise AnnotateError(name, f"not a date or time: {value!r} (ISO 8601, e.g. 2025-01-31)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def status(con: duckdb.DuckDBPyConnection, cfg) -> dict:
    """Items per kind and open items per reviewer, plus the training gate."""
    settings = settings_of(cfg)
    gate = labels.agreement_summary(con, label_schema(settings), min_kappa=settings.min_kappa)["gate"]
    return {**queue.queue_status(con), "gate": gate, "reviewers": list(settings.reviewers)}


def items(con: duckdb.DuckDBPyConnection, kind: str | None = None, reviewer: str | None = None,
          limit: int = 50) -> dict:
    return {"items": queue.list_items(con, kind=kind, reviewer=reviewer, limit=limit)}


def add_rows(con: duckdb.DuckDBPyConnection, kind: str, rows: Sequence[Mapping], batch: str | None = None) -> dict:
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise AnnotateError("rows", "must be a list of row objects")
    return queue.enqueue(con, kind, rows, batch=batch or f"rows-{datetime.now(UTC).date().isoformat()}")


def add_from(con: duckdb.DuckDBPyConnection, cfg, source: str, since: str | None = None, until: str | None = None,
             size: int | None = None, limit: int | None = None, batch: str | None = None) -> dict:
    """Queue items from the event tables: corrections, disagreements or a random sample."""
    if source not in FROM_SOURCES:
        raise AnnotateError("source", f"must be one of {', '.join(FROM_SOURCES)} (got {source!r})")
    start, end = when(since, "since"), when(until, "until")
    if limit is not None and limit < 1:
        raise AnnotateError("limit", f"must be >= 1 (got {limit})")
    batch = batch or f"{source}-{datetime.now(UTC).date().isoformat()}"
    if source == "corrections":
        return queue.enqueue(con, "correction", sources.corrections(con, start, end, limit), batch=batch)
    if source == "disagreements":
        return queue.enqueue(con, "disagreement", sources.disagreements(con, cfg.rewards, start, end, limit),
                             batch=batch)
    size = settings_of(cfg).sample_size if size is None else size
    if not isinstance(size, int) or size < 0:
        raise AnnotateError("size", f"must be a whole number >= 0 (got {size!r})")
    return queue.enqueue(con, "sample", sources.sample(con, size, start, end), batch=batch)


def sweep(con: duckdb.DuckDBPyConnection, cfg, until: str | None = None, days: float = 7.0) -> dict:
    return weekly.sweep(con, cfg, when(until, "until"), days=days)


def assign(con: duckdb.DuckDBPyConnection, cfg, reviewers: Sequence[str] | None = None,
           overlap: float | None = None) -> dict:
    settings = settings_of(cfg)
    names = list(reviewers) if reviewers else list(settings.reviewers)
    if not names:
        raise AnnotateError("reviewers", "name the reviewers (e.g. alice,bob) or set annotate.reviewers")
    return queue.assign(con, names, overlap=settings.overlap if overlap is None else overlap,
                        overlap_reviewers=settings.overlap_reviewers)


def next_item(con: duckdb.DuckDBPyConnection, reviewer: str, kind: str | None = None) -> dict:
    return {"reviewer": reviewer, "item": queue.next_item(con, reviewer, kind=kind)}


def label(con: duckdb.DuckDBPyConnection, cfg, item_id: str, reviewer: str, verdict: str, *,
          label: str | None = None, gold_answer: str | None = None, note: str | None = None,
          require_assignment: bool = False) -> dict:
    """Record a label; a label on a blind pair refreshes its candidate's human win rate."""
    stored = labels.record_label(con, item_id, reviewer, verdict, label=label, gold_answer=gold_answer, note=note,
                                 schema=label_schema(settings_of(cfg)), require_assignment=require_assignment)
    stored["human_metrics"] = training.refresh_human_metrics(con, cfg) if stored["kind"] == "blind_pair" else []
    return stored


def stats(con: duckdb.DuckDBPyConnection, cfg, min_kappa: float | None = None) -> dict:
    settings = settings_of(cfg)
    if min_kappa is not None and not 0.0 < min_kappa <= 1.0:
        raise AnnotateError("min_kappa", f"must be in (0, 1] (got {min_kappa})")
    summary = labels.agreement_summary(con, label_schema(settings),
                                       min_kappa=settings.min_kappa if min_kappa is None else min_kappa)
    return {"source": "duckdb", **summary, "human_win_rates": training.human_win_rates(con)}


def export(con: duckdb.DuckDBPyConnection, cfg, kind: str | None = None, reviewer: str | None = None,
           limit: int = 1000) -> dict:
    """Queued items as Label Studio tasks with their labelling configs: answers and blind pairs
    apart (they need different configs); blind pairs without their versions."""
    schema = label_schema(settings_of(cfg))
    found = queue.list_items(con, kind=kind, reviewer=reviewer, limit=limit)
    found.reverse()  # oldest first, as they were queued
    out: dict = {"format": "label-studio", "items": len(found)}
    for name, group in (("answers", [i for i in found if i["kind"] != "blind_pair"]),
                        ("blind_pairs", [i for i in found if i["kind"] == "blind_pair"])):
        if group:
            out[name] = {"tasks": label_studio.export_tasks(group, schema),
                         "config": label_studio.labelling_config(schema, blind=name == "blind_pairs")}
    return out


def import_export(con: duckdb.DuckDBPyConnection, cfg, data) -> dict:
    """Record the labels of a Label Studio JSON export (the parsed list, or its text)."""
    records, counts = label_studio.read_records(data)
    result = labels.import_labels(con, records, label_schema(settings_of(cfg)))
    return {**counts, **result, "human_metrics": training.refresh_human_metrics(con, cfg)}


__all__ = ["FROM_SOURCES", "KINDS", "add_from", "add_rows", "assign", "export", "import_export", "items", "label",
           "next_item", "stats", "status", "sweep", "when"]
