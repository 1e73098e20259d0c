"""Ingestion end to end with the real Tansu broker, real processes and a real DuckDB file:
exactly once, crash of the controller, broker outage, malformed input, the DLQ."""

from __future__ import annotations

import json
import threading
import time
import uuid

import duckdb
import httpx
import orjson
import pytest
from kafka import KafkaProducer

from kaizenlm.feedback.client import KaizenClient

pytestmark = pytest.mark.integration


def turn(i: int, run: str) -> dict:
    return {"turn_id": f"{run}-t{i}", "conversation_id": f"{run}-c{i // 3}", "user_id": f"u{i % 7}",
            "messages": [{"role": "user", "content": f"question {i}"}], "response": f"answer {i}"}


def query(stack, sql: str):
    """Read the DuckDB file after the controller has stopped (it is the only writer)."""
    con = duckdb.connect(str(stack.cfg.duckdb_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_event_lands_exactly_once_even_when_posted_twice(stack):
    body = {"turn_id": "t-1", "rating": 4, "comment": "good", "event_id": "fixed-event-id-1"}
    for _ in range(3):  # a client retrying after a timeout sends the same event_id again
        r = httpx.post(stack.cfg.gateway_url + "/v1/feedback", json=body, headers=stack.ingest_headers)
        assert r.status_code == 202 and r.json()["event_ids"] == ["fixed-event-id-1"]
    counts = stack.drain()
    assert counts["feedback"] == 1
    stats = httpx.get(stack.cfg.controller_url + "/admin/v1/feedback", headers=stack.admin_headers).json()
    assert stats["items"][0]["rating"] == 4 and stats["items"][0]["comment"] == "good"


def test_auth_scopes(stack):
    url = stack.cfg.gateway_url + "/v1/signals"
    body = {"turn_id": "t", "kind": "copy"}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong-key-123"}).status_code == 401
    assert httpx.post(url, json=body, headers=stack.admin_headers).status_code == 202  # admin has ingest too
    stats_url = stack.cfg.controller_url + "/admin/v1/stats"
    assert httpx.get(stats_url, headers=stack.ingest_headers).status_code == 403
    assert httpx.get(stats_url, headers=stack.admin_headers).status_code == 200


def test_kill_9_controller_mid_stream_loses_and_duplicates_nothing(stack):
    run, n = uuid.uuid4().hex[:6], 6000
    sent = []

    def produce():
        with KaizenClient(stack.cfg.gateway_url, stack.cfg.auth.ingest_key, batch_size=200) as sdk:
            for i in range(n):
                sdk.log_turn(**turn(i, run))
                if i % 500 == 0:
                    time.sleep(0.05)
            sdk.flush(120)
            sent.append(sdk.sent)

    t = threading.Thread(target=produce)
    t.start()
    # Wait until the sink is mid-stream, then kill -9 it.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = httpx.get(stack.cfg.controller_url + "/admin/v1/stats", headers=stack.admin_headers).json()
        if stats["counts"]["turns"] > 500:
            break
        time.sleep(0.05)
    stack.kill(stack.controller)
    t.join(180)
    assert sent == [n]
    stack.start_controller()
    assert stack.drain(120)["turns"] == n
    stack.kill(stack.controller)
    rows = query(stack, "SELECT count(*), count(DISTINCT turn_id), count(DISTINCT event_id) FROM turns")
    assert rows == [(n, n, n)]


def test_broker_down_20s_while_traffic_continues_loses_nothing(stack):
    run = uuid.uuid4().hex[:6]
    accepted: list[str] = []
    statuses: set[str] = set()
    stop = threading.Event()
    running = threading.Event()
    running.set()
    idle = threading.Event()

    def traffic():
        i = 0
        with httpx.Client(base_url=stack.cfg.gateway_url, headers=stack.ingest_headers, timeout=30) as c:
            while not stop.is_set():
                if not running.is_set():
                    idle.set()
                    running.wait()
                    idle.clear()
                r = c.post("/v1/turns", json=[turn(i + k, run) for k in range(5)])
                assert r.status_code == 202, r.text
                accepted.extend(r.json()["event_ids"])
                statuses.add(r.json()["status"])
                i += 5
                time.sleep(0.02)

    t = threading.Thread(target=traffic)
    t.start()
    time.sleep(2)
    # The embedded broker keeps its log in memory, so whatever it holds when killed is gone by
    # design (a real Kafka keeps it on disk). Pause for the moment of the kill, after the sink
    # drained everything: the outage itself then runs 20 s with traffic flowing.
    running.clear()
    assert idle.wait(30)
    stack.drain()
    stack.stop_broker()
    running.set()
    time.sleep(20)
    health = httpx.get(stack.cfg.gateway_url + "/healthz").json()
    assert health["broker_up"] is False and health["spool_bytes"] > 0
    stack.start_broker()
    time.sleep(5)
    stop.set()
    t.join(60)
    assert "spooled" in statuses and "sent" in statuses
    deadline = time.monotonic() + 90
    while httpx.get(stack.cfg.gateway_url + "/healthz").json()["spool_bytes"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert httpx.get(stack.cfg.gateway_url + "/healthz").json()["spool_bytes"] == 0, "spool never drained"
    stack.drain(120)
    stack.kill(stack.controller)
    stored = {r[0] for r in query(stack, "SELECT event_id FROM turns")}
    missing = set(accepted) - stored
    assert not missing, f"{len(missing)} of {len(accepted)} accepted events lost"
    assert len(stored) == len(accepted)


def test_malformed_message_straight_to_kafka_goes_to_dlq_and_sink_keeps_going(stack):
    producer = KafkaProducer(bootstrap_servers=stack.cfg.kafka.servers)
    topic = stack.cfg.kafka.topic("feedback")
    good = {"event_id": "good-after-bad", "type": "feedback", "schema_version": 1, "ts": time.time(),
            "payload": {"turn_id": "t9", "thumbs": -1}}
    bad_rating = {**good, "event_id": "bad-rating", "payload": {"turn_id": "t9", "rating": 11}}
    producer.send(topic, b"{not json")
    producer.send(topic, b"\xff\xfe\x00garbage")
    producer.send(topic, orjson.dumps(bad_rating))
    producer.send(topic, orjson.dumps(good))
    producer.flush()
    producer.close()
    counts = stack.drain()
    assert counts["dlq"] == 3 and counts["feedback"] == 1
    dlq = httpx.get(stack.cfg.controller_url + "/admin/v1/dlq", headers=stack.admin_headers).json()
    reasons = " | ".join(item["reason"] for item in dlq["items"])
    assert "not valid JSON" in reasons and "payload.rating" in reasons
    # The DLQ topic got a copy with the reason and the raw bytes.
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(stack.cfg.kafka.topic("dlq"), bootstrap_servers=stack.cfg.kafka.servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    docs = [json.loads(m.value) for m in consumer]
    consumer.close()
    assert len(docs) == 3 and {d["topic"] for d in docs} == {topic}


def test_metrics_count_accepted_rejected_spooled(stack):
    url = stack.cfg.gateway_url
    httpx.post(url + "/v1/feedback", json=[{"turn_id": "a", "thumbs": 1}] * 3, headers=stack.ingest_headers)
    httpx.post(url + "/v1/feedback", json={"turn_id": "a", "thumbs": 5}, headers=stack.ingest_headers)
    text = httpx.get(url + "/metrics").text
    assert 'kaizen_gateway_events_accepted_total{type="feedback"} 3' in text
    assert 'kaizen_gateway_events_rejected_total{reason="invalid"} 1' in text
    assert "kaizen_gateway_produce_latency_seconds_count 1" in text
    assert "kaizen_gateway_broker_up 1" in text
