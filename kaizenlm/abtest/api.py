"""The controller's A/B admin API, its routing publisher and its analysis loop.

Mounted by kaizenlm/server/controller.py: `install(app)` at creation (router, app.state.ab_lock,
app.state.routing, app.state.on_alias_moved for the registry API), `start(app)` /
`stop(app)` in the lifespan (the loop thread).

The loop ticks every second: it rebuilds the routing state from the registry and the
experiments and publishes it when it changed (so any change made inside the controller,
by any code path, reaches the gateways within about a second), republishes it unchanged
every `serving.routing_heartbeat_s`, and analyses the running experiments every
`ab.analysis_interval_s`. The endpoints below also publish at once after they change
something, and say in their answer which routing version carries the change.

Endpoints (admin key):
  POST /admin/v1/ab/experiments              start   {challenger, alias?, split?, settings?}
  GET  /admin/v1/ab/experiments[?status=]    list, each with its latest decision
  GET  /admin/v1/ab/experiments/{id}         one, with its decisions (newest first)
  POST /admin/v1/ab/experiments/{id}/stop    {reason?, promote?}
  POST /admin/v1/ab/analyse                  {experiment_id?}: analyse now, apply, store
  POST /admin/v1/rollback                    {alias?, to_version?, reason?}
  GET  /admin/v1/routing                     the routing state last published
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, Field

from kaizenlm.abtest import experiments as ab
from kaizenlm.abtest.routing import RoutingPublisher, RoutingState
from kaizenlm.auth import require_admin
from kaizenlm.registry.api import db_cursor, http_errors

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin/v1", tags=["ab"], dependencies=[Depends(require_admin)])


# --------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------


def publish_current(app: FastAPI) -> dict:
    """Build the routing state from the database and publish it; returns {version, published, error?}."""
    publisher: RoutingPublisher = app.state.routing
    cursor = app.state.db.cursor()
    try:
        state = ab.current_routing(cursor)
    finally:
        cursor.close()
    try:
        published = publisher.publish(state)
    except Exception as e:  # broker away: the loop retries every second
        log.warning("routing not published (%s); retrying", e)
        last = publisher.last
        return {"version": last.version if last else None, "published": False,
                "error": f"broker unreachable ({type(e).__name__}); the controller retries every second"}
    return {"version": published.version, "published": True}


def _on_alias_moved(app: FastAPI):
    def hook(move: dict) -> None:
        """Called by the registry API after an alias move: end experiments it invalidates, publish."""
        with app.state.ab_lock:
            cursor = app.state.db.cursor()
            try:
                stopped = ab.alias_moved(cursor, move)
                if stopped:
                    log.info("alias %s moved to %s: ended experiments %s", move["alias"], move["to_version"], stopped)
            except Exception:  # the move is committed; the loop's next tick publishes routing anyway
                log.exception("could not end the experiments on alias %s after its move", move["alias"])
            finally:
                cursor.close()
            publish_current(app)
    return hook


class ABLoop:
    """The controller's background thread: routing sync + heartbeat, periodic analysis."""

    def __init__(self, app: FastAPI, tick_s: float = 1.0):
        self.app = app
        self.tick_s = tick_s
        self.last_analysis = time.monotonic()  # first analysis one interval after the start
        self.last_heartbeat = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ab-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        cfg = self.app.state.cfg
        while not self._stop.is_set():
            try:
                self.tick(cfg)
            except Exception:
                log.exception("a/b loop tick failed")
            self._stop.wait(self.tick_s)

    def tick(self, cfg) -> None:
        app, now = self.app, time.monotonic()
        with app.state.ab_lock:
            publisher: RoutingPublisher = app.state.routing
            before = publisher.last
            heartbeat = now - self.last_heartbeat >= cfg.serving.routing_heartbeat_s
            cursor = app.state.db.cursor()
            try:
                state = ab.current_routing(cursor)
            finally:
                cursor.close()
            if heartbeat or not publisher.published or not state.same_content(before):
                try:
                    publisher.publish(state)
                    self.last_heartbeat = now
                except Exception as e:
                    log.warning("routing not published (%s); retrying in %.0fs", e, self.tick_s)
            if now - self.last_analysis >= cfg.ab.analysis_interval_s:
                self.last_analysis = now
                cursor = app.state.db.cursor()
                try:
                    results = ab.analyse_running(cursor, cfg)
                finally:
                    cursor.close()
                if any(r.get("action") not in (None, "continue") for r in results):
                    publish_current(app)


