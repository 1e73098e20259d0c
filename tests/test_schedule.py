"""Scheduler: cron tiers on a controllable clock (no sleeping for a week), catch-up after a
restart, coalescing, one run per tier, retries with backoff that never block other tiers,
the job history, the admin API and `kaizen jobs`."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kaizenlm import config as config_mod
from kaizenlm.cli import main
from kaizenlm.config.cron import cron_trigger
from kaizenlm.eval.suite import Suite, write_suite
from kaizenlm.ingest.store import connect
from kaizenlm.jobs import history
from kaizenlm.jobs.scheduler import Scheduler, TierBusy, UnknownTier, default_tiers, fire_times_between


class Clock:
    """A clock the test moves by hand; the scheduler reads it through `now=`."""

    def __init__(self, start: datetime):
        self.t = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.t

    def set(self, t: datetime) -> None:
        with self._lock:
            self.t = t

    def advance(self, **delta) -> None:
        with self._lock:
            self.t += timedelta(**delta)


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


class Recorder:
    """A tier function that records its calls; optionally blocks on a gate, fails, or takes time."""

    def __init__(self, clock: Clock | None = None, fail: bool = False, takes_s: float = 0.0,
                 gate: threading.Event | None = None):
        self.calls: list[dict] = []
        self.clock, self.fail, self.takes_s, self.gate = clock, fail, takes_s, gate
        self.entered = threading.Event()

    def __call__(self, ctx) -> dict:
        self.calls.append({"trigger": ctx.trigger, "attempt": ctx.attempt, "scheduled_for": ctx.scheduled_for})
        self.entered.set()
        ctx.log.info("working on %s", ctx.tier)
        logging.getLogger("kaizenlm.somewhere").warning("a library line from the tier's thread")
        ctx.progress(0.5, "half way")
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.clock is not None and self.takes_s:
            self.clock.advance(seconds=self.takes_s)
        if self.fail:
            raise RuntimeError(f"{ctx.tier} broke on attempt {ctx.attempt}")
        return {"tier": ctx.tier, "answer": 42}


@pytest.fixture
def cfg(tmp_path):
    return config_mod.from_dict({"paths": {"home": str(tmp_path / "home")}})


@pytest.fixture
def db(cfg):
    con = connect(cfg.duckdb_path)
    yield con
    con.close()


def make(cfg, db, clock, **tiers) -> Scheduler:
    tiers = {t: tiers.get(t) or Recorder(clock) for t in ("weekly", "monthly", "quarterly")}
    return Scheduler(cfg, tiers, db, now=clock)


def runs(db, tier=None) -> list[history.JobRun]:
    return list(reversed(history.list_runs(db.cursor(), tier=tier, limit=1000)))


# ---------------------------------------------------------------- cron semantics


def test_crontab_weekday_numbers_mean_what_cron_means():
    # APScheduler 3 alone would read day-of-week 1 as Tuesday; crontab's 1 is Monday.
    trigger = cron_trigger("0 3 * * 1", "UTC")
    first = trigger.get_next_fire_time(None, at(2025, 1, 1))
    assert first == at(2025, 1, 6, 3, 0) and first.strftime("%A") == "Monday"
    sundays = cron_trigger("0 0 * * 0,7", "UTC").get_next_fire_time(None, at(2025, 1, 1))
    assert sundays.strftime("%A") == "Sunday"
    quarterly = cron_trigger("0 5 1 1,4,7,10 *", "UTC")
    assert quarterly.get_next_fire_time(None, at(2025, 1, 2)) == at(2025, 4, 1, 5, 0)


def test_config_rejects_bad_cron_naming_the_key():
    with pytest.raises(config_mod.ConfigError, match=r"schedule\.monthly_cron.*5"):
        config_mod.from_dict({"schedule": {"monthly_cron": "0 4 1 *"}})
    with pytest.raises(config_mod.ConfigError, match=r"schedule\.weekly_cron.*higher than the maximum"):
        config_mod.from_dict({"schedule": {"weekly_cron": "0 24 * * 1"}})
    with pytest.raises(config_mod.ConfigError, match=r"schedule\.timezone.*Mars/Olympus"):
        config_mod.from_dict({"schedule": {"timezone": "Mars/Olympus"}})
    with pytest.raises(config_mod.ConfigError, match=r"schedule\.quarterly_cron.*either matches"):
        config_mod.from_dict({"schedule": {"quarterly_cron": "0 5 1 * 1"}})
    with pytest.raises(config_mod.ConfigError, match=r"schedule\.max_retries"):
        config_mod.from_dict({"schedule": {"max_retries": -1}})


def test_weekly_fires_on_monday_at_three(cfg, db):
    clock = Clock(at(2025, 1, 5, 12, 0))  # a Sunday
    weekly = Recorder(clock)
    sched = make(cfg, db, clock, weekly=weekly)
    assert sched.start(background=False) == []  # a fresh install has nothing to catch up
    status = {t["tier"]: t for t in sched.status()["tiers"]}
    assert status["weekly"]["next_fire_time"] == "2025-01-06T03:00:00+00:00"
    assert status["monthly"]["next_fire_time"] == "2025-02-01T04:00:00+00:00"
    assert status["quarterly"]["next_fire_time"] == "2025-04-01T05:00:00+00:00"

    clock.set(at(2025, 1, 6, 2, 59, 59))
    assert sched.tick() == []
    clock.set(at(2025, 1, 6, 3, 0))
    started = sched.tick()
    assert [(r.tier, r.trigger, r.scheduled_for) for r in started] == [("weekly", "schedule", at(2025, 1, 6, 3))]
    assert sched.wait(10)
    assert sched.tick() == []  # the same fire time never runs twice
    clock.set(at(2025, 1, 13, 3, 0, 30))
    assert [r.scheduled_for for r in sched.tick()] == [at(2025, 1, 13, 3)]
    assert sched.wait(10)
    assert [c["scheduled_for"] for c in weekly.calls] == [at(2025, 1, 6, 3), at(2025, 1, 13, 3)]
    assert [r.status for r in runs(db)] == ["succeeded", "succeeded"]


def test_cron_time_zone_is_honoured(tmp_path, db):
    cfg = config_mod.from_dict({"paths": {"home": str(tmp_path / "h2")}, "schedule": {"timezone": "Europe/Berlin"}})
    clock = Clock(at(2025, 1, 5, 12, 0))
    sched = make(cfg, db, clock)
    sched.start(background=False)
    clock.set(at(2025, 1, 6, 2, 0))  # 03:00 in Berlin (CET = UTC+1)
    assert [r.tier for r in sched.tick()] == ["weekly"]
    assert sched.wait(10)


def test_apscheduler_jobs_are_coalescing_single_instance_with_unlimited_grace(cfg, db):
    sched = Scheduler(cfg, default_tiers(), db)  # real clock, real BackgroundScheduler
    try:
        sched.start()
        job = sched._aps.get_job("tier-weekly")
        assert job.coalesce is True and job.max_instances == 1 and job.misfire_grace_time is None
        assert job.next_run_time.weekday() == 0 and (job.next_run_time.hour, job.next_run_time.minute) == (3, 0)
        assert job.next_run_time > datetime.now(UTC)
        assert sched._aps.get_job("tier-quarterly").next_run_time.month in (1, 4, 7, 10)
    finally:
        sched.shutdown()
    assert sched._aps is None


# ---------------------------------------------------------------- catch-up and coalescing


def test_missed_run_while_down_catches_up_exactly_once(cfg, db):
    clock = Clock(at(2025, 1, 2, 9, 0))
    first = make(cfg, db, clock)
    first.start(background=False)
    clock.set(at(2025, 1, 6, 3, 0))
    assert [r.tier for r in first.tick()] == ["weekly"]
    assert first.wait(10)
    first.shutdown()

    # The controller is down from Jan 6 to Jan 22: the fires of Jan 13 and Jan 20 are missed.
    clock.set(at(2025, 1, 22, 10, 0))
    weekly = Recorder(clock)
    second = make(cfg, db, clock, weekly=weekly)
    caught = second.start(background=False)
    assert [(r.tier, r.trigger, r.scheduled_for) for r in caught] == [("weekly", "catch_up", at(2025, 1, 20, 3))]
    assert second.wait(10)
    assert second.tick() == []  # and not again while it keeps running
    clock.advance(hours=1)
    assert second.tick() == []
    second.shutdown()

    third = make(cfg, db, clock)  # another restart: the catch-up succeeded, nothing is missed
    assert third.start(background=False) == []
    assert len(weekly.calls) == 1
    assert [(r.trigger, r.status) for r in runs(db, "weekly")] == [("schedule", "succeeded"), ("catch_up", "succeeded")]


def test_catch_up_before_the_first_success_and_after_an_interrupted_run(cfg, db):
    clock = Clock(at(2025, 1, 2, 9, 0))
    make(cfg, db, clock).start(background=False)  # first scheduled on Jan 2, then down over Monday Jan 6
    clock.set(at(2025, 1, 7, 8, 0))
    # A run the dead process left 'running' is closed as failed at the next start.
    history.record_start(db.cursor(), history.JobRun("monthly-x", "monthly", "manual", "running", 1, None,
                                                     at(2025, 1, 6, 12), log_path="x.log"))
    sched = make(cfg, db, clock)
    caught = sched.start(background=False)
    assert [(r.tier, r.scheduled_for) for r in caught] == [("weekly", at(2025, 1, 6, 3))]
    assert sched.wait(10)
    interrupted = history.get_run(db.cursor(), "monthly-x")
    assert interrupted.status == "failed" and "interrupted" in interrupted.error
    assert interrupted.duration_s == pytest.approx(20 * 3600)


def test_many_missed_fire_times_coalesce_into_one_run(cfg, db):
    clock = Clock(at(2025, 1, 5, 12, 0))
    weekly = Recorder(clock)
    sched = make(cfg, db, clock, weekly=weekly)
    sched.start(background=False)
    clock.set(at(2025, 1, 28, 12, 0))  # Jan 6, 13, 20 and 27 all passed in one step (e.g. the host slept)
    started = sched.tick()
    assert [(r.tier, r.scheduled_for) for r in started] == [("weekly", at(2025, 1, 27, 3))]
    assert sched.wait(10)
    assert sched.tick() == []
    assert len(weekly.calls) == 1
    assert sched.status()["tiers"][0]["next_fire_time"] == "2025-02-03T03:00:00+00:00"
    assert fire_times_between(sched.triggers["weekly"], at(2025, 1, 5), at(2025, 1, 28)) == (at(2025, 1, 27, 3), 4)


# ---------------------------------------------------------------- one run per tier, retries, history


def test_one_run_of_a_tier_at_a_time_and_other_tiers_are_not_blocked(cfg, db):
    clock = Clock(at(2025, 1, 6, 2, 0))
    gate = threading.Event()
    weekly = Recorder(clock, gate=gate)
    sched = make(cfg, db, clock, weekly=weekly)
    sched.start(background=False)
    first = sched.run_now("weekly")
    assert weekly.entered.wait(10)
    with pytest.raises(TierBusy, match=f"weekly run is in progress \\({first.run_id}\\)"):
        sched.run_now("weekly")
    clock.set(at(2025, 1, 6, 3, 0))
    assert sched.tick() == []  # the cron fire is skipped: the manual run covers it
    monthly = sched.run_now("monthly")  # another tier runs meanwhile
    deadline = datetime.now() + timedelta(seconds=10)
    while history.get_run(db.cursor(), monthly.run_id).status == "running" and datetime.now() < deadline:
        threading.Event().wait(0.01)
    assert history.get_run(db.cursor(), monthly.run_id).status == "succeeded"
    assert history.get_run(db.cursor(), first.run_id).status == "running"
    assert sched.status()["tiers"][0]["progress"] == {"fraction": 0.5, "message": "half way"}
    gate.set()
    assert sched.wait(10)
    assert len(weekly.calls) == 1
    assert sched.run_now("weekly").trigger == "manual"  # free again
    assert sched.wait(10)
    with pytest.raises(UnknownTier):
        sched.run_now("daily")


def test_failing_tier_retries_with_backoff_while_other_tiers_run(tmp_path, db):
    cfg = config_mod.from_dict({"paths": {"home": str(tmp_path / "h")},
                                "schedule": {"monthly_cron": "0 3 * * 1", "max_retries": 2, "retry_backoff_s": 60}})
    clock = Clock(at(2025, 1, 5, 12, 0))
    gate = threading.Event()
    weekly = Recorder(clock, fail=True, gate=gate)
    monthly = Recorder(clock)
    sched = make(cfg, db, clock, weekly=weekly, monthly=monthly)
    sched.start(background=False)
    clock.set(at(2025, 1, 6, 3, 0))  # both crons fire now
    assert sorted(r.tier for r in sched.tick()) == ["monthly", "weekly"]
    assert weekly.entered.wait(10)
    deadline = datetime.now() + timedelta(seconds=10)
    while not monthly.calls or runs(db, "monthly")[0].status == "running":
        assert datetime.now() < deadline
        threading.Event().wait(0.01)
    assert runs(db, "monthly")[0].status == "succeeded"  # done while weekly is still stuck
    assert runs(db, "weekly")[0].status == "running"
    gate.set()
    assert sched.wait(10)

    retry = sched.status()["tiers"][0]["pending_retry"]
    assert retry["attempt"] == 2 and retry["due_at"] == "2025-01-06T03:01:00+00:00"  # backoff 60 s
    clock.set(at(2025, 1, 6, 3, 0, 59))
    assert sched.tick() == []
    clock.set(at(2025, 1, 6, 3, 1))
    assert [(r.trigger, r.attempt) for r in sched.tick()] == [("retry", 2)]
    assert sched.wait(10)
    assert sched.status()["tiers"][0]["pending_retry"]["due_at"] == "2025-01-06T03:03:00+00:00"  # 120 s
    clock.set(at(2025, 1, 6, 3, 3))
    assert [(r.trigger, r.attempt) for r in sched.tick()] == [("retry", 3)]
    assert sched.wait(10)
    assert sched.status()["tiers"][0]["pending_retry"] is None  # max_retries = 2 reached
    clock.set(at(2025, 1, 12, 0, 0))
    assert sched.tick() == []

    weekly_runs = runs(db, "weekly")
    assert [(r.trigger, r.attempt, r.status) for r in weekly_runs] == [
        ("schedule", 1, "failed"), ("retry", 2, "failed"), ("retry", 3, "failed")]
    assert all(r.scheduled_for == at(2025, 1, 6, 3) for r in weekly_runs)
    assert weekly_runs[2].error == "RuntimeError: weekly broke on attempt 3"
    log_text = Path(weekly_runs[0].log_path).read_text()
    assert "Traceback" in log_text and "weekly broke on attempt 1" in log_text


def test_retry_timer_fires_through_apscheduler_in_real_time(tmp_path, db):
    cfg = config_mod.from_dict({"paths": {"home": str(tmp_path / "h")}, "schedule": {"retry_backoff_s": 0.2}})
    attempts = []

    def flaky(ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("transient")
        return {"ok": True}

    sched = Scheduler(cfg, {"weekly": flaky}, db)  # real clock, real BackgroundScheduler
    sched.start()
    try:
        sched.submit("weekly", "schedule", scheduled_for=datetime.now(UTC))
        deadline = datetime.now() + timedelta(seconds=10)
        while [r.status for r in runs(db)] != ["failed", "succeeded"] and datetime.now() < deadline:
            threading.Event().wait(0.05)
    finally:
        sched.shutdown(wait_s=5)
    assert attempts == [1, 2]
    assert [(r.trigger, r.attempt, r.status) for r in runs(db)] == [("schedule", 1, "failed"), ("retry", 2, "succeeded")]
    first, second = runs(db)
    assert (second.started_at - first.finished_at).total_seconds() >= 0.2


def test_a_new_run_supersedes_a_pending_retry_and_manual_runs_do_not_retry(cfg, db):
    clock = Clock(at(2025, 1, 6, 3, 0))
    weekly = Recorder(clock, fail=True)
    sched = make(cfg, db, clock, weekly=weekly)
    sched.start(background=False)
    sched.submit("weekly", "schedule", scheduled_for=at(2025, 1, 6, 3))
    assert sched.wait(10)
    assert sched.status()["tiers"][0]["pending_retry"] is not None
    sched.run_now("weekly")
    assert sched.wait(10)
    assert sched.status()["tiers"][0]["pending_retry"] is None
    clock.advance(hours=1)
    assert sched.tick() == []
    assert [r.trigger for r in runs(db, "weekly")] == ["schedule", "manual"]


def test_history_rows_have_status_duration_log_and_result(cfg, db):
    clock = Clock(at(2025, 1, 6, 3, 0))
    sched = make(cfg, db, clock, quarterly=Recorder(clock, takes_s=42))
    sched.start(background=False)
    run = sched.run_now("quarterly")
    assert run.status == "running" and history.get_run(db.cursor(), run.run_id).status == "running"
    assert sched.wait(10)
    row = history.get_run(db.cursor(), run.run_id)
    assert row.status == "succeeded" and row.trigger == "manual" and row.attempt == 1
    assert row.started_at == at(2025, 1, 6, 3, 0) and row.finished_at == at(2025, 1, 6, 3, 0, 42)
    assert row.duration_s == 42.0
    assert row.result == {"tier": "quarterly", "answer": 42} and row.error is None
    log_path = Path(row.log_path)
    assert log_path.parent == cfg.home / "logs" / "jobs" and log_path.name == f"{run.run_id}.log"
    text = log_path.read_text()
    assert "working on quarterly" in text and "a library line from the tier's thread" in text
    assert "progress 50%: half way" in text and f"run {run.run_id}: succeeded after 42.0 s" in text


def test_monthly_tier_without_a_model_fails_clearly_and_retries(cfg, db, tmp_path):
    # base.path names a directory with no model: the pipeline must say so, not train or hang.
    cfg.base.path = str(tmp_path / "no-model-here")
    cfg.eval.suite_path = str(write_suite(tmp_path / "suite.jsonl", Suite(domain=[{"prompt": "Q?", "reference": "A."}])))
    clock = Clock(at(2025, 2, 1, 4, 0))
    sched = Scheduler(cfg, default_tiers(), db, now=clock)
    sched.submit("monthly", "schedule", scheduled_for=at(2025, 2, 1, 4))
    assert sched.wait(30)
    (row,) = runs(db, "monthly")
    assert row.status == "failed" and "holds no Hugging Face model" in row.error
    assert sched.status()["tiers"][1]["pending_retry"] is not None  # a scheduled failure is retried


def test_quarterly_tier_writes_the_review_of_the_previous_quarter(cfg, db):
    clock = Clock(at(2025, 4, 1, 5, 0))
    sched = Scheduler(cfg, default_tiers(), db, now=clock)
    sched.submit("quarterly", "schedule", scheduled_for=at(2025, 4, 1, 5))
    assert sched.wait(60)
    (row,) = runs(db, "quarterly")
    assert row.status == "succeeded", row.error
    assert row.result["since"] == "2025-01-01T00:00:00+00:00" and row.result["until"] == "2025-04-01T00:00:00+00:00"
    assert Path(row.result["report"]).read_text().startswith("# kaizenlm review: 2025-01-01 to 2025-04-01")


# ---------------------------------------------------------------- admin API and CLI


def test_admin_api_lists_runs_and_refuses_a_second_run(cfg, db):
    from kaizenlm.jobs import api as jobs_api

    gate = threading.Event()
    weekly = Recorder(gate=gate)
    app = FastAPI()
    app.state.cfg, app.state.db = cfg, db
    jobs_api.install(app, {"weekly": weekly, "monthly": Recorder(), "quarterly": Recorder()})
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {cfg.auth.admin_key}"}
    assert client.get("/admin/v1/jobs").status_code == 401
    assert client.get("/admin/v1/jobs", headers={"Authorization": "Bearer wrong-key-123"}).status_code == 401
    started = client.post("/admin/v1/jobs/weekly/run", headers=headers)
    assert started.status_code == 202 and started.json()["status"] == "running"
    assert weekly.entered.wait(10)
    busy = client.post("/admin/v1/jobs/weekly/run", headers=headers)
    assert busy.status_code == 409 and "in progress" in busy.json()["detail"]
    assert client.post("/admin/v1/jobs/daily/run", headers=headers).status_code == 404
    listing = client.get("/admin/v1/jobs", headers=headers).json()
    weekly_status = next(t for t in listing["tiers"] if t["tier"] == "weekly")
    assert weekly_status["running_run_id"] == started.json()["run_id"] and weekly_status["next_fire_time"]
    gate.set()
    assert app.state.scheduler.wait(10)
    run = client.get(f"/admin/v1/jobs/runs/{started.json()['run_id']}", headers=headers).json()
    assert run["status"] == "succeeded" and run["result"]["answer"] == 42
    assert client.get("/admin/v1/jobs/runs/nope", headers=headers).status_code == 404
    listing = client.get("/admin/v1/jobs", params={"tier": "weekly"}, headers=headers).json()
    assert [r["run_id"] for r in listing["runs"]] == [started.json()["run_id"]]


def test_controller_mounts_the_scheduler(kaizen_env):
    from kaizenlm.server.controller import create_app

    cfg = config_mod.load(env=kaizen_env)
    with TestClient(create_app(cfg, start_sink=False)) as client:
        listing = client.get("/admin/v1/jobs", headers={"Authorization": f"Bearer {cfg.auth.admin_key}"})
        assert listing.status_code == 200
        assert [t["tier"] for t in listing.json()["tiers"]] == ["weekly", "monthly", "quarterly"]
        assert listing.json()["scheduler_running"] is False  # start_sink=False: no crons in API tests


def test_cli_jobs_run_and_list_without_a_controller(kaizen_env, capsys):
    Path("kaizen.toml").write_text("")  # no evaluation suite configured: the monthly run refuses at once
    assert main(["jobs", "run", "monthly", "--json"]) == 1  # the run fails, and says why
    run = json.loads(capsys.readouterr().out)
    assert run["status"] == "failed" and "no evaluation suite" in run["error"] and "[eval] suite_path" in run["error"]
    assert Path(run["log_path"]).is_file()
    assert main(["jobs", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listing["runs"]] == [run["run_id"]]
    assert listing["tiers"][1]["last_run"]["status"] == "failed"
    assert main(["jobs", "list"]) == 0
    text = capsys.readouterr().out
    assert "monthly" in text and "0 4 1 * *" in text and run["run_id"] in text
    with pytest.raises(SystemExit) as exit_info:
        main(["jobs", "run", "daily"])
    assert exit_info.value.code == 2
