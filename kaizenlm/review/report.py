"""The quarterly review: a Markdown report with PNG plots over a window of DuckDB data.

    path = write_review(con, cfg, since, until)      # -> $KAIZEN_HOME/reviews/<date>/report.md

It reads only DuckDB (and the coverage.json stored with the newest knowledge version), so
the controller runs it on its own connection and the CLI on the file when no controller
runs. Three steps, each a plain function in its own module:

1. `collect(con, cfg, since, until)` (kaizenlm/review/collect.py) -> a JSON-able dict of
   numbers per section;
2. `recommend(data, cfg)` (kaizenlm/review/rules.py) -> the RULES, each evaluated: fired or
   not, and the numbers;
3. `render(data, recommendations, plots)` (kaizenlm/review/render.py) -> Markdown;
   `make_plots` (kaizenlm/review/plots.py) writes the PNGs.

review.json next to report.md holds the same numbers for scripts and the dashboard. This
module is the entry: the review window (`last_quarter`, `resolve_window`), `write_review`,
and the scheduler's quarterly tier (`run_quarterly`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from kaizenlm.config import Config
from kaizenlm.review.collect import _json_value, collect
from kaizenlm.review.plots import make_plots
from kaizenlm.review.render import render
from kaizenlm.review.rules import recommend

# ---------------------------------------------------------------- windows


def last_quarter(now: datetime) -> tuple[datetime, datetime]:
    """The calendar quarter (UTC) before the one `now` is in: [since, until)."""
    now = now.astimezone(UTC)
    start_month = 3 * ((now.month - 1) // 3) + 1
    until = datetime(now.year, start_month, 1, tzinfo=UTC)
    month, year = start_month - 3, now.year
    if month < 1:
        month, year = month + 12, year - 1
    return datetime(year, month, 1, tzinfo=UTC), until


def parse_date(text: str, name: str) -> datetime:
    """An ISO date or date-time (UTC unless it says otherwise)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--{name} '{text}' is not a date; use ISO 8601, e.g. 2025-01-01 or 2025-01-01T00:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def resolve_window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """--since/--until (either may be left out) -> [since, until); both left out: the last quarter."""
    default_since, default_until = last_quarter(now)
    if since is None and until is None:
        return default_since, default_until
    end = parse_date(until, "until") if until else now.astimezone(UTC)
    start = parse_date(since, "since") if since else _months_before(end, 3)
    if start >= end:
        raise ValueError(f"--since {start.date()} is not before --until {end.date()}")
    return start, end


def _months_before(when: datetime, months: int) -> datetime:
    month, year = when.month - months, when.year
    while month < 1:
        month, year = month + 12, year - 1
    return when.replace(year=year, month=month, day=min(when.day, 28))


# ---------------------------------------------------------------- entry point


def write_review(con: duckdb.DuckDBPyConnection, cfg: Config, since: datetime | None = None,
                 until: datetime | None = None, out_dir: str | Path | None = None) -> Path:
    """Collect, plot and render the review of [since, until) (default: the last calendar quarter).

    Writes report.md, review.json and the PNGs into out_dir (default
    $KAIZEN_HOME/reviews/<today>/); returns the path of report.md.
    """
    now = datetime.now(UTC)
    if since is None or until is None:
        default_since, default_until = last_quarter(now)
        since, until = since or default_since, until or default_until
    out = Path(out_dir).expanduser() if out_dir else cfg.home / "reviews" / now.strftime("%Y-%m-%d")
    out.mkdir(parents=True, exist_ok=True)
    data = collect(con, cfg, since, until)
    recs = recommend(data, cfg)
    plots = make_plots(data, out)
    (out / "review.json").write_text(json.dumps({**data, "recommendations": recs, "plots": plots}, indent=2,
                                                default=_json_value) + "\n", encoding="utf-8")
    report = out / "report.md"
    report.write_text(render(data, recs, plots), encoding="utf-8")
    return report


def run_quarterly(ctx) -> dict:
    """The scheduler's quarterly tier: the review report over the calendar quarter before the
    fire time (ctx: kaizenlm.jobs.scheduler.JobContext)."""
    since, until = last_quarter(ctx.scheduled_for or ctx.started_at)
    ctx.progress(0.1, f"review {since.date()} .. {until.date()}")
    path = write_review(ctx.db, ctx.cfg, since, until)
    ctx.log.info("review written to %s", path)
    return {"report": str(path), "since": since.isoformat(), "until": until.isoformat()}
