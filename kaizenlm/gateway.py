"""The gateway process: a stateless FastAPI app (collector, widget, health, metrics).

Any number of replicas may run; each owns a producer with its own disk spool under
$KAIZEN_HOME/spool/<replica>. The hot POST routes (chat, collector) are answered by
`FastRoutes` in front of FastAPI's router.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse, Response

from kaizenlm.abtest import chat
from kaizenlm.config import Config
from kaizenlm.feedback import collector
from kaizenlm.ingest.broker import DATA_TOPICS
from kaizenlm.ingest.metrics import Metrics
from kaizenlm.ingest.producer import EventProducer

log = logging.getLogger(__name__)
WIDGET_JS = Path(__file__).parent / "feedback" / "static" / "widget.js"


class FastRoutes:
    """ASGI middleware that answers the hot POST routes (chat and the collector) itself and
    passes everything else on to FastAPI. FastAPI's routing, dependency solving and the inner
    middlewares cost more CPU per request than these endpoints' own work (benchmarks/RESULTS.md,
    "Gateway overhead"), and they need none of it: each handler reads the raw request and
    returns a Response. CORS: simple requests get `Access-Control-Allow-Origin: *` here;
    preflights (OPTIONS) still reach the CORS middleware.
    """

    def __init__(self, app, routes: dict[str, Callable[[Request], Awaitable[Response]]]):
        self.app, self.routes = app, routes

    async def __call__(self, scope, receive, send) -> None:
        handler = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        response = await handler(Request(scope, receive))
        if any(k == b"origin" for k, _ in scope["headers"]):
            response.headers["access-control-allow-origin"] = "*"
        await response(scope, receive, send)


def create_app(cfg: Config, replica: str | None = None) -> FastAPI:
    replica = replica or f"gw-{cfg.gateway.port}"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.producer = EventProducer(
            cfg.kafka.servers, cfg.home / "spool" / replica, cfg.gateway.spool_max_bytes,
            cfg.gateway.producer_buffer_bytes, [cfg.kafka.topic(t) for t in DATA_TOPICS if t != "dlq"],
        )
        app.state.metrics.gauge("spool_bytes", lambda: app.state.producer.spool.size_bytes,
                                help="bytes waiting in the disk spool")
        app.state.metrics.gauge("broker_up", lambda: float(app.state.producer.broker_up),
                                help="1 when the producer is delivering straight to the broker")
        app.state.serving = chat.start_serving(cfg)  # routing follower + model backend
        yield
        app.state.draining = True
        await chat.stop_serving(app.state.serving)  # waits for pending turn logs
        app.state.producer.close(timeout=30)

    app = FastAPI(title="kaizenlm gateway", lifespan=lifespan)
    app.state.cfg = cfg
    app.state.metrics = Metrics()
    app.state.draining = False
    # The widget runs inside other sites' pages and posts from there.
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["authorization", "content-type"])
    app.include_router(collector.router)  # the routes' documentation; FastRoutes answers them
    chat.install(app)  # /v1/models, /v1/routing
    app.add_middleware(FastRoutes, routes={"/v1/chat/completions": chat.chat_completions, **collector.FAST_ROUTES})

    @app.get("/healthz")
    async def healthz() -> dict:
        producer = app.state.producer
        return {"ok": True, "replica": replica, "broker_up": producer.broker_up,
                "spool_bytes": producer.spool.size_bytes, "pid": os.getpid()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return app.state.metrics.render()

    @app.get("/widget.js")
    async def widget() -> Response:
        return Response(WIDGET_JS.read_text(encoding="utf-8"), media_type="application/javascript",
                        headers={"Cache-Control": "max-age=300"})

    return app


def serve(cfg: Config) -> None:
    import uvicorn

    uvicorn.run(create_app(cfg), host=cfg.gateway.host, port=cfg.gateway.port, log_level="warning",
                timeout_graceful_shutdown=20, access_log=False)
