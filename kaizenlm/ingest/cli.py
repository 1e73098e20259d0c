"""`kaizen broker` and `kaizen stats`: the embedded broker, and what has landed in DuckDB.

`broker` runs the embedded Kafka-compatible broker (Tansu) and creates the topics; `stats`
reads the counts through the controller, or the DuckDB file when none runs.
"""

from __future__ import annotations

import json
import signal
import sys

import httpx

from kaizenlm.command import Command
from kaizenlm.errors import UsageError
from kaizenlm.ingest import broker

BROKER_HELP = "run the embedded Kafka-compatible broker (Tansu, memory storage) and create the topics"
BROKER_EXAMPLE = "KAIZEN_BROKER_PORT=19092 kaizen broker"


def add_broker_arguments(p) -> None:
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: kafka.broker_port)")


def run_broker(args, cfg) -> int:
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


STATS_HELP = "show event counts in DuckDB and the sink's progress"
STATS_EXAMPLE = "kaizen stats --json"


def add_stats_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def run_stats(args, cfg) -> int:
    try:
        r = httpx.get(cfg.controller_url + "/admin/v1/stats", timeout=5,
                      headers={"Authorization": f"Bearer {cfg.auth.admin_key}"})
        r.raise_for_status()
        data = r.json()
    except httpx.HTTPError:
        from kaizenlm.ingest import store

        if not cfg.duckdb_path.exists():
            print(f"no controller at {cfg.controller_url} and no DuckDB file at {cfg.duckdb_path}; "
                  "run `kaizen up` first")
            return 1
        con = store.connect(cfg.duckdb_path, read_only=True)
        data = {"counts": store.counts(con), "sink": None}
    if args.json:
        print(json.dumps(data, default=str))
    else:
        for table, n in data["counts"].items():
            print(f"{table:10s} {n:>10,d}")
    return 0


BROKER = Command(help=BROKER_HELP, example=BROKER_EXAMPLE, add_arguments=add_broker_arguments, run=run_broker)
STATS = Command(help=STATS_HELP, example=STATS_EXAMPLE, add_arguments=add_stats_arguments, run=run_stats)
