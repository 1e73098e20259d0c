"""`kaizen controller`: run the controller (DuckDB owner, sink, admin API)."""

from __future__ import annotations

HELP = "run the controller: the Kafka->DuckDB sink, the admin/read API and the scheduler"
EXAMPLE = "KAIZEN_HOME=/var/lib/kaizen kaizen controller"


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, help="listen port (default: controller.port)")


def run(args, cfg) -> int:
    from kaizenlm import controller
    from kaizenlm.ingest import broker
    from kaizenlm.logs import setup_logging

    cfg.controller.port = args.port or cfg.controller.port
    setup_logging(cfg, "controller")
    broker.ensure_topics(cfg.kafka)
    print(f"controller on {cfg.controller_url}; DuckDB at {cfg.duckdb_path}")
    controller.serve(cfg)
    return 0
