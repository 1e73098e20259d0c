"""`kaizen gateway`: run one gateway replica (collector, widget, chat completions),
as one process or as `gateway.workers` processes sharing the port."""

from __future__ import annotations

import argparse
import socket
import sys

HELP = "run a gateway replica: POST /v1/turns|feedback|signals, /v1/chat/completions, /widget.js, /healthz, /metrics"
EXAMPLE = "KAIZEN_GATEWAY_PORT=8400 kaizen gateway --workers 2"


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, help="listen port (default: gateway.port)")
    p.add_argument("--host", help="listen address (default: gateway.host)")
    p.add_argument("--workers", type=int, help="processes sharing the port (default: gateway.workers)")
    # Set by the parent of several workers: which worker this is and the inherited socket.
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)


def run(args, cfg) -> int:
    from kaizenlm import gateway
    from kaizenlm.errors import UsageError
    from kaizenlm.logs import setup_logging

    cfg.gateway.port = args.port or cfg.gateway.port
    cfg.gateway.host = args.host or cfg.gateway.host
    cfg.gateway.workers = args.workers or cfg.gateway.workers
    if not 1 <= cfg.gateway.workers <= 64:
        raise UsageError(f"--workers: {cfg.gateway.workers} is not in 1..64")
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
