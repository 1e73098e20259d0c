"""The controller process: the only owner of the DuckDB file.

It runs the Kafka -> DuckDB sink in a thread and serves the admin/read API that every
other process (CLI, dashboard) uses instead of opening the file. This module only assembles:
each package owns its routes (`kaizenlm/<package>/api.py`), and kaizenlm.auth checks the keys.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from fastapi import FastAPI

from kaizenlm import auth
from kaizenlm.abtest import api as ab_api
from kaizenlm.annotate import api as annotate_api
from kaizenlm.base.champion import ensure_base_in_child, register_first_champion
from kaizenlm.base.general import ensure_answers_in_child
from kaizenlm.config import Config
from kaizenlm.dashboard import api as dashboard_api
from kaizenlm.datasets import api as datasets_api
from kaizenlm.ingest import api as ingest_api
from kaizenlm.ingest import store
from kaizenlm.ingest.sink import Sink
from kaizenlm.jobs import api as jobs_api
from kaizenlm.registry import api as registry_api
from kaizenlm.registry.aliases import CHAMPION
from kaizenlm.registry.client import RegistryClient
from kaizenlm.review import api as review_api

log = logging.getLogger(__name__)


def create_app(cfg: Config, start_sink: bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_sink:
            app.state.sink.start()
        if start_sink and cfg.schedule.enabled:  # the crons run only in a real controller, not in API tests
            app.state.scheduler.start()
        if start_sink:  # publishes the full routing state, then syncs it and analyses experiments
            ab_api.start(app)
        if start_sink and cfg.controller.register_base:  # a fresh install serves chat once its base is registered
            threading.Thread(target=first_champion, args=(app,), name="first-champion", daemon=True).start()
        yield
        ab_api.stop(app)
        app.state.scheduler.shutdown()
        app.state.sink.stop()
        app.state.db.close()

    app = FastAPI(title="kaizenlm controller", lifespan=lifespan)
    app.state.cfg = cfg
    app.state.keyring = auth.Keyring(cfg.auth, cfg.keys_file)  # config keys + the keys file, reloaded on change
    app.state.db = store.connect(cfg.duckdb_path)
    app.state.db_lock = threading.Lock()
    app.state.sink = Sink(cfg, app.state.db.cursor(), app.state.db_lock)
    app.include_router(ingest_api.router)  # /admin/v1/stats, drain, turns, feedback, dlq (docs/INGESTION.md)
    jobs_api.install(app)  # app.state.scheduler (docs/SCHEDULE.md); /admin/v1/jobs...
    app.include_router(review_api.router)  # /admin/v1/review
    app.include_router(registry_api.router)  # /admin/v1/registry/... (docs/REGISTRY.md)
    ab_api.install(app)  # /admin/v1/ab/..., /admin/v1/rollback, /admin/v1/routing; app.state.on_alias_moved
    app.include_router(dashboard_api.router)  # /admin/v1/dashboard/... (docs/DASHBOARD.md)
    app.include_router(datasets_api.router)  # /admin/v1/datasets..., /admin/v1/rewards, /admin/v1/forget
    app.include_router(annotate_api.router)  # /admin/v1/annotate/... (docs/ANNOTATION.md)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "duckdb": str(cfg.duckdb_path), "sink": app.state.sink.stats}

    return app


def first_champion(app: FastAPI) -> None:
    """Register the configured base as `champion` when there is none (converting the embedded
    model once, in a child process), publish the routing so every gateway serves it, then have
    the base answer the general prompts (the first retrain's replay rows)."""
    cfg = app.state.cfg
    cursor = app.state.db.cursor()
    try:
        registry = RegistryClient(cfg, con=cursor)
        if CHAMPION in registry.list_aliases():
            return
        base_dir = ensure_base_in_child(cfg, log.info)
        move = register_first_champion(registry, base_dir, actor="controller")
        if move is not None:
            log.info("registered %s from %s as champion", move["to_version"], base_dir)
            app.state.on_alias_moved(move)
            # The self-distillation targets the first retrain replays: computed now, while users talk.
            ensure_answers_in_child(cfg, registry.show(move["to_version"])["artifact_dir"], log.info)
    except Exception:  # a missing or broken base must not stop the controller; the log says what to fix
        log.exception("could not register the configured base model as the first champion")
    finally:
        cursor.close()


def serve(cfg: Config) -> None:
    import uvicorn

    uvicorn.run(create_app(cfg), host=cfg.controller.host, port=cfg.controller.port, log_level="warning",
                access_log=False)
