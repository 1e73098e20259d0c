"""Event schemas: what is accepted, what is rejected and how the error reads."""

import pytest

from kaizenlm.feedback import collector
from kaizenlm.ingest.events import make_envelope, parse_envelope

TURN = {"conversation_id": "c1", "user_id": "u1", "messages": [{"role": "user", "content": "hi"}],
        "response": "hello", "latency_ms": 12}


def test_turn_envelope_roundtrip():
    env = make_envelope("turn", TURN)
    parsed, payload = parse_envelope(env)
    assert parsed.schema_version == 1 and parsed.type == "turn"
    assert payload.response == "hello" and payload.latency_ms == 12.0 and len(payload.turn_id) == 32


@pytest.mark.parametrize("body, fragment", [
    ({"turn_id": "t", "thumbs": 2}, "thumbs"),
    ({"turn_id": "t", "rating": 6}, "rating"),
    ({"turn_id": "t", "rating": 0}, "rating"),
    ({"turn_id": "t"}, "at least one of thumbs, rating, comment, correction"),
    ({"turn_id": "t", "rating": "5"}, "rating"),
    ({"turn_id": "t", "thumbs": True}, "thumbs"),
    ({"turn_id": "t", "rating": 4, "extra": 1}, "extra"),
    ({"turn_id": "x" * 200, "rating": 4}, "turn_id"),
    ({"turn_id": "t; DROP TABLE feedback", "rating": 4}, "turn_id"),
    ({"turn_id": "t", "comment": "a" * 5000}, "comment"),
])
def test_feedback_rejections_name_the_field(body, fragment):
    with pytest.raises(collector.BadRequest) as e:
        collector.envelopes_from_body("feedback", body, 1000)
    assert e.value.status == 422 and fragment in e.value.message


def test_signal_kinds_and_target():
    ok = collector.envelopes_from_body("signal", {"turn_id": "t1", "kind": "copy"}, 10)
    assert ok[0]["payload"]["kind"] == "copy"
    for bad, fragment in [({"turn_id": "t1", "kind": "like"}, "kind"), ({"kind": "copy"}, "turn_id or conversation_id")]:
        with pytest.raises(collector.BadRequest) as e:
            collector.envelopes_from_body("signal", bad, 10)
        assert fragment in e.value.message


def test_batch_is_all_or_nothing_and_names_items():
    body = [{"turn_id": "a", "rating": 5}, {"turn_id": "b", "rating": 9}, {"turn_id": "c", "thumbs": 1}]
    with pytest.raises(collector.BadRequest) as e:
        collector.envelopes_from_body("feedback", body, 1000)
    assert "1 of 3 events invalid" in e.value.message and "[1].rating" in e.value.message


def test_batch_limit_and_client_event_id():
    with pytest.raises(collector.BadRequest) as e:
        collector.envelopes_from_body("feedback", [{"turn_id": "a", "rating": 5}] * 3, 2)
    assert e.value.status == 413
    envs = collector.envelopes_from_body("feedback", {"turn_id": "a", "rating": 5, "event_id": "my-id-1", "ts": 1.7e9}, 2)
    assert envs[0]["event_id"] == "my-id-1" and envs[0]["ts"] == 1.7e9


def test_nul_characters_rejected():
    with pytest.raises(collector.BadRequest):
        collector.envelopes_from_body("turn", {**TURN, "response": "a\x00b"}, 10)
