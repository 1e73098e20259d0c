"""The gateway process: a stateless FastAPI app (collector, widget, health, metrics).

Any number of replicas may run; each owns a producer with its own disk spool under
$KAIZEN_HOME/spool/<replica>. `gateway.workers` > 1 runs that many processes on one port
(`serve_workers`): one Python process tops out at about one core. The hot POST routes
(chat, collector) are answered by `FastRoutes` in front of FastAPI's router.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse, Response

from kaizenlm import auth
from kaizenlm.config import Config
from kaizenlm.feedback import collector
from kaizenlm.feedback.ratelimit import PublicRateLimits
from kaizenlm.feedback.tokens import FeedbackTokens
from kaizenlm.ingest.broker import DATA_TOPICS
from kaizenlm.ingest.metrics import Metrics
from kaizenlm.ingest.producer import EventProducer
from kaizenlm.serving import chat

log = logging.getLogger(__name__)


class FastRoutes(FastAPI):
    """The gateway's FastAPI app, which answers the hot POST routes (chat and the collector)
    itself, ahead of all of FastAPI's middleware, and passes everything else on to FastAPI.
    FastAPI's routing, dependency solving and middlewares (its telemetry, body limit and error
    middlewares included) cost more CPU per request than these endpoints' own work
    (benchmarks/RESULTS.md, "Gateway overhead"), and they need none of it: each handler reads
    the raw request, catches its own errors and returns a Response. CORS: a request from an
    origin in `gateway.cors_origins` gets `Access-Control-Allow-Origin` here (any other origin
    gets none, so the browser keeps the answer from the page); preflights (OPTIONS) still reach
    the CORS middleware, which follows the same list.
    """

    fast_routes: dict[str, Callable[[Request], Awaitable[Response]]] = {}
    cors_origins: frozenset[bytes] = frozenset()
    cors_any: bool = False

    async def __call__(self, scope, receive, send) -> None:
        handler = self.fast_routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # what Starlette sets, for request.app
        response = await handler(Request(scope, receive))
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is not None and (self.cors_any or origin in self.cors_origins):
            response.headers["access-control-allow-origin"] = "*" if self.cors_any else origin.decode("latin-1")
            response.headers["vary"] = "Origin"
        await response(scope, receive, send)


def create_app(cfg: Config, replica: str | None = None) -> FastRoutes:
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
        await chat.start_turn_shipper(app.state.serving, replica)
        # Everything loaded so far lives as long as the process: keep it out of the collector's
        # scans (a full collection of it paused the loop for ~40 ms, a visible p99 spike).
        gc.collect()
        gc.freeze()
        yield
        app.state.draining = True
        await chat.stop_serving(app.state.serving)  # waits for pending turn logs
        app.state.producer.close(timeout=30)

    app = FastRoutes(title="kaizenlm gateway", lifespan=lifespan)
    app.state.cfg = cfg
    app.state.metrics = Metrics()
    app.state.draining = False
    app.state.keyring = auth.Keyring(cfg.auth, cfg.keys_file)  # config keys + the keys file, reloaded on change
    app.state.feedback_tokens = FeedbackTokens.from_config(cfg.auth)
    app.state.rate_limits = PublicRateLimits(cfg.gateway)
    # The widget runs inside other sites' pages and posts from there: only the configured sites.
    origins = [o.lower() for o in cfg.gateway.cors_origins]  # browsers send scheme and host in lower case
    app.cors_origins = frozenset(o.encode("latin-1") for o in origins)
    app.cors_any = "*" in origins
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["authorization", "content-type"],
                       expose_headers=["x-kaizen-turn-id", "x-kaizen-feedback-token", "x-kaizen-model-version"])
    app.include_router(collector.router)  # GET /widget.js; the POST routes' documentation (FastRoutes answers them)
    chat.install(app)  # /v1/models, /v1/routing
    app.fast_routes = {"/v1/chat/completions": chat.chat_completions, **collector.FAST_ROUTES}

    @app.get("/healthz")
    async def healthz() -> dict:
        producer = app.state.producer
        shipper = app.state.serving.turns.shipper
        return {"ok": True, "replica": replica, "broker_up": producer.broker_up,
                "spool_bytes": producer.spool.size_bytes, "pid": os.getpid(),
                "turn_shipper": shipper.status() if shipper is not None else None}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return app.state.metrics.render()

    return app


def replica_name(cfg: Config, worker: int) -> str:
    """Worker 0 keeps the single-process name, so its spool is found again after a change of workers."""
    return f"gw-{cfg.gateway.port}" if worker == 0 else f"gw-{cfg.gateway.port}-{worker}"


def serve(cfg: Config, worker: int = 0, sock: socket.socket | None = None) -> None:
    """Run one gateway process; with `sock` it serves on that inherited listening socket."""
    import uvicorn

    config = uvicorn.Config(create_app(cfg, replica_name(cfg, worker)), host=cfg.gateway.host, port=cfg.gateway.port,
                            log_level="warning", timeout_graceful_shutdown=20, access_log=False)
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)


def serve_workers(cfg: Config, worker_command: list[str]) -> int:
    """The parent of `gateway.workers` processes: it binds the port once, starts each worker
    with the listening socket (the kernel spreads connections over them), restarts a worker
    that dies, and on SIGTERM/SIGINT passes the signal on and waits for every worker to drain.

    worker_command: the argv of one worker, to which `--worker N --fd FD` are appended.
    """
    sock = socket.create_server((cfg.gateway.host, cfg.gateway.port), backlog=2048)
    sock.set_inheritable(True)
    stopping = False

    def start(worker: int) -> subprocess.Popen:
        # Own session: a terminal's Ctrl-C reaches the parent only, which passes it on once
        # (a second SIGINT would make uvicorn skip its graceful drain).
        return subprocess.Popen([*worker_command, "--worker", str(worker), "--fd", str(sock.fileno())],
                                pass_fds=[sock.fileno()], start_new_session=True)

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    workers = {i: start(i) for i in range(cfg.gateway.workers)}
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for i, proc in list(workers.items()):
            if proc.poll() is not None and not stopping:
                log.error("gateway worker %d exited with %s; restarting it", i, proc.returncode)
                time.sleep(1.0)
                workers[i] = start(i)
        time.sleep(0.2)
    for proc in workers.values():
        proc.wait()
    sock.close()
    return 0
