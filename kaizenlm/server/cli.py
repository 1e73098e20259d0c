"""`kaizen gateway`, `kaizen controller` and `kaizen up`: run the long-lived processes.

`gateway` runs one gateway replica (as one process or as `gateway.workers` processes sharing
the port), `controller` the one controller, and `up` supervises broker, controller and
gateway on one machine (kaizenlm/server/up.py).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time

from kaizenlm import auth
from kaizenlm.command import Command
from kaizenlm.errors import UsageError
from kaizenlm.server.up import Supervisor


def refuse_default_credentials(cfg, what: str, host: str) -> None:
    """Exit 2 (UsageError) when a process would listen beyond this machine with a development
    key or signing secret, which anyone can read in kaizenlm's source (docs/SECURITY.md)."""
    unsafe = auth.unsafe_defaults(cfg.auth)
    if unsafe and not auth.is_loopback(host):
        raise UsageError(f"refusing to start the {what} on {host}, which is reachable from other machines, with "
                         f"development defaults: {', '.join(unsafe)}. Set each to a secret of your own (kaizen.toml "
                         "[auth] or the variable), or listen on 127.0.0.1")

GATEWAY_HELP = "run a gateway replica: POST /v1/turns|feedback|signals, /v1/chat/completions, /widget.js, /healthz, /metrics"
GATEWAY_EXAMPLE = "KAIZEN_GATEWAY_PORT=8400 kaizen gateway --workers 2"


def add_gateway_arguments(p) -> None:
    p.add_argument("--port", type=int, help="listen port (default: gateway.port)")
    p.add_argument("--host", help="listen address (default: gateway.host)")
    p.add_argument("--workers", type=int, help="processes sharing the port (default: gateway.workers)")
    # Set by the parent of several workers: which worker this is and the inherited socket.
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)


def run_gateway(args, cfg) -> int:
    from kaizenlm.logs import setup_logging
    from kaizenlm.server import gateway

    cfg.gateway.port = args.port or cfg.gateway.port
    cfg.gateway.host = args.host or cfg.gateway.host
    cfg.gateway.workers = args.workers or cfg.gateway.workers
    if not 1 <= cfg.gateway.workers <= 64:
        raise UsageError(f"--workers: {cfg.gateway.workers} is not in 1..64")
    refuse_default_credentials(cfg, "gateway", cfg.gateway.host)
    if args.worker is not None:  # one worker of several
        setup_logging(cfg, f"gateway-{cfg.gateway.port}-{args.worker}")
        gateway.serve(cfg, args.worker, socket.socket(fileno=args.fd))
        return 0
    setup_logging(cfg, f"gateway-{cfg.gateway.port}")
    print(f"gateway on {cfg.gateway_url} ({cfg.gateway.workers} worker(s)) -> Kafka {','.join(cfg.kafka.servers)}",
          flush=True)
    if cfg.gateway.workers == 1:
        gateway.serve(cfg)
        return 0
    config_arg = ["--config", args.config] if args.config else []
    command = [sys.executable, "-m", "kaizenlm.cli", *config_arg, "gateway", "--port", str(cfg.gateway.port),
               "--host", cfg.gateway.host]
    return gateway.serve_workers(cfg, command)


CONTROLLER_HELP = "run the controller: the Kafka->DuckDB sink, the admin/read API and the scheduler"
CONTROLLER_EXAMPLE = "KAIZEN_HOME=/var/lib/kaizen kaizen controller"


def add_controller_arguments(p) -> None:
    p.add_argument("--port", type=int, help="listen port (default: controller.port)")


def run_controller(args, cfg) -> int:
    from kaizenlm.ingest import broker
    from kaizenlm.logs import setup_logging
    from kaizenlm.server import controller

    cfg.controller.port = args.port or cfg.controller.port
    refuse_default_credentials(cfg, "controller", cfg.controller.host)
    setup_logging(cfg, "controller")
    broker.ensure_topics(cfg.kafka)
    print(f"controller on {cfg.controller_url}; DuckDB at {cfg.duckdb_path}")
    controller.serve(cfg)
    return 0


UP_HELP = "start broker (if embedded), controller and gateway, supervised; Ctrl-C stops them without losing events"
UP_EXAMPLE = "KAIZEN_HOME=./state kaizen up"


def add_up_arguments(p) -> None:
    p.add_argument("--no-gateway", action="store_true", help="do not start a gateway")
    p.add_argument("--dashboard", action="store_true", help="also start the Streamlit dashboard")


def run_up(args, cfg) -> int:
    refuse_default_credentials(cfg, "controller", cfg.controller.host)
    if not args.no_gateway:
        refuse_default_credentials(cfg, "gateway", cfg.gateway.host)
    sup = Supervisor(cfg, with_gateway=not args.no_gateway, with_dashboard=args.dashboard)
    stop = {"now": False}

    def on_signal(*_):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sup.start()
    if cfg.controller.register_base and sup.champion() is None:
        print("preparing the base model: the first start converts and registers it (about a minute; "
              f"log: {cfg.home / 'logs' / 'controller.log'})", flush=True)
        deadline = time.monotonic() + 900
        while sup.champion() is None and not stop["now"] and time.monotonic() < deadline:
            sup.supervise_once()
            time.sleep(1.0)
    dashboard = f"  dashboard http://{cfg.dashboard.host}:{cfg.dashboard.port}" if args.dashboard else ""
    print(f"kaizenlm up: gateway {cfg.gateway_url}  controller {cfg.controller_url}{dashboard}  state {cfg.home}",
          flush=True)
    print("Ctrl-C stops everything after draining every accepted event into DuckDB")
    while not stop["now"]:
        for name in sup.supervise_once():
            print(f"restarted {name} (see {cfg.home / 'logs'})", file=sys.stderr)
        time.sleep(0.5)
    report = sup.stop()
    counts = report.get("drain", {}).get("counts")
    print(f"stopped; DuckDB holds {counts}" if counts else f"stopped; drain problem: {report}")
    return 0


GATEWAY = Command(help=GATEWAY_HELP, example=GATEWAY_EXAMPLE, add_arguments=add_gateway_arguments, run=run_gateway)
CONTROLLER = Command(help=CONTROLLER_HELP, example=CONTROLLER_EXAMPLE, add_arguments=add_controller_arguments, run=run_controller)
UP = Command(help=UP_HELP, example=UP_EXAMPLE, add_arguments=add_up_arguments, run=run_up)
