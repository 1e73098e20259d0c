"""Gateway overhead: what routing + turn logging add to a chat completion.

    python benchmarks/gateway.py [--rate 1000] [--seconds 10] [--no-litellm] [--workers 1] [--no-turn-shipper]

Setup, all on this machine: the embedded Kafka broker (turns are really produced), an
upstream that answers at once (tests/echo_upstream.py), a routing state published
on the control topic with an experiment running on `champion` (so every request is
assigned to an arm), and one gateway process with the openai backend pointed at the
upstream. An open-loop load generator (a request every 1/rate s on keep-alive
connections, latency measured from the scheduled send time, so queueing counts) sends the
same load three ways:

  1. straight to the upstream (the baseline),
  2. through the kaizenlm gateway,
  3. through LiteLLM's proxy, when a `litellm` executable is on the PATH or at
     /tmp/litellm-venv/bin/litellm (`python -m venv /tmp/litellm-venv &&
     /tmp/litellm-venv/bin/pip install 'litellm[proxy]'`: its pins clash with kaizenlm's),
     configured with the same upstream, one worker, no database, no callbacks;
     otherwise the JSON says "litellm": "not installed".

Each target runs at --rate and at --low-rate. Overhead = a latency quantile through a proxy
minus the same quantile straight to the upstream at the same rate; cpu_ms_per_request is
the proxy process's CPU time (/proc) per answered request. Prints one JSON line (keys
p50_overhead_ms, p99_overhead_ms at --rate, cpu_ms_per_request, at_rate, at_low_rate,
turns_logged against turns_expected (every answered request's turn must reach the turns
topic), litellm, litellm_over_kaizen_*). CPU counts the gateway's whole process tree: the
workers and their turn shippers (gateway.turn_shipper; --no-turn-shipper measures the
worker producing its own turns).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _proc import cpu_seconds  # benchmarks/, the script's own folder

from kaizenlm import config as config_mod
from kaizenlm.abtest.routing import ExperimentRoute, RoutingPublisher, RoutingState, Target
from kaizenlm.ingest import broker
from kaizenlm.ports import free_port

ECHO_UPSTREAM = Path(__file__).resolve().parent.parent / "tests" / "echo_upstream.py"  # a test fake, started by path

LITELLM_BIN = "/tmp/litellm-venv/bin/litellm"  # installed apart: its dependencies are not kaizenlm's


def wait_http(url: str, timeout: float = 120.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


# --------------------------------------------------------------------------------------
# Load generator: raw HTTP/1.1 on keep-alive connections (cheap, so it measures the server)
# --------------------------------------------------------------------------------------


async def _connection(host: str, port: int, request: bytes, queue: asyncio.Queue, out: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            scheduled = await queue.get()
            if scheduled is None:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            out.append((scheduled, time.perf_counter(), status))
    finally:
        writer.close()


async def run_load(url: str, path: str, body: bytes, headers: dict, rate: float, seconds: float,
                   connections: int = 64, grace_s: float = 30.0) -> dict:
    """Open-loop load; returns latency quantiles (ms) measured from each scheduled send time."""
    u = httpx.URL(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST {path} HTTP/1.1\r\nhost: {u.host}:{u.port}\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body
    queue: asyncio.Queue = asyncio.Queue()
    out: list = []
    workers = [asyncio.create_task(_connection(u.host, u.port, request, queue, out)) for _ in range(connections)]
    n = int(rate * seconds)
    t0 = time.perf_counter() + 0.2
    for i in range(n):
        when = t0 + i / rate
        delay = when - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(when)
    for _ in workers:
        queue.put_nowait(None)
    # A target far past saturation would take minutes to work off its queue: stop waiting after a
    # grace period and count what is left as unfinished, with the wait so far as its latency
    # (a lower bound, so the quantiles are lower bounds too).
    _, late = await asyncio.wait(workers, timeout=grace_s)
    for task in late:
        task.cancel()
    stopped = time.perf_counter()
    answered = {sched for sched, _, _ in out}
    unfinished = [(sched, stopped, 0) for sched in (t0 + i / rate for i in range(n)) if sched not in answered]
    lat = np.array([(done - sched) * 1000 for sched, done, status in out + unfinished if status in (200, 0)])
    errors = sum(1 for _, _, status in out if status != 200)
    span = max(d for _, d, _ in out) - t0
    return {"requests": n, "errors": errors, "unfinished": len(unfinished), "achieved_rps": round(len(out) / span, 1),
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max())}


def measure(url: str, path: str, model: str, headers: dict, rate: float, seconds: float, pid: int | None = None) -> dict:
    """Latency quantiles at `rate`; with `pid`, also that process's CPU time per request."""
    body = json.dumps({"model": model, "user": "bench-user", "max_tokens": 16,
                       "messages": [{"role": "user", "content": "hello, how do I reset my password?"}]}).encode()
    warm = asyncio.run(run_load(url, path, body, headers, rate, min(seconds, 2.0)))  # warm-up: connections, caches
    before = cpu_seconds(pid) if pid else 0.0
    result = asyncio.run(run_load(url, path, body, headers, rate, seconds))
    result["answered_ok_with_warmup"] = sum(r["requests"] - r["unfinished"] - r["errors"] for r in (warm, result))
    if pid:  # per answered request: a saturated target leaves some unanswered
        answered = max(result["requests"] - result["unfinished"], 1)
        result["cpu_ms_per_request"] = round((cpu_seconds(pid) - before) / answered * 1000, 3)
    return result


