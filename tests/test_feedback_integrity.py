"""Feedback integrity on the real stack (broker, controller and gateway as processes): a public
widget key writes feedback only on turns the system served, as the user it served them to, at a
limited rate, from configured origins; everything refused leaves nothing in Kafka or DuckDB."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import httpx
import pytest
import serving_helpers
from conftest import Stack
from serving_helpers import drain_until, promote, register_base, wait_gateway

from kaizenlm.feedback.client import KaizenClient
from kaizenlm.feedback.tokens import FeedbackTokens

pytestmark = pytest.mark.integration

openai_stack = serving_helpers.openai_stack  # a stack serving chat through an echo upstream
WRONG = "The refund window is 90 days."


def widget_headers(stack) -> dict:
    return {"Authorization": f"Bearer {stack.cfg.auth.widget_key}"}


def metric(stack, line_start: str) -> float:
    for line in httpx.get(stack.cfg.gateway_url + "/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def log_turn(stack, turn_id: str, user_id: str) -> str:
    """Log a turn server-side (ingest key) and return the feedback token the gateway answers."""
    r = httpx.post(stack.cfg.gateway_url + "/v1/turns", headers=stack.ingest_headers, json={
        "turn_id": turn_id, "conversation_id": f"c-{turn_id}", "user_id": user_id,
        "messages": [{"role": "user", "content": "What is the refund window?"}],
        "response": "The refund window is 30 days."})
    assert r.status_code == 202, r.text
    assert r.json()["turn_ids"] == [turn_id]
    return r.json()["feedback_tokens"][0]


def test_tokens_bind_feedback_to_the_served_turn_and_user(openai_stack):
    stack = openai_stack
    gw, widget = stack.cfg.gateway_url, widget_headers(stack)
    version = register_base(stack)
    promote(stack, version)
    wait_gateway(stack, lambda r: r["aliases"].get("champion") == version)

    # The chat answer carries the token in the body and in a header.
    r = httpx.post(gw + "/v1/chat/completions", headers=stack.ingest_headers, timeout=30,
                   json={"model": "champion", "user": "alice", "messages": [{"role": "user", "content": "refund?"}]})
    assert r.status_code == 200, r.text
    turn_a, token_a = r.json()["turn_id"], r.json()["feedback_token"]
    assert r.headers["x-kaizen-feedback-token"] == token_a and token_a.startswith("v1.")
    token_b = log_turn(stack, "turn-bob-1", "bob")  # /v1/turns answers one token per turn

    # The widget key can do nothing but tokened feedback.
    r = httpx.post(gw + "/v1/turns", headers=widget, json={"conversation_id": "c", "user_id": "mallory",
                                                           "messages": [{"role": "user", "content": "x"}],
                                                           "response": WRONG})
    assert r.status_code == 403 and "lacks the 'ingest' scope" in r.json()["error"]
    r = httpx.post(gw + "/v1/chat/completions", headers=widget, json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 403 and "lacks the 'chat' scope" in r.json()["error"]["message"]
    assert httpx.get(gw + "/v1/models", headers=widget).status_code == 403
    assert httpx.get(stack.cfg.controller_url + "/admin/v1/stats", headers=widget).status_code == 403

    now = int(time.time())
    sig = token_a.rsplit(".", 1)[1]
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    user_b64 = base64.urlsafe_b64encode(b"alice").rstrip(b"=").decode()
    expired = FeedbackTokens.from_config(stack.cfg.auth).issue(turn_a, "alice", now=now - 8 * 86400)
    refused = {
        "missing": ({"turn_id": turn_a}, "feedback_token: missing"),
        "malformed": ({"turn_id": turn_a, "feedback_token": "not-a-token"}, "feedback_token: malformed"),
        "forged": ({"turn_id": turn_a, "feedback_token": f"v1.{now + 3600}.{user_b64}.{'A' * 43}"},
                   f"not valid for turn_id '{turn_a}'"),
        "altered signature": ({"turn_id": turn_a, "feedback_token": token_a.rsplit(".", 1)[0] + "." + flipped},
                              f"not valid for turn_id '{turn_a}'"),
        "altered expiry": ({"turn_id": turn_a, "feedback_token": token_a.replace(token_a.split(".")[1],
                                                                                 str(int(token_a.split(".")[1]) + 86400))},
                           f"not valid for turn_id '{turn_a}'"),
        "expired": ({"turn_id": turn_a, "feedback_token": expired}, "feedback_token: expired at"),
        "cross-turn": ({"turn_id": "turn-bob-1", "feedback_token": token_a}, "not valid for turn_id 'turn-bob-1'"),
        "cross-user": ({"turn_id": turn_a, "user_id": "bob", "feedback_token": token_a},
                       "user_id: 'bob' is not the user"),
        "made-up turn": ({"turn_id": "turn-made-up", "feedback_token": token_a}, "not valid for turn_id 'turn-made-up'"),
    }
    for case, (body, phrase) in refused.items():
        r = httpx.post(gw + "/v1/feedback", headers=widget, json={**body, "correction": WRONG})
        assert r.status_code == 403, (case, r.status_code, r.text)
        assert phrase in r.json()["error"], (case, r.json()["error"])
    r = httpx.post(gw + "/v1/signals", headers=widget, json={"conversation_id": f"c-{turn_a}", "kind": "abandon"})
    assert r.status_code == 422 and "turn_id: required with a widget" in r.json()["error"]
    r = httpx.post(gw + "/v1/feedback", headers=widget, json=[
        {"turn_id": turn_a, "thumbs": 1, "feedback_token": token_a},
        {"turn_id": "turn-bob-1", "correction": WRONG, "feedback_token": token_a}])
    assert r.status_code == 403 and "1 of 2 events invalid, none accepted: [1].feedback_token" in r.json()["error"]
    assert metric(stack, 'kaizen_gateway_events_rejected_total{reason="bad_feedback_token"}') == len(refused) + 1

    # The right token works; the stored user is the token's, the time is the gateway's.
    r = httpx.post(gw + "/v1/feedback", headers=widget,
                   json={"turn_id": turn_a, "thumbs": -1, "correction": "The refund window is 30 days.",
                         "feedback_token": token_a, "ts": 1_000_000_000})
    assert r.status_code == 202, r.text
    r = httpx.post(gw + "/v1/signals", headers=widget, json={"turn_id": "turn-bob-1", "kind": "copy",
                                                             "feedback_token": token_b})
    assert r.status_code == 202, r.text
    # A server key needs no token, as before.
    assert httpx.post(gw + "/v1/feedback", headers=stack.ingest_headers,
                      json={"turn_id": "turn-bob-1", "rating": 5, "user_id": "bob"}).status_code == 202

    # The SDK: the server side logs a turn and gets its token; a public client sends it back.
    with KaizenClient(gw, stack.cfg.auth.ingest_key) as server, KaizenClient(gw, stack.cfg.auth.widget_key) as public:
        sdk_turn = server.log_turn(conversation_id="c-sdk", user_id="erin", response="The refund window is 30 days.",
                                   messages=[{"role": "user", "content": "Refund window?"}])
        public.feedback(sdk_turn, thumbs=1, feedback_token=server.feedback_token(sdk_turn))
        public.flush()
        public.feedback(sdk_turn, correction=WRONG)  # no token: refused, and not retried
        public.flush()
    assert public.sent == 1 and [e.status for e in public.errors] == [403]

    drain_until(stack, "feedback", 3)
    drain_until(stack, "turns", 3)  # the chat turn goes out through the turn shipper, up to 100 ms later
    counts = stack.drain()
    assert (counts["turns"], counts["feedback"], counts["signals"], counts["dlq"]) == (3, 3, 1, 0)
    items = httpx.get(stack.cfg.controller_url + "/admin/v1/feedback", headers=stack.admin_headers).json()["items"]
    mine = next(i for i in items if i["turn_id"] == turn_a)
    assert (mine["user_id"], mine["thumbs"], mine["correction"]) == ("alice", -1, "The refund window is 30 days.")
    assert abs(_epoch(mine["ts"]) - time.time()) < 600, mine["ts"]  # not the client's year 2001
    assert "feedback_token" not in mine and not any(i.get("correction") == WRONG for i in items)
    assert next(i for i in items if i["turn_id"] == sdk_turn)["user_id"] == "erin"


def _epoch(ts) -> float:
    from datetime import datetime

    return ts if isinstance(ts, (int, float)) else datetime.fromisoformat(str(ts)).timestamp()


@pytest.fixture
def limited_stack(kaizen_env, tmp_path):
    (tmp_path / "kaizen.toml").write_text(
        "[gateway]\nrate_burst_per_user = 3\nrate_limit_per_user = 0.05\nrate_burst_per_address = 8\n"
        'rate_limit_per_address = 0.05\ncors_origins = ["http://allowed.example"]\n', encoding="utf-8")
    stack = Stack(kaizen_env)
    try:
        yield stack.start()
    finally:
        stack.stop()


def test_rate_limits_and_cors_on_the_public_routes(limited_stack):
    stack = limited_stack
    gw, widget = stack.cfg.gateway_url, widget_headers(stack)
    carol, dave = log_turn(stack, "turn-carol", "carol"), log_turn(stack, "turn-dave", "dave")

    def carol_thumbs() -> httpx.Response:
        return httpx.post(gw + "/v1/feedback", headers=widget,
                          json={"turn_id": "turn-carol", "thumbs": 1, "feedback_token": carol})

    assert [carol_thumbs().status_code for _ in range(3)] == [202, 202, 202]
    r = carol_thumbs()  # the user's burst of 3 is spent
    assert r.status_code == 429 and "user 'carol'" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
    # A server key is not limited.
    assert httpx.post(gw + "/v1/feedback", headers=stack.ingest_headers,
                      json={"turn_id": "turn-carol", "thumbs": 1, "user_id": "carol"}).status_code == 202
    # 4 of the address's 8 are spent: 5 more at once are refused whole, for the address.
    r = httpx.post(gw + "/v1/feedback", headers=widget,
                   json=[{"turn_id": "turn-dave", "rating": 4, "feedback_token": dave}] * 5)
    assert r.status_code == 429 and "this client address" in r.json()["error"]
    assert int(r.headers["retry-after"]) >= 1
    assert metric(stack, 'kaizen_gateway_rate_limited_total{limit="user"}') == 1
    assert metric(stack, 'kaizen_gateway_rate_limited_total{limit="address"}') == 1

    # CORS: only the configured origin is let in, on the fast path and in preflights.
    body = {"turn_id": "turn-dave", "rating": 5, "user_id": "dave"}
    allowed = httpx.post(gw + "/v1/feedback", headers={**stack.ingest_headers, "Origin": "http://allowed.example"},
                         json=body)
    assert allowed.headers.get("access-control-allow-origin") == "http://allowed.example"
    other = httpx.post(gw + "/v1/feedback", headers={**stack.ingest_headers, "Origin": "http://evil.example"},
                       json=body)
    assert "access-control-allow-origin" not in other.headers
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    ok = httpx.options(gw + "/v1/feedback", headers={**preflight, "Origin": "http://allowed.example"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://allowed.example"
    bad = httpx.options(gw + "/v1/feedback", headers={**preflight, "Origin": "http://evil.example"})
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers

    assert drain_until(stack, "feedback", 6) == 6  # 3 widget + 1 server + the 2 CORS posts; nothing refused
    assert stack.drain()["feedback"] == 6


def kaizen(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kaizenlm.cli", *args], env=stack.env, capture_output=True,
                          text=True, timeout=60)


def wait_status(call, status: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while (got := call().status_code) != status and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


def test_keys_file_keys_come_and_go_without_restart(stack):
    gw, ctl = stack.cfg.gateway_url, stack.cfg.controller_url
    created = kaizen(stack, "keys", "create", "--scope", "feedback", "--name", "shop widget", "--json")
    assert created.returncode == 0, created.stderr
    widget = json.loads(created.stdout)
    admin = json.loads(kaizen(stack, "keys", "create", "--scope", "admin", "--json").stdout)
    stored = stack.cfg.keys_file.read_text()
    assert widget["key"] not in stored and admin["key"] not in stored and widget["sha256"] in stored

    def feedback():  # recognised (403: no token) rather than unknown (401)
        return httpx.post(gw + "/v1/feedback", headers={"Authorization": f"Bearer {widget['key']}"},
                          json={"turn_id": "t", "thumbs": 1})

    def stats():
        return httpx.get(ctl + "/admin/v1/stats", headers={"Authorization": f"Bearer {admin['key']}"})

    assert wait_status(feedback, 403) == 403 and "feedback_token: missing" in feedback().json()["error"]
    assert wait_status(stats, 200) == 200
    listed = kaizen(stack, "keys", "list")
    assert widget["id"] in listed.stdout and "shop widget" in listed.stdout and widget["key"] not in listed.stdout
    for key_id in (widget["id"], admin["id"]):
        assert kaizen(stack, "keys", "revoke", key_id).returncode == 0
    assert wait_status(feedback, 401) == 401 and wait_status(stats, 401) == 401
    bad = kaizen(stack, "keys", "revoke", "k-nosuch")
    assert bad.returncode == 2 and "no key k-nosuch" in bad.stderr
