"""Per-turn rewards: the definition (no evidence, no reward), latency, confidence, 'latest
wins', signal attribution, windows, the calibration report, and the SQL (bulk) and Python
(one turn) paths agreeing on random data."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import numpy as np
import pytest
from feedback_helpers import T0, EventLog, make_config, open_store

from kaizenlm.config import RewardsConfig
from kaizenlm.feedback import rewards
from kaizenlm.feedback.rewards import Window, combine, reward_frame, turn_features, turn_reward
from kaizenlm.ingest.events import SIGNAL_KINDS

W = RewardsConfig()


def fb(ts, event_id="e", **fields):
    return {"ts": ts, "event_id": event_id, **fields}


def sig(kind, ts=0.0, event_id="s"):
    return {"ts": ts, "event_id": event_id, "kind": kind}


@pytest.mark.parametrize(("feedback", "signals", "expected"), [
    ([], [], None),  # no evidence: no reward, not zero
    ([fb(1, thumbs=1)], [], 0.6),
    ([fb(1, thumbs=-1)], [], -0.6),
    ([fb(1, rating=5)], [], 0.6),
    ([fb(1, rating=3)], [], 0.0),
    ([fb(1, rating=1)], [], -0.6),
    ([fb(1, thumbs=1), fb(2, rating=5)], [], 1.0),  # 1.2, clipped
    ([fb(1, thumbs=-1)], [sig("regenerate")], -1.0),
    ([], [sig("copy"), sig("completed")], 0.6),
    ([], [sig("regenerate")] * 10, -1.0),  # capped at signal_cap, then clipped
    ([], [sig("copy")] * 10, 0.9),  # 3 counted
    ([fb(1, comment="meh")], [], None),  # a comment alone carries no score: still no reward
    ([fb(1, correction="It is 42.")], [], -0.6),
    ([], [sig("follow_up")], 0.0),
])
def test_reward_definition(feedback, signals, expected):
    got = turn_reward(feedback, signals, W)
    assert got is None if expected is None else got == pytest.approx(expected)


def test_latency_moves_a_reward_but_never_makes_one():
    assert turn_reward([], [], W, latency_ms=60_000) is None  # slow but silent: still no reward
    assert turn_reward([fb(1, thumbs=1)], [], W, latency_ms=1_000) == pytest.approx(0.6)  # under the target
    assert turn_reward([fb(1, thumbs=1)], [], W, latency_ms=4_500) == pytest.approx(0.6 - 0.2 * 0.5)  # halfway
    assert turn_reward([fb(1, thumbs=1)], [], W, latency_ms=60_000) == pytest.approx(0.4)  # capped at the weight
    assert turn_reward([fb(1, thumbs=1)], [], RewardsConfig(latency=0.0), latency_ms=60_000) == pytest.approx(0.6)


def test_confidence():
    def conf(**features):
        base = {name: float("nan") for name in ("thumbs", "rating")} | {"has_correction": 0}
        base |= {f"n_{k}": 0 for k in SIGNAL_KINDS}
        return float(rewards.confidence({**base, **features}, W)[0])

    assert conf() == 0.0
    assert conf(thumbs=1) == pytest.approx(0.8)
    assert conf(thumbs=1, rating=5) == pytest.approx(1 - 0.2 * 0.2)
    assert conf(n_copy=1) == pytest.approx(0.3)
    assert conf(n_copy=3) == pytest.approx(0.3)  # repeats of a kind add nothing
    assert conf(n_copy=1, n_completed=1) == pytest.approx(1 - 0.7 * 0.7)
    assert conf(thumbs=1, n_copy=1) > conf(thumbs=1) > conf(n_copy=1, n_completed=1)


def test_latest_value_wins_and_ties_break_by_event_id():
    assert turn_reward([fb(1, "a", thumbs=-1), fb(2, "b", thumbs=1)], [], W) == pytest.approx(0.6)
    assert turn_reward([fb(2, "a", thumbs=-1), fb(1, "b", thumbs=1)], [], W) == pytest.approx(-0.6)
    assert turn_reward([fb(1, "b", thumbs=-1), fb(1, "a", thumbs=1)], [], W) == pytest.approx(-0.6)
    # a later event without thumbs does not erase the earlier thumbs
    assert turn_reward([fb(1, "a", thumbs=1), fb(2, "b", comment="thanks")], [], W) == pytest.approx(0.6)


def test_weights_come_from_config():
    custom = RewardsConfig(copy=0.0, thumbs=1.0)
    assert turn_reward([], [sig("copy")], custom) == 0.0
    assert turn_reward([fb(1, thumbs=1)], [], custom) == 1.0


def test_combine_takes_columns_and_handles_missing_explicit():
    features = {name: [0, 0, 0] for name in rewards.FEATURES}
    features["thumbs"] = [float("nan"), 1, float("nan")]
    features["rating"] = [None, float("nan"), None]
    features["n_copy"] = [0, 0, 1]
    got = combine(features, W)
    assert np.isnan(got[0]) and got[1:].tolist() == pytest.approx([0.6, 0.3])


def test_bad_weights_are_rejected():
    from kaizenlm.config import ConfigError

    with pytest.raises(ConfigError, match="rewards.copy"):
        RewardsConfig(copy=5.0)
    with pytest.raises(ConfigError, match="rewards.signal_cap"):
        RewardsConfig(signal_cap=0)


def test_window_parsing_and_validation():
    assert rewards.as_datetime("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)
    assert rewards.as_datetime(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert rewards.as_datetime(datetime(2025, 1, 1)).tzinfo is not None
    with pytest.raises(ValueError, match="not a date"):
        rewards.as_datetime("last tuesday")
    with pytest.raises(ValueError, match="empty window"):
        Window(since="2025-02-01", until="2025-01-01")


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path / "home")


@pytest.fixture
def con(cfg):
    con = open_store(cfg)
    yield con
    con.close()


def test_sql_frame_matches_definition(con):
    log = EventLog()
    up = log.turn("How do I reset my password?", "Click 'Forgot password'.")
    log.feedback(up, thumbs=-1)
    log.feedback(up, thumbs=1)  # changed their mind
    down = log.turn("Where is my invoice?", "No idea.")
    log.feedback(down, rating=1)
    log.signal("regenerate", turn_id=down)
    corrected = log.turn("What is the refund window?", "7 days.")
    log.feedback(corrected, correction="It is 30 days.")
    silent = log.turn("Hello", "Hi!")
    log.write(con)
    frame = reward_frame(con, Window(), W).set_index("turn_id")
    assert frame.loc[up, "reward"] == pytest.approx(0.6)
    assert frame.loc[down, "reward"] == pytest.approx(-1.0)
    assert frame.loc[corrected, "reward"] == pytest.approx(-0.6)
    assert frame.loc[corrected, "correction"] == "It is 30 days."
    assert np.isnan(frame.loc[silent, "reward"]) and frame.loc[silent, "confidence"] == 0.0
    assert frame.loc[up, "confidence"] == pytest.approx(0.8)
    assert not frame.loc[silent, "has_explicit"] and frame.loc[up, "has_explicit"]
    assert frame.loc[up, "n_feedback"] == 2 and frame.loc[down, "n_signals"] == 1


def test_conversation_signals_count_for_the_latest_turn_before_them(con):
    log = EventLog()
    first = log.turn("Hi, my order is late", "Sorry! What is the order number?", conversation_id="c1", ts=T0 + 10)
    second = log.turn("It is 1234", "It ships tomorrow.", conversation_id="c1", ts=T0 + 20)
    log.signal("completed", conversation_id="c1", ts=T0 + 25)   # -> second
    log.signal("abandon", conversation_id="c1", ts=T0 + 15)     # -> first (second did not exist yet)
    log.signal("abandon", conversation_id="c1", ts=T0 + 5)      # before any turn: counts for none
    log.signal("copy", conversation_id="other", ts=T0 + 30)     # unknown conversation: ignored
    log.write(con)
    frame = reward_frame(con, Window(), W).set_index("turn_id")
    assert frame.loc[first, "n_abandon"] == 1 and frame.loc[first, "n_completed"] == 0
    assert frame.loc[second, "n_completed"] == 1 and frame.loc[second, "n_abandon"] == 0
    assert frame["n_signals"].sum() == 2


def test_window_and_as_of(con):
    log = EventLog()
    old = log.turn("old question", "old answer", ts=T0)
    new = log.turn("new question", "new answer", ts=T0 + 86400)
    log.feedback(new, thumbs=1, ts=T0 + 86401)
    log.write(con)
    cut = datetime.now(UTC)
    log.feedback(new, thumbs=-1, ts=T0 + 86402)  # ingested after the cut
    late = log.turn("late question", "late answer", ts=T0 + 86403)
    log.write(con)
    con.execute("UPDATE feedback SET ingested_at = ?::TIMESTAMPTZ + INTERVAL 1 HOUR WHERE ts > to_timestamp(?)",
                [cut, T0 + 86401.5])
    con.execute("UPDATE turns SET ingested_at = ?::TIMESTAMPTZ + INTERVAL 1 HOUR WHERE turn_id = ?", [cut, late])

    everything = reward_frame(con, Window(), W).set_index("turn_id")
    assert set(everything.index) == {old, new, late}
    assert everything.loc[new, "reward"] == pytest.approx(-0.6)

    frozen = reward_frame(con, Window(as_of=cut), W).set_index("turn_id")
    assert set(frozen.index) == {old, new}
    assert frozen.loc[new, "reward"] == pytest.approx(0.6)

    recent = reward_frame(con, Window(since=T0 + 3600, until=T0 + 86400 + 2), W)
    assert recent["turn_id"].tolist() == [new]


def test_a_turn_logged_twice_counts_once(con):
    log = EventLog()
    tid = log.turn("q", "a", turn_id="dup")
    log.turn("q", "a", turn_id="dup")  # same turn, new event_id (a client retry)
    log.feedback(tid, thumbs=1)
    log.write(con)
    frame = reward_frame(con, Window(), W)
    assert frame["turn_id"].tolist() == ["dup"]
    assert frame["reward"].tolist() == pytest.approx([0.6])


def test_sql_and_python_agree_on_random_data(con):
    rng = random.Random(7)
    log = EventLog()
    turns: dict[str, dict] = {}
    for c in range(40):
        t = T0 + c * 1000
        for k in range(rng.randint(1, 4)):
            t += rng.randint(1, 50)
            tid = log.turn(f"question {c}.{k}", f"answer {c}.{k}", conversation_id=f"c{c}", ts=t)
            turns[tid] = {"conversation": f"c{c}", "ts": t, "feedback": [], "signals": []}
    ids = sorted(turns)
    for _ in range(600):
        tid = rng.choice(ids)
        ts = turns[tid]["ts"] + rng.choice([1, 2, 2, 3, 40])  # repeated ts: ties break by event_id
        if rng.random() < 0.5:
            fields = rng.choice([{"thumbs": rng.choice([1, -1])}, {"rating": rng.randint(1, 5)},
                                 {"comment": "hm"}, {"correction": f"fix {rng.random():.3f}"},
                                 {"thumbs": 1, "rating": rng.randint(1, 5)}])
            event_id = f"f{rng.randint(0, 10**9):010d}"
            log.feedback(tid, ts=ts, event_id=event_id, **fields)
            turns[tid]["feedback"].append({"ts": ts, "event_id": event_id, **fields})
        elif rng.random() < 0.6:
            kind = rng.choice(SIGNAL_KINDS)
            log.signal(kind, turn_id=tid, ts=ts)
            turns[tid]["signals"].append({"kind": kind})
        else:  # a conversation-level signal: the reference attribution is done here, in Python
            kind = rng.choice(SIGNAL_KINDS)
            conv = turns[tid]["conversation"]
            log.signal(kind, conversation_id=conv, ts=ts)
            before = [(v["ts"], k) for k, v in turns.items() if v["conversation"] == conv and v["ts"] <= ts]
            if before:
                turns[max(before)[1]]["signals"].append({"kind": kind})
    log.write(con)
    frame = reward_frame(con, Window(), W).set_index("turn_id")
    assert sorted(frame.index) == ids
    for tid in ids:
        expected = turn_features(turns[tid]["feedback"], turns[tid]["signals"])
        row = frame.loc[tid]
        for name in rewards.FEATURES + ("n_feedback", "n_signals"):
            want, got = expected[name], row[name]
            assert (math.isnan(want) and math.isnan(got)) or want == got, (tid, name, want, got)
        assert (row["correction"] if isinstance(row["correction"], str) else None) == expected["correction"]
        expected_reward = turn_reward(turns[tid]["feedback"], turns[tid]["signals"], W)
        if expected_reward is None:
            assert np.isnan(row["reward"])
        else:
            assert row["reward"] == pytest.approx(expected_reward)


def test_summary(con):
    log = EventLog()
    a = log.turn("q1", "a1")
    log.feedback(a, thumbs=1)
    b = log.turn("q2", "a2")
    log.signal("regenerate", turn_id=b)
    log.turn("q3", "a3")
    log.write(con)
    s = rewards.summarize(reward_frame(con, Window(), W))
    assert (s["turns"], s["with_feedback"], s["with_explicit"], s["positive"], s["negative"]) == (3, 2, 1, 1, 1)
    assert (s["with_reward"], s["without_reward"]) == (2, 1)
    assert s["mean_reward"] == pytest.approx(0.1)
    assert s["mean_confidence"] == pytest.approx((0.8 + 0.3) / 2)
    assert sum(b["turns"] for b in s["histogram"]) == 2
    empty = rewards.summarize(reward_frame(con, Window(since="2000-01-01", until="2000-01-02"), W))
    assert empty["turns"] == 0 and empty["mean_reward"] is None


def test_calibration_compares_implicit_reward_with_ratings(con):
    log = EventLog()
    agree = []
    for i in range(6):  # liked and copied; disliked and regenerated: implicit agrees with explicit
        a = log.turn(f"good question {i}", f"good answer {i}")
        log.feedback(a, thumbs=1)
        log.signal("copy", turn_id=a)
        b = log.turn(f"bad question {i}", f"bad answer {i}")
        log.feedback(b, rating=1)
        log.signal("regenerate", turn_id=b)
        agree += [a, b]
    liar = log.turn("odd question", "odd answer")  # copied, yet rated down: disagrees
    log.feedback(liar, thumbs=-1)
    log.signal("copy", turn_id=liar)
    only_explicit = log.turn("q", "a")
    log.feedback(only_explicit, thumbs=1)
    only_implicit = log.turn("q2", "a2")
    log.signal("completed", turn_id=only_implicit)
    neutral = log.turn("q3", "a3")  # rating 3: no explicit label
    log.feedback(neutral, rating=3)
    log.signal("copy", turn_id=neutral)
    log.write(con)
    frame = reward_frame(con, Window(), W)
    assert frame.set_index("turn_id").loc[liar, "implicit_reward"] == pytest.approx(0.3)
    report = rewards.calibration(frame, W)
    assert report["turns_with_both"] == 13
    assert (report["explicit_positive"], report["explicit_negative"]) == (6, 7)
    assert report["agreement"] == pytest.approx(12 / 13, abs=1e-4)
    # ranks: 6 positives at 0.3 beat 6 negatives at -0.4 and tie the liar at 0.3
    assert report["auc"] == pytest.approx((6 * 6 + 6 * 0.5) / 42, abs=1e-4)
    assert report["implicit_only_turns"] == 1
    assert rewards.calibration(frame.iloc[0:0], W)["auc"] is None
