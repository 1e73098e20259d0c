"""The turn shipper: the process beside each gateway worker that produces chat turns to a
real broker. Every turn handed over arrives once; EOF drains it; a shipper killed under a
running gateway is replaced, and the turns of the gap are published by the worker itself."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import openai
import orjson
import pytest
import serving_helpers
from conftest import Stack
from kafka import KafkaConsumer
from serving_helpers import drain_until, promote, register_base, wait_gateway

from kaizenlm.ingest.events import make_envelope
from kaizenlm.serving.turn_shipper import ShipperClient, shipper_argv

openai_stack = serving_helpers.openai_stack

pytestmark = pytest.mark.integration


def turn(i: int) -> dict:
    return make_envelope("turn", {"turn_id": f"t{i}", "conversation_id": f"c{i % 7}", "user_id": "u",
                                  "messages": [{"role": "user", "content": f"question {i}"}], "response": "ok"})


def read_turn_ids(stack: Stack, expected: int, timeout: float = 20.0) -> list[str]:
    consumer = KafkaConsumer(stack.cfg.kafka.topic("turns"), bootstrap_servers=stack.cfg.kafka.servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(ids) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                ids += [orjson.loads(m.value)["payload"]["turn_id"] for m in batch]
        return ids
    finally:
        consumer.close()


def test_every_turn_handed_over_arrives_once_and_eof_drains(kaizen_env):
    stack = Stack(kaizen_env)
    stack.start_broker()
    try:
        async def ship() -> ShipperClient:
            client = ShipperClient(shipper_argv(stack.cfg, "gw-test"), stack.home / "logs" / "gw-test-turns.log")
            await client.start()
            for b in range(30):
                assert client.send([turn(b * 10 + i) for i in range(10)])
                await asyncio.sleep(0.01)
            await client.close()  # EOF: it publishes what it has, then exits
            return client

        client = asyncio.run(ship())
        assert client.proc.returncode == 0 and client.frames_sent == 30
        ids = read_turn_ids(stack, 300)
        assert sorted(ids) == sorted(f"t{i}" for i in range(300))
        assert "turn shipper done: 300 turns" in (stack.home / "logs" / "gw-test-turns.log").read_text()
    finally:
        stack.stop()


def shipper_pid(stack) -> int:
    return httpx.get(stack.cfg.gateway_url + "/healthz").json()["turn_shipper"]["pid"]


def test_a_killed_shipper_is_replaced_and_no_turn_is_lost(openai_stack):
    stack = openai_stack
    version = register_base(stack)
    promote(stack, version)
    wait_gateway(stack, lambda r: r["aliases"].get("champion") == version)
    client = openai.OpenAI(base_url=stack.cfg.gateway_url + "/v1", api_key=stack.cfg.auth.ingest_key, max_retries=0)

    def chat(user: str, n: int) -> None:
        for i in range(n):
            client.chat.completions.create(model="champion", user=user,
                                           messages=[{"role": "user", "content": f"question {i}"}])

    chat("before", 5)
    assert drain_until(stack, "turns", 5) == 5
    first = shipper_pid(stack)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while httpx.get(stack.cfg.gateway_url + "/healthz").json()["turn_shipper"]["alive"]:
        assert time.monotonic() < deadline, "the gateway never noticed its shipper died"
        time.sleep(0.05)
    chat("gap", 5)  # the worker publishes these itself and starts a new shipper (within 5 s)
    deadline = time.monotonic() + 10
    while not (status := httpx.get(stack.cfg.gateway_url + "/healthz").json()["turn_shipper"])["alive"]:
        assert time.monotonic() < deadline, f"no new shipper: {status}"
        time.sleep(0.1)
    assert status["restarts"] == 1 and status["pid"] != first
    chat("after", 5)
    assert drain_until(stack, "turns", 15) == 15
    for user in ("before", "gap", "after"):
        items = httpx.get(stack.cfg.controller_url + "/admin/v1/turns", headers=stack.admin_headers,
                          params={"user_id": user}).json()["items"]
        assert len(items) == 5 and {t["model_version"] for t in items} == {version}
