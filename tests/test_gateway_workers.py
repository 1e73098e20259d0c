"""`gateway.workers = 2`: two processes share the port, every event lands exactly once, a
killed worker is restarted, and SIGTERM drains both."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import httpx
import pytest
from conftest import Stack

pytestmark = pytest.mark.integration  # gateway worker processes


def _pids(stack: Stack, tries: int = 300) -> set[int]:
    seen = set()
    for _ in range(tries):  # a fresh connection each time, so the kernel may pick either worker
        with httpx.Client() as client:
            seen.add(client.get(stack.cfg.gateway_url + "/healthz", timeout=5).json()["pid"])
        if len(seen) == 2:
            break
    return seen


@pytest.mark.integration
def test_two_workers_share_the_port_restart_and_drain(kaizen_env, tmp_path):
    (tmp_path / "kaizen.toml").write_text("[gateway]\nworkers = 2\n", encoding="utf-8")
    stack = Stack(kaizen_env)
    try:
        stack.start()
        pids = _pids(stack)
        assert len(pids) == 2 and stack.gateway.pid not in pids

        def send(i: int) -> int:
            events = [{"event_id": f"w-{i}-{j}", "conversation_id": f"c{i}", "user_id": "u",
                       "messages": [{"role": "user", "content": "hi"}], "response": "hello"} for j in range(10)]
            with httpx.Client() as client:  # one connection per batch: spread over both workers
                return client.post(stack.cfg.gateway_url + "/v1/turns", json=events, headers=stack.ingest_headers,
                                   timeout=30).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(send, range(60))) == {202}
        assert stack.drain()["turns"] == 600

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = _pids(stack, tries=50)
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, f"worker {victim} was not replaced: {now}"
            time.sleep(0.5)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # traffic, then SIGTERM: nothing lost
            futures = [pool.submit(send, i) for i in range(60, 80)]
            assert {f.result() for f in futures} == {202}
        stack.gateway.send_signal(signal.SIGTERM)
        assert stack.gateway.wait(timeout=60) == 0
        for pid in now:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert stack.drain()["turns"] == 800
    finally:
        stack.stop()
