"""Ingestion throughput and latency, gateway -> Kafka -> DuckDB, on a real local stack.

Prints one JSON line:
  batched_events_per_s   SDK (batches of 1,000) until every event is queryable in DuckDB
  single_requests_per_s  one event per HTTP request, 64 keep-alive connections
  p50/p99_ingest_to_query_s  at a fixed offered rate (default 1,000 events/s): the time from
                         the client stamping the event to its DuckDB row's commit
  baseline_raw_produce_per_s  kafka-python producing the same JSON straight to the broker
                         (no HTTP, no validation, no DuckDB), measured in the same run
  cpu_ms_per_1k_events   per phase, the CPU time (user + system) each process spent per 1,000
                         events: client (this process: SDK or load generator), gateway (all
                         workers), broker, controller (the sink). On a shared machine the
                         throughput figures drop with the load; these stay roughly comparable
                         (they include each process's idle background work, e.g. ~50 ms/s for
                         the controller, spread over the phase's events).
A warm-up of 200 SDK events runs before any phase (counted in events_expected). The load
generator runs on uvloop, like the gateway.
Usage: python benchmarks/ingest.py [--events 60000] [--requests 20000] [--rate 1000] [--seconds 20] [--workers 1]
                                   [--phases raw,batched,single,latency]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _proc import cpu_seconds  # noqa: E402  (benchmarks/, the script's own folder)

from kaizenlm import config as config_mod  # noqa: E402
from kaizenlm.feedback.client import KaizenClient  # noqa: E402
from kaizenlm.ports import free_port  # noqa: E402
from kaizenlm.server.up import Supervisor  # noqa: E402


class CpuMeter:
    """CPU seconds per process group between two points, per 1,000 events of a phase."""

    def __init__(self, sup: Supervisor):
        self.pids = {"client": os.getpid(), "broker": sup.broker_proc.pid}
        self.pids.update({c.name: c.proc.pid for c in sup.children})
        self.results: dict[str, dict[str, float]] = {}

    def snapshot(self) -> dict[str, float]:
        # The stack's processes are this process's children: count the client on its own.
        return {name: cpu_seconds(pid, descendants=name != "client") for name, pid in self.pids.items()}

    def record(self, phase: str, before: dict[str, float], events: int) -> None:
        after = self.snapshot()
        per_k = {name: round(1e6 * (after[name] - before[name]) / events, 1) for name in self.pids}
        per_k["total"] = round(sum(per_k.values()), 1)
        self.results[phase] = per_k


def turn(i: int, tag: str, ts: float | None = None) -> dict:
    body = {"turn_id": f"{tag}-{i}", "conversation_id": f"{tag}-c{i // 4}", "user_id": f"u{i % 500}",
            "messages": [{"role": "user", "content": "How long is the refund window?"}],
            "response": "The refund window is 30 days.", "latency_ms": 120}
    if ts is not None:
        body["ts"] = ts
    return body


def drain(cfg) -> None:
    import httpx

    httpx.post(cfg.controller_url + "/admin/v1/drain", params={"timeout": 300}, timeout=320,
               headers={"Authorization": f"Bearer {cfg.auth.admin_key}"}).raise_for_status()


def bench_raw_produce(cfg, n: int) -> float:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=cfg.kafka.servers, acks="all", linger_ms=2, batch_size=256 * 1024,
                             enable_idempotence=False)
    values = [orjson.dumps({"event_id": f"raw-{i}", "payload": turn(i, "raw")}) for i in range(n)]
    t0 = time.perf_counter()
    for v in values:
        producer.send("kaizen.bench-raw", v)
    producer.flush()
    elapsed = time.perf_counter() - t0
    producer.close()
    return n / elapsed


WARM_UP_EVENTS = 200


def warm_up(cfg, n: int = WARM_UP_EVENTS) -> None:
    """Events through the whole path before any clock starts: the sink's consumer joins its group
    seconds after the controller answers /healthz (drain waits for it to commit), and first-use
    costs (pyarrow, DuckDB, connections) are paid here rather than by the first phase."""
    with KaizenClient(cfg.gateway_url, cfg.auth.ingest_key) as sdk:
        for i in range(n):
            sdk.log_turn(**turn(i, "warmup"))
        sdk.flush(60)
    drain(cfg)


def bench_batched(cfg, n: int) -> float:
    t0 = time.perf_counter()
    with KaizenClient(cfg.gateway_url, cfg.auth.ingest_key, batch_size=1000, flush_interval=0.05) as sdk:
        for i in range(n):
            sdk.log_turn(**turn(i, "batched"))
        sdk.flush(300)
        assert not sdk.errors, sdk.errors[:2]
    drain(cfg)
    return n / (time.perf_counter() - t0)


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 client: the load generator must cost less than the server."""

    def __init__(self, host: str, port: int, key: str):
        self.host, self.port, self.key = host, port, key

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> int:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        head = await self.reader.readuntil(b"\r\n\r\n")  # the status line and headers in one read
        status_line, _, headers = head.partition(b"\r\n")
        length = 0
        for line in headers.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


