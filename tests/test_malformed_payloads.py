"""Over 1,000 generated malformed payloads against the real gateway: every one gets a 4xx
with a message, and nothing reaches Kafka or DuckDB. Injection strings in free text are
stored verbatim (they are content, not code)."""

from __future__ import annotations

import itertools
import json
import random

import httpx
import pytest

pytestmark = pytest.mark.integration

INJECTIONS = ["'; DROP TABLE feedback; --", "\" OR 1=1 --", "<script>alert(1)</script>", "../../etc/passwd",
              "${jndi:ldap://x/a}", "{{7*7}}", "\u202eevil", "Robert'); DELETE FROM turns;--"]
WRONG_VALUES = [None, True, False, 0, -1, 1.5, 10**20, "", "x", [], {}, [1, 2], {"a": 1}, "1"]

VALID = {
    "turns": {"conversation_id": "c1", "user_id": "u1", "messages": [{"role": "user", "content": "hi"}],
              "response": "hello", "latency_ms": 5},
    "feedback": {"turn_id": "t1", "thumbs": 1, "rating": 5},
    "signals": {"turn_id": "t1", "kind": "copy", "value": 1},
}
REQUIRED = {"turns": ["conversation_id", "user_id", "messages", "response"], "feedback": ["turn_id"],
            "signals": ["kind"]}
# Values that are valid for a field: a replacement equal to one of these is not malformed.
ALLOWED = {
    ("feedback", "thumbs"): [1, -1, None], ("feedback", "rating"): [None],
    ("turns", "latency_ms"): [0, 1.5, None], ("signals", "value"): [None, 0, -1, 1.5],
}
STRING_FIELDS = {"turn_id", "conversation_id", "user_id", "response", "event_id"}


def malformed_bodies(max_body: int) -> list[tuple[str, bytes, str]]:
    """(endpoint, raw body, what is wrong) for a wide spread of bad input."""
    rng = random.Random(7)
    cases: list[tuple[str, bytes, str]] = []

    def add(endpoint, obj, why):
        cases.append((endpoint, json.dumps(obj).encode(), why))

    for endpoint, valid in VALID.items():
        for field, wrong in itertools.product(list(valid) + ["event_id", "ts"], WRONG_VALUES):
            if wrong in ALLOWED.get((endpoint, field), []):
                continue
            if field in STRING_FIELDS and wrong in ("x", "1") or (field == "response" and wrong == ""):
                continue  # a valid string for that field
            if field in ("event_id", "ts") and wrong is None:
                continue  # absent/None means "assign one"
            if endpoint == "signals" and field == "turn_id" and wrong is None:
                continue
            add(endpoint, {**valid, field: wrong}, f"{field}={wrong!r}")
        for field in REQUIRED[endpoint]:
            add(endpoint, {k: v for k, v in valid.items() if k != field}, f"missing {field}")
        for inj in INJECTIONS:
            for field in ("turn_id", "conversation_id", "user_id", "event_id", "kind", "thumbs", "rating"):
                if field in valid or field == "event_id":
                    add(endpoint, {**valid, field: inj}, f"injection in {field}")
        add(endpoint, {**valid, "unexpected": 1}, "unknown field")
        add(endpoint, [], "empty array")
        add(endpoint, [valid] * 1001, "batch over 1000")
        add(endpoint, [valid, {**valid, "zzz": 1}], "one bad item in a batch")
        add(endpoint, "just a string", "not an object")
        add(endpoint, 42, "a number")
        cases.append((endpoint, b"", "empty body"))
        cases.append((endpoint, b"{\"turn_id\": ", "truncated JSON"))
        cases.append((endpoint, b"\xff\xfe\xfa{}", "invalid UTF-8"))
        cases.append((endpoint, json.dumps(valid).encode()[:-1] + b"\xc3\x28}", "invalid UTF-8 inside"))
        cases.append((endpoint, b"[" * 100_000 + b"]" * 100_000, "deep nesting"))
        add(endpoint, {**valid, "messages": [{"role": "user", "content": [[[[["deep"]]]]]}]}, "nested content")
        cases.append((endpoint, b"{\"a\": \"" + b"x" * (max_body + 10) + b"\"}", "body over the limit"))
        for _ in range(10):
            garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            cases.append((endpoint, garbage, "random bytes"))
    cases += fuzzed_bodies(rng, 220)
    # type-specific range and enum errors
    for rating in (0, 6, 100, -5):
        add("feedback", {"turn_id": "t1", "rating": rating}, f"rating {rating}")
    for thumbs in (0, 2, -2):
        add("feedback", {"turn_id": "t1", "thumbs": thumbs}, f"thumbs {thumbs}")
    add("feedback", {"turn_id": "t1"}, "no thumbs/rating/comment/correction")
    add("feedback", {"turn_id": "t1", "comment": "x" * 4001}, "comment too long")
    for kind in ("like", "COPY", "", "regenerate "):
        add("signals", {"turn_id": "t1", "kind": kind}, f"kind {kind!r}")
    add("signals", {"kind": "copy"}, "signal without target")
    for role in ("admin", "", None):
        add("turns", {**VALID["turns"], "messages": [{"role": role, "content": "x"}]}, f"role {role!r}")
    add("turns", {**VALID["turns"], "messages": []}, "no messages")
    add("turns", {**VALID["turns"], "response": "x" * 32_001}, "response too long")
    add("turns", {**VALID["turns"], "response": "nul\u0000byte"}, "NUL in response")
    return cases


