"""The controller's scheduler: three tiers on cron schedules, with history, catch-up and retries.

    scheduler = Scheduler(cfg, default_tiers(), db)   # tier -> callable(JobContext) -> result dict
    scheduler.start()                                  # catch up missed runs, then follow the crons
    scheduler.run_now("weekly")                        # manual run; TierBusy if one is going on
    scheduler.shutdown()

Rules (docs/SCHEDULE.md):

* **Cron per tier** from `[schedule]` (standard crontab lines, see kaizenlm/config/cron.py).
  APScheduler's BackgroundScheduler wakes us at each fire time: one job per tier with a
  CronTrigger, `coalesce=True`, `max_instances=1`, `misfire_grace_time=None` (a late fire
  still runs, however late, and several late fires run once).
* **Catch up once.** APScheduler keeps no memory across restarts, so the job history in
  DuckDB does: at start, a tier whose cron fired at least once since its last successful
  run (or since it was first scheduled) while nobody was running it gets exactly one
  `catch_up` run, however many fire times it missed.
* **One run of a tier at a time.** A per-tier slot; a second request while a run is going
  on raises TierBusy (the admin API answers 409), a cron fire in that case is skipped and
  logged (the run in progress covers it).
* **Retries** of a failed scheduled, catch-up or retry run: after `retry_backoff_s`, then
  twice that, ... up to `max_retries`; a new run of the tier supersedes a pending retry.
  Manual runs are not retried (the operator sees the failure).
* **Tiers never block each other**: every run has a thread of its own, and a retry
  waits as a timer, not in a thread.
* **Every run is recorded** in `job_runs` (kaizenlm/jobs/history.py) and writes its
  log to $KAIZEN_HOME/logs/jobs/<run_id>.log.

Deterministic tests: pass `now=` (a controllable clock), call `start(background=False)`
and drive time with `tick()`, which applies the very same per-tier step that APScheduler's
wake-up runs in production, from the same CronTriggers' `get_next_fire_time`.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from kaizenlm.config import Config
from kaizenlm.config.cron import cron_trigger
from kaizenlm.jobs import history
from kaizenlm.jobs.history import TIERS, JobRun

log = logging.getLogger(__name__)

MAX_COALESCED = 100_000  # fire times counted when coalescing; a minutely cron down for two months stays below


def utc_now() -> datetime:
    return datetime.now(UTC)


class TierBusy(RuntimeError):
    """A run of this tier is going on; the message names it."""


class UnknownTier(ValueError):
    """Not one of weekly, monthly, quarterly."""


@dataclass
class JobContext:
    """What a tier function gets: who it is, where to log, the config and a DuckDB cursor of its own."""

    tier: str
    run_id: str
    trigger: str
    attempt: int
    scheduled_for: datetime | None
    started_at: datetime
    log_path: Path
    log: logging.Logger
    cfg: Config
    db: duckdb.DuckDBPyConnection | None
    report: Callable[[float | None, str], None] = field(repr=False, default=lambda fraction, message: None)

    def progress(self, fraction: float | None, message: str = "") -> None:
        """How far the run is (0..1, or None when unknown); shown by `kaizen jobs` and the admin API."""
        self.report(fraction, message)


TierFn = Callable[[JobContext], dict | None]


@dataclass
class PendingRetry:
    tier: str
    due_at: datetime
    attempt: int
    scheduled_for: datetime | None
    after_run_id: str

    def to_dict(self) -> dict:
        return {"due_at": self.due_at.isoformat(), "attempt": self.attempt, "after_run_id": self.after_run_id}


def check_tier(tier: str) -> None:
    if tier not in TIERS:
        raise UnknownTier(f"unknown tier '{tier}'; use one of: {', '.join(TIERS)}")


def fire_times_between(trigger: CronTrigger, after: datetime, until: datetime) -> tuple[datetime | None, int]:
    """(latest fire time in (after, until], how many there are) -- the coalescing arithmetic."""
    fire = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    if fire is None or fire > until:
        return None, 0
    count = 1
    while count < MAX_COALESCED:
        nxt = trigger.get_next_fire_time(fire, until)
        if nxt is None or nxt > until:
            break
        fire, count = nxt, count + 1
    return fire, count


class Scheduler:
    """Runs the tier functions on their crons (see the module docstring)."""

    def __init__(self, cfg: Config, tiers: dict[str, TierFn], db: duckdb.DuckDBPyConnection | None,
                 now: Callable[[], datetime] = utc_now):
        for tier in tiers:
            check_tier(tier)
        self.cfg, self.tiers, self.now = cfg, dict(tiers), now
        self._db = db
        self.logs_dir = cfg.home / "logs" / "jobs"
        sc = cfg.schedule
        self.crons = {tier: getattr(sc, f"{tier}_cron") for tier in self.tiers}
        self.triggers = {tier: cron_trigger(expr, sc.timezone) for tier, expr in self.crons.items()}
        self._lock = threading.RLock()
        self._running: dict[str, str] = {}  # tier -> run_id
        self._retries: dict[str, PendingRetry] = {}
        self._progress: dict[str, dict] = {}  # run_id -> {fraction, message}
        self._next_fire: dict[str, datetime | None] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._aps: BackgroundScheduler | None = None
        self.started = False

    # ------------------------------------------------------------ lifecycle

    def start(self, background: bool = True) -> list[JobRun]:
        """Close runs a dead process left open, catch up missed runs, then follow the crons.

        background=False starts no APScheduler thread: the caller drives time with tick().
        Returns the catch-up runs started.
        """
        now = self.now()
        self.close_interrupted()
        for tier, trigger in self.triggers.items():  # strictly after now: a fire time == now is catch_up's
            self._next_fire[tier] = trigger.get_next_fire_time(None, now + timedelta(microseconds=1))
        caught_up = self.catch_up(now)
        if background:
            self._aps = BackgroundScheduler(timezone=self.cfg.schedule.timezone)
            for tier, trigger in self.triggers.items():
                self._aps.add_job(self._on_cron, trigger, args=[tier], id=f"tier-{tier}", name=f"kaizen {tier} tier",
                                  coalesce=True, max_instances=1, misfire_grace_time=None, replace_existing=True)
            self._aps.start()
        self.started = True
        return caught_up

    def close_interrupted(self) -> list[str]:
        """Mark runs left 'running' by a process that died as failed (call while owning the DuckDB file)."""
        with self.cursor() as cur:
            interrupted = history.mark_interrupted(cur, self.now())
        if interrupted:
            log.warning("runs interrupted by a stop of the process running them: %s", ", ".join(interrupted))
        return interrupted

    def shutdown(self, wait_s: float = 0.0) -> None:
        """Stop the cron thread; wait up to wait_s for runs in progress. A run still going when the
        process exits is marked interrupted at the next start and caught up then."""
        if self._aps is not None:
            self._aps.shutdown(wait=False)
            self._aps = None
        self.wait(wait_s)
        self.started = False

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until no run is in progress (at most timeout_s); True when idle."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                threads = [t for t in self._threads.values() if t.is_alive()]
            if not threads:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            threads[0].join(remaining)

    # ------------------------------------------------------------ timing

    def catch_up(self, now: datetime | None = None) -> list[JobRun]:
        """One `catch_up` run per tier whose cron fired since its last success and did not run."""
        now = now or self.now()
        runs = []
        for tier in self.tiers:
            missed = self.missed_fire_time(tier, now)
            if missed is None:
                continue
            log.info("tier %s missed its run of %s; catching up once", tier, missed.isoformat())
            try:
                runs.append(self.submit(tier, "catch_up", scheduled_for=missed))
            except TierBusy as e:
                log.warning("no catch-up of %s: %s", tier, e)
        return runs

    def missed_fire_time(self, tier: str, now: datetime) -> datetime | None:
        """The latest fire time of the tier after its last success (or first scheduling) and <= now.

        The first call for a tier records now as its first scheduling (table job_tiers)."""
        sc = self.cfg.schedule
        with self.cursor() as cur:
            since = history.scheduled_since(cur, tier, self.crons[tier], sc.timezone, now)
            success = history.last_run(cur, tier, status="succeeded")
        reference = max(success.started_at, since) if success else since
        latest, _ = fire_times_between(self.triggers[tier], reference, now)
        return latest

    def tick(self) -> list[JobRun]:
        """Start every run that is due at self.now(): cron fires (coalesced) and retries."""
        now = self.now()
        runs = [run for tier in self.tiers if (run := self._fire_if_due(tier, now)) is not None]
        return runs + self._start_due_retries(now)

    def _fire_if_due(self, tier: str, now: datetime) -> JobRun | None:
        with self._lock:
            nxt = self._next_fire.get(tier)
            if nxt is None or nxt > now:
                return None
            latest, count = fire_times_between(self.triggers[tier], nxt - timedelta(microseconds=1), now)
            self._next_fire[tier] = self.triggers[tier].get_next_fire_time(latest, now)
        if count > 1:
            log.info("tier %s: %d fire times up to %s coalesced into one run", tier, count, latest.isoformat())
        try:
            return self.submit(tier, "schedule", scheduled_for=latest)
        except TierBusy as e:
            log.warning("cron fire of %s at %s skipped: %s", tier, latest.isoformat(), e)
            return None

    def _on_cron(self, tier: str) -> None:
        """APScheduler's wake-up at a fire time of the tier (runs in APScheduler's thread pool)."""
        if self._fire_if_due(tier, self.now()) is None:
            log.debug("cron wake-up for %s found nothing due", tier)

    def _start_due_retries(self, now: datetime) -> list[JobRun]:
        with self._lock:
            due = [r for r in self._retries.values() if r.due_at <= now]
        runs = []
        for retry in due:
            try:
                runs.append(self.submit(retry.tier, "retry", attempt=retry.attempt, scheduled_for=retry.scheduled_for))
            except TierBusy as e:
                log.warning("retry of %s postponed: %s", retry.tier, e)
        return runs

    def _schedule_retry(self, run: JobRun, finished_at: datetime) -> PendingRetry:
        delay = self.cfg.schedule.retry_backoff_s * 2 ** (run.attempt - 1)
        retry = PendingRetry(run.tier, finished_at + timedelta(seconds=delay), run.attempt + 1, run.scheduled_for,
                             run.run_id)
        with self._lock:
            self._retries[run.tier] = retry
            if self._aps is not None:
                self._aps.add_job(lambda: self._start_due_retries(self.now()), "date", run_date=retry.due_at,
                                  id=f"retry-{run.tier}", replace_existing=True, misfire_grace_time=None)
        log.info("tier %s: attempt %d failed; retry %d at %s (in %.0f s)", run.tier, run.attempt, retry.attempt,
                 retry.due_at.isoformat(), delay)
        return retry

    # ------------------------------------------------------------ running

    def run_now(self, tier: str, cfg: Config | None = None) -> JobRun:
        """Start a manual run in the background; raises TierBusy while one of the tier runs.
        `cfg`: this run's configuration when it differs from the scheduler's (e.g. `kaizen
        retrain --processes N`)."""
        return self.submit(tier, "manual", cfg=cfg)

    def run_inline(self, tier: str, on_progress: Callable[[float | None, str], None] | None = None,
                   cfg: Config | None = None) -> JobRun:
        """A manual run in the calling thread (the CLI without a controller); returns the finished run."""
        run = self._begin(tier, "manual", 1, None)
        self._execute(run, on_progress, cfg)
        with self.cursor() as cur:
            return history.get_run(cur, run.run_id)

    def submit(self, tier: str, trigger: str, attempt: int = 1, scheduled_for: datetime | None = None,
               cfg: Config | None = None) -> JobRun:
        """Record a run of the tier and start it in a thread of its own; TierBusy if one is going on."""
        run = self._begin(tier, trigger, attempt, scheduled_for)
        thread = threading.Thread(target=self._execute, args=(run, None, cfg), name=f"kaizen-{run.run_id}",
                                  daemon=True)
        with self._lock:
            self._threads[tier] = thread
        thread.start()
        return run

    def _begin(self, tier: str, trigger: str, attempt: int, scheduled_for: datetime | None) -> JobRun:
        check_tier(tier)
        if tier not in self.tiers:
            raise UnknownTier(f"tier '{tier}' has no function in this scheduler")
        now = self.now()
        run_id = f"{tier}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        with self._lock:
            if tier in self._running:
                raise TierBusy(f"a {tier} run is in progress ({self._running[tier]}); wait for it to end "
                               "(`kaizen jobs list` shows it) before starting another")
            self._running[tier] = run_id
            if self._retries.pop(tier, None) is not None and trigger != "retry":
                log.info("tier %s: the pending retry is superseded by %s", tier, run_id)
            self._progress[run_id] = {"fraction": None, "message": "starting"}
        run = JobRun(run_id, tier, trigger, "running", attempt, scheduled_for, now,
                     log_path=str(self.logs_dir / f"{run_id}.log"))
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            with self.cursor() as cur:
                history.record_start(cur, run)
        except BaseException:
            self._release(run)
            raise
        return run

    def _release(self, run: JobRun) -> None:
        with self._lock:
            if self._running.get(run.tier) == run.run_id:
                del self._running[run.tier]
            self._progress.pop(run.run_id, None)

    def _execute(self, run: JobRun, on_progress: Callable[[float | None, str], None] | None,
                 cfg: Config | None = None) -> None:
        handler = _run_log_handler(Path(run.log_path), threading.get_ident())
        package_logger = logging.getLogger("kaizenlm")
        package_logger.addHandler(handler)
        if package_logger.getEffectiveLevel() > logging.INFO:  # e.g. the CLI, where logging is not set up
            package_logger.setLevel(logging.INFO)
        job_log = logging.getLogger(f"kaizenlm.jobs.{run.tier}")
        job_log.setLevel(logging.INFO)
        cursor = self._db.cursor() if self._db is not None else None

        def report(fraction: float | None, message: str) -> None:
            previous = self._progress.get(run.run_id, {}).get("message")
            self._progress[run.run_id] = {"fraction": fraction, "message": message}
            if message and message != previous:
                job_log.info("progress %s: %s", "?" if fraction is None else f"{fraction:.0%}", message)
            if on_progress is not None:
                on_progress(fraction, message)

        ctx = JobContext(run.tier, run.run_id, run.trigger, run.attempt, run.scheduled_for, run.started_at,
                         Path(run.log_path), job_log, cfg or self.cfg, cursor, report)
        job_log.info("run %s: tier %s, trigger %s, attempt %d, scheduled for %s", run.run_id, run.tier, run.trigger,
                     run.attempt, run.scheduled_for.isoformat() if run.scheduled_for else "-")
        result, error, retryable, interrupt = None, None, True, None
        try:
            value = self.tiers[run.tier](ctx)
            result = value if isinstance(value, dict) else {"value": value}
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            job_log.error("failed: %s\n%s", error, traceback.format_exc())
        except BaseException as e:  # Ctrl-C in an inline run: record it, then let it go on
            error, retryable, interrupt = f"interrupted ({type(e).__name__})", False, e
        finally:
            if cursor is not None:
                cursor.close()
            package_logger.removeHandler(handler)
            handler.close()
        self._finish(run, result, error, retryable)
        if interrupt is not None:
            raise interrupt

    def _finish(self, run: JobRun, result: dict | None, error: str | None, retryable: bool) -> None:
        finished = self.now()
        duration = max((finished - run.started_at).total_seconds(), 0.0)
        status = "succeeded" if error is None else "failed"
        wants_retry = (error is not None and retryable and run.trigger != "manual"
                       and run.attempt <= self.cfg.schedule.max_retries)
        retry = None
        try:
            with self.cursor() as cur:
                history.record_finish(cur, run.run_id, status, finished, duration, result, error)
        finally:
            with self._lock:  # release and plan the retry at once: a run starting in between supersedes it
                self._release(run)
                if wants_retry:
                    retry = self._schedule_retry(run, finished)
        with Path(run.log_path).open("a", encoding="utf-8") as f:
            f.write(f"# run {run.run_id}: {status} after {duration:.1f} s" + (f": {error}" if error else "")
                    + (f"; retry {retry.attempt} at {retry.due_at.isoformat()}" if retry else "") + "\n")
        if error is not None and run.trigger != "manual" and retry is None:
            log.error("tier %s failed (run %s, attempt %d), no retry: %s; see %s", run.tier, run.run_id,
                      run.attempt, error, run.log_path)

    # ------------------------------------------------------------ reading

    def status(self) -> dict:
        """Per tier: cron, next fire time, the run in progress (with progress) and a pending retry."""
        now = self.now()
        tiers = []
        with self._lock:
            for tier, trigger in self.triggers.items():
                nxt = trigger.get_next_fire_time(None, now)
                running = self._running.get(tier)
                retry = self._retries.get(tier)
                tiers.append({
                    "tier": tier, "cron": self.crons[tier], "timezone": self.cfg.schedule.timezone,
                    "next_fire_time": nxt.isoformat() if nxt else None, "running_run_id": running,
                    "progress": self._progress.get(running) if running else None,
                    "pending_retry": retry.to_dict() if retry else None,
                })
        return {"enabled": self.cfg.schedule.enabled, "scheduler_running": self.started, "tiers": tiers}

    def progress(self, run_id: str) -> dict | None:
        """{fraction, message} of a run in progress, else None."""
        return self._progress.get(run_id)

    def overview(self, tier: str | None = None, limit: int = 50) -> dict:
        """status() plus each tier's last run and the newest runs: what `kaizen jobs list` shows."""
        if tier is not None:
            check_tier(tier)
        with self.cursor() as cur:
            runs = history.list_runs(cur, tier=tier, limit=limit)
            last = {t: history.last_run(cur, t) for t in self.tiers}
        status = self.status()
        for entry in status["tiers"]:
            run = last.get(entry["tier"])
            entry["last_run"] = run.to_dict() if run else None
        return {**status, "runs": [r.to_dict() for r in runs]}

    def cursor(self) -> _Cursor:
        if self._db is None:
            raise RuntimeError("this scheduler has no DuckDB connection")
        return _Cursor(self._db)


