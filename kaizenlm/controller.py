"""The controller process: the only owner of the DuckDB file.

It runs the Kafka -> DuckDB sink in a thread and serves the admin/read API that every
other process (CLI, dashboard) uses instead of opening the file. Later parts mount their
routers (registry, experiments, jobs) on the same app.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request

from kaizenlm.abtest import api as ab_api
from kaizenlm.config import Config
from kaizenlm.ingest import store
from kaizenlm.ingest.sink import Sink
from kaizenlm.registry import api as registry_api

log = logging.getLogger(__name__)


def require_admin(request: Request) -> None:
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not key:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <admin key>'")
    if key != request.app.state.cfg.auth.admin_key:
        raise HTTPException(403, "this key lacks the 'admin' scope")


Admin = Annotated[None, Depends(require_admin)]


def _rows(cur, sql: str, params: list) -> list[dict]:
    result = cur.execute(sql, params)
    cols = [d[0] for d in result.description]
    return [dict(zip(cols, row)) for row in result.fetchall()]


def create_app(cfg: Config, start_sink: bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_sink:
            app.state.sink.start()
        if start_sink and cfg.schedule.enabled:  # the crons run only in a real controller, not in API tests
            app.state.scheduler.start()
        if start_sink:  # publishes the full routing state, then syncs it and analyses experiments
            ab_api.start(app)
        yield
        ab_api.stop(app)
        app.state.scheduler.shutdown()
        app.state.sink.stop()
        app.state.db.close()

    app = FastAPI(title="kaizenlm controller", lifespan=lifespan)
    app.state.cfg = cfg
    app.state.db = store.connect(cfg.duckdb_path)
    app.state.db_lock = threading.Lock()
    app.state.sink = Sink(cfg, app.state.db.cursor(), app.state.db_lock)
    from kaizenlm.retrain import jobs_api  # imported here: jobs_api imports require_admin from this module

    jobs_api.install(app)  # app.state.scheduler (docs/SCHEDULE.md); /admin/v1/jobs..., /admin/v1/review
    app.include_router(registry_api.router)  # /admin/v1/registry/... (docs/REGISTRY.md)
    ab_api.install(app)  # /admin/v1/ab/..., /admin/v1/rollback, /admin/v1/routing; app.state.on_alias_moved
    from kaizenlm.dashboard import read_api as dashboard_api  # here too: it imports require_admin from this module
    app.include_router(dashboard_api.router)  # /admin/v1/dashboard/... (docs/DASHBOARD.md)
    from kaizenlm.feedback import api as feedback_api  # here too: it imports require_admin from this module
    app.include_router(feedback_api.router)  # /admin/v1/datasets..., /admin/v1/rewards, /admin/v1/forget

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "duckdb": str(cfg.duckdb_path), "sink": app.state.sink.stats}

    @app.get("/admin/v1/stats")
    def stats(_: Admin) -> dict:
        cur = app.state.db.cursor()
        return {"counts": store.counts(cur), "feedback_mix": store.feedback_mix(cur), "sink": app.state.sink.stats}

    @app.post("/admin/v1/drain")
    def drain(_: Admin, timeout: float = Query(60.0, gt=0, le=600)) -> dict:
        """Block until the sink has written everything the broker holds (for shutdown, demos, tests)."""
        done = app.state.sink.drain(timeout)
        if not done:
            raise HTTPException(504, f"sink still behind after {timeout:.0f}s; check `kaizen stats`")
        return {"drained": True, "counts": store.counts(app.state.db.cursor())}

    @app.get("/admin/v1/turns")
    def turns(_: Admin, limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0),
              user_id: str | None = None, conversation_id: str | None = None) -> dict:
        where, params = [], []
        if user_id:
            where.append("user_id = ?")
            params.append(user_id)
        if conversation_id:
            where.append("conversation_id = ?")
            params.append(conversation_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        cur = app.state.db.cursor()
        total = cur.execute(f"SELECT count(*) FROM turns {clause}", params).fetchone()[0]
        rows = _rows(cur, f"SELECT * FROM turns {clause} ORDER BY ts DESC, event_id "
                          f"LIMIT ? OFFSET ?", [*params, limit, offset])
        for row in rows:  # JSON columns as JSON, not as strings
            row["messages"] = json.loads(row["messages"]) if row["messages"] else []
            row["retrieved_doc_ids"] = json.loads(row["retrieved_doc_ids"]) if row["retrieved_doc_ids"] else []
        return {"total": total, "limit": limit, "offset": offset, "items": rows}

    @app.get("/admin/v1/feedback")
    def feedback(_: Admin, limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0),
                 turn_id: str | None = None) -> dict:
        clause, params = ("WHERE turn_id = ?", [turn_id]) if turn_id else ("", [])
        cur = app.state.db.cursor()
        total = cur.execute(f"SELECT count(*) FROM feedback {clause}", params).fetchone()[0]
        rows = _rows(cur, f"SELECT * FROM feedback {clause} ORDER BY ts DESC, event_id LIMIT ? OFFSET ?",
                     [*params, limit, offset])
        return {"total": total, "limit": limit, "offset": offset, "items": rows}

    @app.get("/admin/v1/dlq")
    def dlq(_: Admin, limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict:
        cur = app.state.db.cursor()
        total = cur.execute("SELECT count(*) FROM dlq").fetchone()[0]
        rows = _rows(cur, "SELECT topic, kafka_partition, kafka_offset, reason, ingested_at, "
                          "to_base64(raw) AS raw_b64 FROM dlq ORDER BY ingested_at DESC LIMIT ? OFFSET ?",
                     [limit, offset])
        return {"total": total, "limit": limit, "offset": offset, "items": rows}

    return app


def serve(cfg: Config) -> None:
    import uvicorn

    uvicorn.run(create_app(cfg), host=cfg.controller.host, port=cfg.controller.port, log_level="warning",
                access_log=False)