def install(app: FastAPI) -> None:
    """Mount the router and set the state the endpoints and the registry API use."""
    app.state.ab_lock = threading.RLock()
    app.state.routing = RoutingPublisher(app.state.cfg)
    app.state.on_alias_moved = _on_alias_moved(app)
    app.include_router(router)


def start(app: FastAPI) -> None:
    """Start the loop (its first tick publishes the full routing state)."""
    app.state.ab_loop = ABLoop(app)
    app.state.ab_loop.start()


def stop(app: FastAPI) -> None:
    loop = getattr(app.state, "ab_loop", None)
    if loop is not None:
        loop.stop()
    app.state.routing.close()


# --------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------


class StartBody(BaseModel):
    challenger: str = Field(min_length=1)
    alias: str = "champion"
    split: float | None = None
    settings: dict = Field(default_factory=dict, description="overrides of [ab] keys for this experiment")
    experiment_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:@\-]{1,64}$")
    actor: str = "admin-api"


class StopBody(BaseModel):
    reason: str = ""
    promote: bool = False
    actor: str = "admin-api"


class AnalyseBody(BaseModel):
    experiment_id: str | None = None


class RollbackBody(BaseModel):
    alias: str = "champion"
    to_version: str | None = None
    reason: str = ""
    actor: str = "admin-api"


def _now() -> datetime:
    return datetime.now(UTC)


@router.post("/ab/experiments", status_code=201)
def start_experiment(body: StartBody, request: Request, con=Depends(db_cursor)) -> dict:
    app = request.app
    with app.state.ab_lock, http_errors():
        exp = ab.start_experiment(con, app.state.cfg, body.challenger, alias=body.alias, split=body.split,
                                  overrides=body.settings, actor=body.actor, experiment_id=body.experiment_id)
        return {**exp.to_dict(), "routing": publish_current(app)}


@router.get("/ab/experiments")
def list_experiments(status: str | None = None, limit: int = 20, con=Depends(db_cursor)) -> dict:
    with http_errors():
        result = ab.status(con, None, limit)
        if status is not None:
            result["experiments"] = [e for e in result["experiments"] if e["status"] == status]
        return result


@router.get("/ab/experiments/{experiment_id}")
def show_experiment(experiment_id: str, limit: int = 20, con=Depends(db_cursor)) -> dict:
    with http_errors():
        return ab.status(con, experiment_id, limit)


@router.post("/ab/experiments/{experiment_id}/stop")
def stop_experiment(experiment_id: str, body: StopBody, request: Request, con=Depends(db_cursor)) -> dict:
    app = request.app
    with app.state.ab_lock, http_errors():
        row = ab.stop_experiment(con, experiment_id, body.reason, body.promote, body.actor)
        return {**row, "routing": publish_current(app)}


@router.post("/ab/analyse")
def analyse(body: AnalyseBody, request: Request, con=Depends(db_cursor)) -> dict:
    app = request.app
    with app.state.ab_lock, http_errors():
        results = ab.analyse_running(con, app.state.cfg, _now(), experiment_id=body.experiment_id,
                                     actor="ab-analysis:on-demand")
        routing = publish_current(app) if any(r.get("action") not in (None, "continue") for r in results) else None
        return {"results": results, "routing": routing}


@router.post("/rollback")
def rollback(body: RollbackBody, request: Request, con=Depends(db_cursor)) -> dict:
    app = request.app
    with app.state.ab_lock, http_errors():
        result = ab.rollback(con, body.alias, body.to_version, body.reason, body.actor)
        return {**result, "routing": publish_current(app)}


@router.get("/routing")
def routing(request: Request) -> dict:
    publisher: RoutingPublisher = request.app.state.routing
    state: RoutingState | None = publisher.last
    if state is None:
        return {"version": None, "published": False, "aliases": {}, "experiments": [], "targets": {}}
    return {"version": state.version, "published": publisher.published, "published_at": state.published_at,
            "aliases": state.aliases, "experiments": [e.__dict__ for e in state.experiments],
            "targets": {k: t.__dict__ for k, t in state.targets.items()}}