def turns_on_topic(cfg, expected: int, timeout: float = 15.0) -> int:
    """Messages read back from the turns topic, until `expected` or the timeout: the benchmark
    counts a gateway that answers fast but loses its turn logs as broken, not fast. (Counted
    by reading: the embedded broker's end offsets are not a message count.)"""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(cfg.kafka.topic("turns"), bootstrap_servers=cfg.kafka.servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    try:
        n, deadline = 0, time.monotonic() + timeout
        while n < expected and time.monotonic() < deadline:
            n += sum(len(batch) for batch in consumer.poll(timeout_ms=500, max_records=100_000).values())
        return n
    finally:
        consumer.close()


def overhead(proxy: dict, direct: dict) -> dict:
    return {"p50_overhead_ms": round(proxy["p50_ms"] - direct["p50_ms"], 3),
            "p99_overhead_ms": round(proxy["p99_ms"] - direct["p99_ms"], 3)}


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


def start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            env={**os.environ, **(env or {})}, start_new_session=True)


LITELLM_KEY = "sk-kaizen-benchmark-0123456789abcdef"  # the proxy refuses to start without a master key


def start_litellm(upstream_url: str, work: Path) -> tuple[subprocess.Popen | None, str | None, str]:
    binary = shutil.which("litellm") or (LITELLM_BIN if Path(LITELLM_BIN).exists() else None)
    if binary is None:
        return None, None, "not installed"
    port = free_port()
    (work / "litellm.yaml").write_text(
        "model_list:\n  - model_name: champion\n    litellm_params:\n      model: openai/bench-model\n"
        f"      api_base: {upstream_url}\n      api_key: sk-bench\n"
        "litellm_settings:\n  telemetry: false\n  drop_params: true\n")
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": LITELLM_KEY}
    proc = start([binary, "--config", str(work / "litellm.yaml"), "--port", str(port), "--num_workers", "1"],
                 work / "litellm.log", env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
    except TimeoutError:
        proc.kill()
        return None, None, "did not start (see litellm.log)"
    version = subprocess.run([str(Path(binary).parent / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True).stdout.strip()
    return proc, f"http://127.0.0.1:{port}", version


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second (default 1000)")
    p.add_argument("--low-rate", type=float, default=200.0, help="second, unsaturated rate (default 200)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per target and rate (default 10)")
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM comparison")
    p.add_argument("--workers", type=int, default=1, help="gateway processes (gateway.workers, default 1)")
    p.add_argument("--no-turn-shipper", action="store_true", help="gateway.turn_shipper = false")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kaizen-bench-gw-"))
    cfg = config_mod.from_dict({
        "paths": {"home": str(work / "home")},
        "kafka": {"broker_port": free_port()},
        "gateway": {"port": free_port()},
        "serving": {"backend": "openai", "upstream_url": "http://placeholder/v1"},
    })
    procs: list[subprocess.Popen] = []
    try:
        procs.append(broker.start_embedded(cfg.kafka.broker_port, work / "broker.log"))
        broker.ensure_topics(cfg.kafka)
        up_port = free_port()
        upstream_url = f"http://127.0.0.1:{up_port}/v1"
        procs.append(start([sys.executable, str(ECHO_UPSTREAM), "--port", str(up_port)],
                           work / "upstream.log"))
        wait_http(upstream_url + "/models")
        # Routing: champion with an experiment, so every request goes through arm assignment.
        targets = {v: Target(v, "base", None, None, "bench-model") for v in ("base-0001", "base-0002")}
        publisher = RoutingPublisher(cfg)
        publisher.publish(RoutingState(0, {"champion": "base-0001"},
                                       (ExperimentRoute("exp-bench", "champion", "base-0001", "base-0002", 0.5),),
                                       targets))
        publisher.close()
        (work / "kaizen.toml").write_text(
            f'[paths]\nhome = "{work / "home"}"\n[kafka]\nbroker_port = {cfg.kafka.broker_port}\n'
            f'[gateway]\nport = {cfg.gateway.port}\nworkers = {args.workers}\n'
            f'turn_shipper = {"false" if args.no_turn_shipper else "true"}\n'
            f'[serving]\nbackend = "openai"\nupstream_url = "{upstream_url}"\n')
        procs.append(start([sys.executable, "-m", "kaizenlm.cli", "--config", str(work / "kaizen.toml"), "gateway"],
                           work / "gateway.log"))
        auth = {"authorization": f"Bearer {cfg.auth.ingest_key}"}
        wait_http(cfg.gateway_url + "/healthz")
        deadline = time.monotonic() + 30
        while httpx.get(cfg.gateway_url + "/v1/routing", headers=auth).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway never got the routing state")
            time.sleep(0.2)

        time.sleep(2.0)  # every worker follows routing on its own: give the others time to read it
        gw_pid = procs[-1].pid
        result: dict = {"benchmark": "gateway_overhead", "gateway_workers": args.workers,
                        "turn_shipper": not args.no_turn_shipper, "rate_rps": args.rate,
                        "low_rate_rps": args.low_rate,
                        "seconds": args.seconds, "goal_p99_overhead_ms": 5.0,
                        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work), no GPU",
                        "load_average_at_start": os.getloadavg()[0]}
        runs: dict = {}
        for rate in (args.rate, args.low_rate):
            direct = measure(upstream_url, "/v1/chat/completions", "bench-model", {}, rate, args.seconds)
            gateway = measure(cfg.gateway_url, "/v1/chat/completions", "champion", auth, rate, args.seconds, gw_pid)
            runs[rate] = {"direct": direct, "gateway": gateway, **overhead(gateway, direct)}
        expected = sum(runs[r]["gateway"]["answered_ok_with_warmup"] for r in runs)
        result.update(turns_expected=expected, turns_logged=turns_on_topic(cfg, expected))
        result.update(p50_overhead_ms=runs[args.rate]["p50_overhead_ms"],
                      p99_overhead_ms=runs[args.rate]["p99_overhead_ms"],
                      cpu_ms_per_request=runs[args.rate]["gateway"]["cpu_ms_per_request"],
                      at_rate=runs[args.rate],
                      at_low_rate=runs[args.low_rate])
        if args.no_litellm:
            result["litellm"] = "skipped"
        else:
            proc, url, version = start_litellm(upstream_url, work)
            if proc is None:
                result["litellm"] = version
            else:
                procs.append(proc)
                lite_auth = {"authorization": f"Bearer {LITELLM_KEY}"}
                lite: dict = {"version": version}
                for rate in (args.rate, args.low_rate):
                    run = measure(url, "/v1/chat/completions", "champion", lite_auth, rate, args.seconds, proc.pid)
                    lite[f"at_{rate:g}_rps"] = {**run, **overhead(run, runs[rate]["direct"])}
                result["litellm"] = lite
                for rate, name in ((args.rate, ""), (args.low_rate, "_low_rate")):
                    ours, theirs = runs[rate], lite[f"at_{rate:g}_rps"]
                    for q in ("p50", "p99"):
                        result[f"litellm_over_kaizen_{q}{name}"] = round(
                            theirs[f"{q}_overhead_ms"] / max(ours[f"{q}_overhead_ms"], 1e-3), 2)
                result["litellm_over_kaizen_cpu_per_request"] = round(
                    lite[f"at_{args.rate:g}_rps"]["cpu_ms_per_request"] / runs[args.rate]["gateway"]["cpu_ms_per_request"], 2)
        print(json.dumps(result))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
