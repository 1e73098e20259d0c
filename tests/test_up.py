"""`kaizen up` and `kaizen broker` as a user runs them: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import duckdb
import httpx
import pytest
from kafka import KafkaAdminClient

from kaizenlm import config as config_mod
from kaizenlm.ingest.broker import wait_for_port

pytestmark = pytest.mark.integration


def spawn(args, env):
    return subprocess.Popen([sys.executable, "-m", "kaizenlm.cli", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_broker_command_creates_topics(kaizen_env):
    proc = spawn(["broker"], kaizen_env)
    try:
        wait_for_port("127.0.0.1", int(kaizen_env["KAIZEN_BROKER_PORT"]), timeout=30)
        deadline = time.monotonic() + 30
        topics: set = set()
        while time.monotonic() < deadline and "kaizen.control" not in topics:
            admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{kaizen_env['KAIZEN_BROKER_PORT']}")
            topics = set(admin.list_topics())
            admin.close()
            time.sleep(0.3)
        assert {"kaizen.turns", "kaizen.feedback", "kaizen.signals", "kaizen.dlq", "kaizen.control"} <= topics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_up_restarts_a_crashed_child_and_sigint_loses_nothing(kaizen_env):
    cfg = config_mod.load(env={**os.environ, **kaizen_env})
    proc = spawn(["up"], kaizen_env)
    headers = {"Authorization": f"Bearer {cfg.auth.ingest_key}"}
    try:
        banner = proc.stdout.readline()  # printed once everything answers
        assert banner.startswith("kaizenlm up:"), banner
        first_pid = httpx.get(cfg.gateway_url + "/healthz").json()["pid"]
        os.kill(first_pid, signal.SIGKILL)  # the supervisor must bring the gateway back
        deadline = time.monotonic() + 60
        new_pid = None
        while time.monotonic() < deadline:
            try:
                new_pid = httpx.get(cfg.gateway_url + "/healthz", timeout=1).json()["pid"]
                if new_pid != first_pid:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert new_pid and new_pid != first_pid

        accepted = []
        stop = threading.Event()

        def traffic():
            with httpx.Client(base_url=cfg.gateway_url, headers=headers, timeout=10) as c:
                i = 0
                while not stop.is_set():
                    try:
                        r = c.post("/v1/feedback", json=[{"turn_id": f"t{i + k}", "rating": 3} for k in range(10)])
                    except httpx.HTTPError:
                        return  # the gateway stopped taking requests
                    if r.status_code == 202:
                        accepted.extend(r.json()["event_ids"])
                    i += 10

        t = threading.Thread(target=traffic)
        t.start()
        time.sleep(3)
        proc.send_signal(signal.SIGINT)  # mid-traffic
        out, _ = proc.communicate(timeout=120)
        stop.set()
        t.join(30)
    finally:
        if proc.poll() is None:  # a failed assertion above: let the supervisor stop its children
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, out
    assert "stopped; DuckDB holds" in out
    con = duckdb.connect(str(cfg.duckdb_path), read_only=True)
    stored = {r[0] for r in con.execute("SELECT event_id FROM feedback").fetchall()}
    con.close()
    assert len(accepted) > 100
    assert set(accepted) <= stored, f"{len(set(accepted) - stored)} accepted events lost"
