"""`kaizen gateway`: run one gateway replica (collector, widget, chat completions)."""

from __future__ import annotations

HELP = "run a gateway replica: POST /v1/turns|feedback|signals, /widget.js, /healthz, /metrics"
EXAMPLE = "KAIZEN_GATEWAY_PORT=8400 kaizen gateway"


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, help="listen port (default: gateway.port)")
    p.add_argument("--host", help="listen address (default: gateway.host)")


def run(args, cfg) -> int:
    from kaizenlm import gateway
    from kaizenlm.logs import setup_logging

    cfg.gateway.port = args.port or cfg.gateway.port
    cfg.gateway.host = args.host or cfg.gateway.host
    setup_logging(cfg, f"gateway-{cfg.gateway.port}")
    print(f"gateway on {cfg.gateway_url} -> Kafka {','.join(cfg.kafka.servers)}")
    gateway.serve(cfg)
    return 0
