"""`kaizen broker`: run the embedded Kafka-compatible broker (Tansu) and create the topics."""

from __future__ import annotations

import signal
import sys

from kaizenlm.cli import UsageError
from kaizenlm.ingest import broker

HELP = "run the embedded Kafka-compatible broker (Tansu, memory storage) and create the topics"
EXAMPLE = "KAIZEN_BROKER_PORT=19092 kaizen broker"


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: kafka.broker_port)")


def run(args, cfg) -> int:
    if cfg.kafka.bootstrap != "embedded":
        raise UsageError(f"kafka.bootstrap is '{cfg.kafka.bootstrap}', an external cluster; "
                         "the embedded broker is only for bootstrap = \"embedded\"")
    port = args.port or cfg.kafka.broker_port
    cfg.home.mkdir(parents=True, exist_ok=True)
    (cfg.home / "logs").mkdir(exist_ok=True)
    proc = broker.start_embedded(port, cfg.home / "logs" / "broker.log")
    cfg.kafka.broker_port = port
    created = broker.ensure_topics(cfg.kafka)
    print(f"broker listening on 127.0.0.1:{port} (memory storage); created topics: {', '.join(created) or 'none'}")
    print("Ctrl-C stops it; everything it holds is lost then (run the controller to drain into DuckDB first)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return proc.wait()
    except (KeyboardInterrupt, SystemExit):
        proc.terminate()
        proc.wait(timeout=10)
        return 0