# Generators of values that are invalid for each kind of field, so every fuzzed body is malformed.
def _bad_id(rng):
    return rng.choice([rng.randrange(10**6), [rng.random()], {"k": "v"}, True, "x" * rng.randrange(129, 400),
                       rng.choice(INJECTIONS), "sp ace", "semi;colon", ""])


def _bad_number(rng, lo, hi):
    return rng.choice([str(rng.randrange(10)), [1], {"v": 1}, True, rng.choice(INJECTIONS), lo - 1 - rng.random() * 10,
                       hi + 1 + rng.random() * 1e6])


FIELD_FUZZ = {
    "turns": {"conversation_id": _bad_id, "user_id": _bad_id, "turn_id": _bad_id,
              "latency_ms": lambda r: _bad_number(r, 0, 3_600_000),
              "messages": lambda r: r.choice(["hi", [{"role": "user"}], [{"content": "x"}], [1, 2], {"role": "user"}]),
              "response": lambda r: r.choice([None, 5, ["a"], {"t": 1}, "x" * 32_001])},
    "feedback": {"turn_id": _bad_id, "thumbs": lambda r: r.choice([0, 2, -3, "1", "up", 1.5, [1]]),
                 "rating": lambda r: r.choice([0, 6, -1, 4.5, "5", [5], True])},
    "signals": {"turn_id": _bad_id, "conversation_id": _bad_id,
                "kind": lambda r: r.choice(["like", "share", "", 3, None, ["copy"], rng_inj(r)]),
                "value": lambda r: _bad_number(r, -1e9, 1e9)},
}


def rng_inj(rng):
    return rng.choice(INJECTIONS)


def fuzzed_bodies(rng, per_endpoint: int) -> list[tuple[str, bytes, str]]:
    out = []
    for endpoint, fields in FIELD_FUZZ.items():
        for _ in range(per_endpoint):
            body = dict(VALID[endpoint])
            names = rng.sample(sorted(fields), rng.randrange(1, len(fields) + 1))
            for name in names:
                body[name] = fields[name](rng)
            if rng.random() < 0.3:
                body = [VALID[endpoint], body]  # a batch with one bad item is refused whole
            out.append((endpoint, json.dumps(body).encode(), f"fuzzed {names}"))
    return out


def test_over_1000_malformed_payloads_get_4xx_and_store_nothing(stack):
    cases = malformed_bodies(stack.cfg.gateway.max_body_bytes)
    assert len(cases) >= 1000
    failures = []
    with httpx.Client(base_url=stack.cfg.gateway_url, headers={**stack.ingest_headers,
                      "Content-Type": "application/json"}, timeout=30) as c:
        for endpoint, body, why in cases:
            r = c.post(f"/v1/{endpoint}", content=body)
            message = r.json().get("error", "") if r.headers.get("content-type", "").startswith("application/json") else ""
            if not (400 <= r.status_code < 500) or not message:
                failures.append((endpoint, why, r.status_code, r.text[:200]))
    assert not failures, f"{len(failures)} malformed payloads were not refused with a 4xx message: {failures[:5]}"
    counts = stack.drain()
    assert counts == {"turns": 0, "feedback": 0, "signals": 0, "dlq": 0}


def test_error_messages_name_field_and_problem(stack):
    with httpx.Client(base_url=stack.cfg.gateway_url, headers=stack.ingest_headers) as c:
        r = c.post("/v1/feedback", json={"turn_id": "t1", "rating": 9})
        assert r.status_code == 422 and r.json()["error"].startswith("rating:") and "5" in r.json()["error"]
        r = c.post("/v1/turns", json={**VALID["turns"], "messages": [{"role": "boss", "content": "x"}]})
        assert r.status_code == 422 and "messages.0.role" in r.json()["error"]
        r = c.post("/v1/signals", content=b"\xff")
        assert r.status_code == 400 and "UTF-8" in r.json()["error"]
        r = c.post("/v1/signals", content=b"x" * (stack.cfg.gateway.max_body_bytes + 1))
        assert r.status_code == 413 and "limit" in r.json()["error"]


def test_injection_text_in_free_text_is_stored_verbatim(stack):
    with httpx.Client(base_url=stack.cfg.gateway_url, headers=stack.ingest_headers) as c:
        for i, inj in enumerate(INJECTIONS):
            r = c.post("/v1/feedback", json={"turn_id": f"t{i}", "thumbs": -1, "comment": inj, "correction": inj})
            assert r.status_code == 202
    assert stack.drain()["feedback"] == len(INJECTIONS)
    items = httpx.get(stack.cfg.controller_url + "/admin/v1/feedback", params={"limit": 100},
                      headers=stack.admin_headers).json()["items"]
    assert sorted(i["comment"] for i in items) == sorted(INJECTIONS)
    assert sorted(i["correction"] for i in items) == sorted(INJECTIONS)