async def _single_requests(cfg, n: int, connections: int) -> float:
    clients = [RawHTTP(cfg.gateway.host, cfg.gateway.port, cfg.auth.ingest_key) for _ in range(connections)]
    await asyncio.gather(*(c.open() for c in clients))
    bodies = [orjson.dumps(turn(i, "single")) for i in range(n)]
    counter = iter(range(n))
    bad = []

    async def worker(c):
        for i in counter:
            status = await c.post("/v1/turns", bodies[i])
            if status != 202:
                bad.append(status)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed: {bad[:5]}")
    return n / elapsed


async def _fixed_rate(cfg, rate: int, seconds: float, connections: int = 32) -> int:
    clients = [RawHTTP(cfg.gateway.host, cfg.gateway.port, cfg.auth.ingest_key) for _ in range(connections)]
    await asyncio.gather(*(c.open() for c in clients))
    queue: asyncio.Queue = asyncio.Queue()
    n = int(rate * seconds)

    async def worker(c):
        while True:
            i = await queue.get()
            if i is None:
                return
            await c.post("/v1/turns", orjson.dumps(turn(i, "latency", ts=time.time())))

    workers = [asyncio.create_task(worker(c)) for c in clients]
    t0 = time.perf_counter()
    for i in range(n):  # open-loop schedule: event i is offered at t0 + i/rate
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(i)
    for _ in clients:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return n


def run_async(coro):
    """asyncio.run on uvloop (installed with uvicorn[standard]), as the gateway itself runs:
    the load generator shares the two cores with the stack it measures, so it must cost little."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=1, help="gateway processes (gateway.workers)")
    ap.add_argument("--phases", default="raw,batched,single,latency", help="which phases to run, comma-separated")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    home = Path(tempfile.mkdtemp(prefix="kaizen-bench-ingest-"))
    env = {"KAIZEN_HOME": str(home), "KAIZEN_BROKER_PORT": str(free_port()),
           "KAIZEN_GATEWAY_PORT": str(free_port()), "KAIZEN_CONTROLLER_PORT": str(free_port())}
    os.environ.update(env)
    (home / "kaizen.toml").write_text(f"[gateway]\nworkers = {args.workers}\n", encoding="utf-8")
    cfg = config_mod.load(env={**os.environ})
    sup = Supervisor(cfg)
    sup.start()
    warm_up(cfg)
    meter = CpuMeter(sup)
    raw = batched = single = None
    n_latency = int(args.rate * args.seconds)
    try:
        if "raw" in phases:
            before = meter.snapshot()
            raw = bench_raw_produce(cfg, args.events)
            meter.record("raw", before, args.events)
        if "batched" in phases:
            before = meter.snapshot()
            batched = bench_batched(cfg, args.events)
            meter.record("batched", before, args.events)
        if "single" in phases:
            before = meter.snapshot()
            single = run_async(_single_requests(cfg, args.requests, connections=64))
            drain(cfg)
            meter.record("single", before, args.requests)
        if "latency" in phases:
            before = meter.snapshot()
            run_async(_fixed_rate(cfg, args.rate, args.seconds))
            drain(cfg)
            meter.record("latency", before, n_latency)
    finally:
        sup.stop()
    con = duckdb.connect(str(cfg.duckdb_path), read_only=True)
    lat = [r[0] for r in con.execute(
        "SELECT epoch(ingested_at) - epoch(ts) FROM turns WHERE turn_id LIKE 'latency-%'").fetchall()]
    total = con.execute("SELECT count(*) FROM turns").fetchone()[0]
    con.close()
    expected = (WARM_UP_EVENTS + args.events * ("batched" in phases) + args.requests * ("single" in phases)
                + n_latency * ("latency" in phases))
    p99 = percentile(lat, 0.99) if lat else None
    print(json.dumps({
        "benchmark": "ingest", "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "gateway_workers": args.workers,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "batched_events_per_s": _round(batched), "single_requests_per_s": _round(single),
        "p50_ingest_to_query_s": round(percentile(lat, 0.5), 3) if lat else None,
        "p99_ingest_to_query_s": round(p99, 3) if lat else None,
        "offered_rate_per_s": args.rate, "baseline_raw_produce_per_s": _round(raw),
        "batched_vs_raw_produce": round(batched / raw, 3) if batched and raw else None,
        "single_vs_raw_produce": round(single / raw, 3) if single and raw else None,
        "events_stored": total, "events_expected": expected, "lost": expected - total,
        "cpu_ms_per_1k_events": meter.results,
        "targets_met": {"batched>=5000": batched >= 5000 if batched else None,
                        "single>=1500": single >= 1500 if single else None,
                        "p99<=2s": p99 <= 2.0 if lat else None},
    }))


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


if __name__ == "__main__":
    main()
