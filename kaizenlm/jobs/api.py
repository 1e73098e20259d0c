"""Admin API of the scheduler, mounted by the controller with `install(app)`.

    GET  /admin/v1/jobs                  tiers (cron, next fire time, run in progress, pending retry) + history
    GET  /admin/v1/jobs/runs/{run_id}    one run (with live progress while it runs)
    POST /admin/v1/jobs/{tier}/run       start a manual run now: 202 + the run; 409 while the tier runs;
                                         body (optional) {"processes": N or "auto"}: the monthly run's
                                         training processes (retrain.processes) for this run only

Every endpoint needs `Authorization: Bearer <auth.admin_key>` (kaizenlm.auth).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel

from kaizenlm.auth import Admin
from kaizenlm.config import ConfigError, with_overrides
from kaizenlm.jobs import history
from kaizenlm.jobs.scheduler import Scheduler, TierBusy, TierFn, UnknownTier, default_tiers

router = APIRouter(prefix="/admin/v1", tags=["jobs"])


def install(app: FastAPI, tiers: dict[str, TierFn] | None = None) -> Scheduler:
    """Create the scheduler on the controller's DuckDB connection and mount the routes.

    The controller starts it in its lifespan (`scheduler.start()` when schedule.enabled) and
    stops it on the way out (`scheduler.shutdown()`); manual runs work either way.
    """
    scheduler = Scheduler(app.state.cfg, tiers if tiers is not None else default_tiers(), app.state.db)
    app.state.scheduler = scheduler
    app.include_router(router)
    return scheduler


@router.get("/jobs")
def list_jobs(request: Request, _: Admin, tier: str | None = None,
              limit: int = Query(50, ge=1, le=1000)) -> dict:
    try:
        return request.app.state.scheduler.overview(tier, limit)
    except UnknownTier as e:
        raise HTTPException(404, str(e)) from None


@router.get("/jobs/runs/{run_id}")
def get_run(request: Request, run_id: str, _: Admin) -> dict:
    scheduler: Scheduler = request.app.state.scheduler
    with scheduler.cursor() as cur:
        run = history.get_run(cur, run_id)
    if run is None:
        raise HTTPException(404, f"no run '{run_id}'; `kaizen jobs list` shows the run ids")
    return {**run.to_dict(), "progress": scheduler.progress(run_id) if run.status == "running" else None}


class RunOptions(BaseModel):
    processes: int | str | None = None
    """Monthly tier only: training processes of this run (retrain.processes: a number or 'auto')."""


@router.post("/jobs/{tier}/run", status_code=202)
def run_tier(request: Request, tier: str, _: Admin, options: RunOptions | None = None) -> dict:
    cfg = None
    if options is not None and options.processes is not None:
        if tier != "monthly":
            raise HTTPException(422, f"processes applies to the monthly tier (the retrain), not to '{tier}'")
        try:
            cfg = with_overrides(request.app.state.cfg, {"retrain": {"processes": options.processes}})
        except ConfigError as e:
            raise HTTPException(422, str(e)) from None
    try:
        run = request.app.state.scheduler.run_now(tier, cfg=cfg)
    except UnknownTier as e:
        raise HTTPException(404, str(e)) from None
    except TierBusy as e:
        raise HTTPException(409, str(e)) from None
    return run.to_dict()
