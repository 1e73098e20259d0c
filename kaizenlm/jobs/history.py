"""The job history: one `job_runs` row per run of a scheduler tier (migration 6).

A run is inserted as 'running' when it starts and updated once when it ends
('succeeded' or 'failed'); a retry is a new row with the next attempt number. Rows left
'running' by a controller that died are marked failed at the next start
(`mark_interrupted`), so the history never shows a run that is not going on.

`job_tiers` remembers when each tier was first scheduled: the catch-up rule ("a fire time
was missed since the last success") needs a starting point before the first success.

All functions take an open DuckDB connection (the controller's cursor, or the CLI's).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import duckdb

TIERS = ("weekly", "monthly", "quarterly")
TRIGGERS = ("schedule", "catch_up", "manual", "retry")
STATUSES = ("running", "succeeded", "failed")

_COLUMNS = ("run_id", "tier", "trigger", "status", "attempt", "scheduled_for", "started_at", "finished_at",
            "duration_s", "log_path", "result", "error")
_TIME_COLUMNS = ("scheduled_for", "started_at", "finished_at")
# Timestamps leave DuckDB as epoch microseconds: fetching TIMESTAMPTZ directly needs pytz.
_SELECT = "SELECT {} FROM job_runs".format(", ".join(f"epoch_us({c})" if c in _TIME_COLUMNS else c for c in _COLUMNS))


@dataclass
class JobRun:
    run_id: str
    tier: str
    trigger: str
    status: str
    attempt: int
    scheduled_for: datetime | None
    started_at: datetime
    finished_at: datetime | None = None
    duration_s: float | None = None
    log_path: str = ""
    result: dict | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for c in _TIME_COLUMNS:
            d[c] = d[c].isoformat() if d[c] else None
        return d


def _utc(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, UTC)


def _run_from_row(row: tuple) -> JobRun:
    values = dict(zip(_COLUMNS, row, strict=True))
    for c in _TIME_COLUMNS:
        values[c] = _utc(values[c])
    values["result"] = json.loads(values["result"]) if values["result"] else None
    return JobRun(**values)


def record_start(con: duckdb.DuckDBPyConnection, run: JobRun) -> None:
    """Insert the row of a run that starts now (status 'running')."""
    con.execute(
        "INSERT INTO job_runs (run_id, tier, trigger, status, attempt, scheduled_for, started_at, log_path) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [run.run_id, run.tier, run.trigger, run.status, run.attempt, run.scheduled_for, run.started_at, run.log_path],
    )


def record_finish(con: duckdb.DuckDBPyConnection, run_id: str, status: str, finished_at: datetime,
                  duration_s: float, result: dict | None = None, error: str | None = None) -> None:
    """Close a run: its final status, end time, duration, result (JSON) or error."""
    if status not in ("succeeded", "failed"):
        raise ValueError(f"a finished run is 'succeeded' or 'failed', not {status!r}")
    con.execute(
        "UPDATE job_runs SET status = ?, finished_at = ?, duration_s = ?, result = ?, error = ? WHERE run_id = ?",
        [status, finished_at, duration_s, None if result is None else json.dumps(result, default=str, sort_keys=True),
         error, run_id],
    )


def get_run(con: duckdb.DuckDBPyConnection, run_id: str) -> JobRun | None:
    row = con.execute(f"{_SELECT} WHERE run_id = ?", [run_id]).fetchone()
    return _run_from_row(row) if row else None


def list_runs(con: duckdb.DuckDBPyConnection, tier: str | None = None, limit: int = 50,
              since: datetime | None = None, until: datetime | None = None) -> list[JobRun]:
    """Runs newest first (ties: the later inserted first); optionally one tier and started_at in [since, until)."""
    where, params = [], []
    for cond, value in (("tier = ?", tier), ("started_at >= ?", since), ("started_at < ?", until)):
        if value is not None:
            where.append(cond)
            params.append(value)
    sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY started_at DESC, rowid DESC LIMIT ?"
    return [_run_from_row(r) for r in con.execute(sql, [*params, limit]).fetchall()]


def last_run(con: duckdb.DuckDBPyConnection, tier: str, status: str | None = None) -> JobRun | None:
    """The tier's newest run (optionally only with this status)."""
    sql = f"{_SELECT} WHERE tier = ?" + (" AND status = ?" if status else "") + " ORDER BY started_at DESC, rowid DESC LIMIT 1"
    row = con.execute(sql, [tier, status] if status else [tier]).fetchone()
    return _run_from_row(row) if row else None


def mark_interrupted(con: duckdb.DuckDBPyConnection, now: datetime) -> list[str]:
    """Runs still 'running' (their controller died) -> 'failed'; returns their run ids."""
    rows = con.execute(f"{_SELECT} WHERE status = 'running' ORDER BY started_at").fetchall()
    ids = []
    for row in rows:
        run = _run_from_row(row)
        record_finish(con, run.run_id, "failed", now, (now - run.started_at).total_seconds(),
                      error="interrupted: the process running it stopped before the run ended")
        ids.append(run.run_id)
    return ids


def scheduled_since(con: duckdb.DuckDBPyConnection, tier: str, cron: str, timezone: str, now: datetime) -> datetime:
    """When the tier was first scheduled (recorded now if never); keeps its cron line up to date."""
    row = con.execute("SELECT epoch_us(scheduled_since) FROM job_tiers WHERE tier = ?", [tier]).fetchone()
    if row is None:
        con.execute("INSERT INTO job_tiers (tier, scheduled_since, cron, timezone, updated_at) VALUES (?, ?, ?, ?, ?)",
                    [tier, now, cron, timezone, now])
        return now
    con.execute("UPDATE job_tiers SET cron = ?, timezone = ?, updated_at = ? WHERE tier = ?", [cron, timezone, now, tier])
    return _utc(row[0])