class _Cursor:
    """`with`: a cursor of its own on the shared connection (DuckDB cursors are safe across threads)."""

    def __init__(self, db: duckdb.DuckDBPyConnection):
        self.cursor = db.cursor()

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        return self.cursor

    def __exit__(self, *exc) -> None:
        self.cursor.close()


class _ThreadFilter(logging.Filter):
    """Only records of the run's own thread go to its log (other tiers log at the same time)."""

    def __init__(self, thread_id: int):
        super().__init__()
        self.thread_id = thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread_id


def _run_log_handler(path: Path, thread_id: int) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ThreadFilter(thread_id))
    return handler


# ---------------------------------------------------------------- the real tiers

# Each tier's function, named by import path as kaizenlm/cli.py names its commands: the jobs
# these run use this package (the child-process runner, the run history), so the scheduler
# reaches them by name instead of importing them. A tuple names the parts of one tier, run in
# order (`chain`): the weekly tier refreshes the knowledge index and sweeps the week's feedback
# into the human review queue (docs/ANNOTATION.md).
DEFAULT_TIERS: dict[str, str | tuple[str, ...]] = {
    "weekly": ("kaizenlm.knowledge.refresh:run_weekly", "kaizenlm.annotate.weekly:run_weekly"),
    "monthly": "kaizenlm.retrain.pipeline:run_monthly",
    "quarterly": "kaizenlm.review.report:run_quarterly",
}


