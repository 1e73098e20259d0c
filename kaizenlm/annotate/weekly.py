"""The weekly sweep into the review queue: the week's user corrections, the turns whose explicit
and implicit feedback disagree, and a random sample of served answers (annotate.sample_size),
then assignment to annotate.reviewers with overlap.

It is a part of the scheduler's weekly tier (`run_weekly`, named beside the knowledge refresh in
kaizenlm/jobs/scheduler.py:DEFAULT_TIERS), and `kaizen annotate queue sweep` runs it by hand.
The window is the 7 days before the run's scheduled time (its start time for a manual run);
enqueueing is idempotent, so overlapping windows or a retried run add nothing twice. The
sample's seed is the window: the same week gives the same sample.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb

from kaizenlm.annotate import queue, sources
from kaizenlm.annotate.settings import AnnotateError, settings_of


def sweep(con: duckdb.DuckDBPyConnection, cfg, until: datetime | None = None, days: float = 7.0,
          now: datetime | None = None) -> dict:
    """Queue the window's corrections, disagreements and sample (since = until - days), then
    assign new items to annotate.reviewers (if any). Returns per-kind counts and the window."""
    if not 0 < days <= 366:
        raise AnnotateError("days", f"must be in (0, 366] (got {days})")
    settings = settings_of(cfg)
    until = until or datetime.now(UTC)
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    since = until - timedelta(days=days)
    batch = f"weekly-{until.date().isoformat()}"
    found = {
        "correction": sources.corrections(con, since, until),
        "disagreement": sources.disagreements(con, cfg.rewards, since, until),
        "sample": sources.sample(con, settings.sample_size, since, until, seed=f"weekly|{since.isoformat()}|"
                                 f"{until.isoformat()}") if settings.sample_size else [],
    }
    added, already = {}, {}
    for kind, rows in found.items():
        result = queue.enqueue(con, kind, rows, batch=batch, now=now)
        added[kind], already[kind] = result["added"], result["already_queued"]
    out = {"since": since.isoformat(), "until": until.isoformat(), "batch": batch, "added": added,
           "already_queued": already, "assigned": None, "warnings": []}
    if settings.reviewers:
        assigned = queue.assign(con, settings.reviewers, overlap=settings.overlap,
                                overlap_reviewers=settings.overlap_reviewers, now=now)
        out["assigned"] = {"items": assigned["assigned_items"], "overlap_items": assigned["overlap_items"],
                           "per_reviewer": assigned["per_reviewer"]}
        out["warnings"] += assigned["warnings"]
    elif sum(added.values()):
        out["warnings"].append("annotate.reviewers is empty: the new items wait unassigned "
                               "(`kaizen annotate queue assign --reviewers alice,bob`)")
    return out


def run_weekly(ctx) -> dict:
    """The review part of the scheduler's weekly tier (ctx: kaizenlm.jobs.scheduler.JobContext)."""
    until = ctx.scheduled_for or ctx.started_at
    out = sweep(ctx.db, ctx.cfg, until)
    ctx.log.info("review queue: added %s for %s..%s", out["added"], out["since"], out["until"])
    for warning in out["warnings"]:
        ctx.log.warning("review queue: %s", warning)
    return out