def default_tiers() -> dict[str, TierFn]:
    """The tier functions the controller (and `kaizen jobs run` without a controller) uses."""
    return {tier: _load(target) if isinstance(target, str) else chain(target) for tier, target in DEFAULT_TIERS.items()}


def chain(targets: tuple[str, ...]) -> TierFn:
    """One tier function of several parts (import paths), run in order, each even when an earlier
    one failed: the result is the first part's, with every further part's result under its
    package's name ("annotate"); a failure is raised once all parts ran (several: one error
    naming each), so the run is recorded failed and retried as a whole (the parts are idempotent)."""
    parts = [(target, _load(target)) for target in targets]

    def run(ctx: JobContext) -> dict:
        result: dict = {}
        errors: list[tuple[str, BaseException]] = []
        for n, (target, fn) in enumerate(parts):
            try:
                out = fn(ctx) or {}
            except Exception as e:  # the next part still runs; the run fails below
                ctx.log.exception("tier part %s failed", target)
                errors.append((target, e))
                continue
            if n == 0:
                result.update(out)
            else:
                result[target.split(".")[1]] = out
        if len(errors) == 1:
            raise errors[0][1]
        if errors:
            raise RuntimeError("; ".join(f"{target}: {e}" for target, e in errors))
        return result

    return run


def _load(target: str) -> TierFn:
    module_path, _, name = target.partition(":")
    return getattr(importlib.import_module(module_path), name)
