"""DPO pairs mined from each of the four sources (correction, regenerate, ab_variant, rating),
margins, dedup across sources, caps and decontamination."""

from __future__ import annotations

import pytest
from feedback_helpers import EventLog, make_config, open_store

from kaizenlm.datasets import curation, pairs
from kaizenlm.datasets.curation import Funnel
from kaizenlm.datasets.text import digest
from kaizenlm.feedback.rewards import Window

GOOD = "Open Settings, then Billing, and choose Change plan. The new price applies from the next invoice."
GOOD2 = "Go to Billing in Settings and press Change plan; you pay the new price from your next invoice on."
BAD = "I am not sure, maybe ask someone else about it."


@pytest.fixture
def build(tmp_path):
    logs: list[EventLog] = []  # kept alive, so that no two logs share an identity

    def run(log: EventLog, holdout=(), **curation_cfg):
        # one store per event log: calling again with the same log re-curates the same data
        if not any(log is seen for seen in logs):
            logs.append(log)
        home = next(i for i, seen in enumerate(logs) if seen is log)
        cfg = make_config(tmp_path / f"home{home}", **curation_cfg)
        con = open_store(cfg)
        log.write(con)
        funnel = Funnel()
        frame = curation.load_candidates(con, Window(), cfg.rewards)
        frame = curation.prepare(frame, cfg.curation, list(holdout), funnel)
        out = pairs.build_pairs(frame, cfg.curation, funnel)
        con.close()
        return out, funnel

    return run


def test_correction_pair(build):
    log = EventLog()
    t = log.turn("What is the refund window?", "Seven days after purchase.")
    log.feedback(t, correction="Thirty days after purchase, for every plan.")
    out, funnel = build(log)
    assert len(out) == 1
    row = out.iloc[0]
    assert (row.source, row.chosen, row.rejected) == ("correction", "Thirty days after purchase, for every plan.",
                                                      "Seven days after purchase.")
    assert row.chosen_turn_id == row.rejected_turn_id == t
    assert row.chosen_reward == 1.0 and row.rejected_reward == pytest.approx(-0.6)
    assert row.margin == pytest.approx(1.6)
    assert row.prompt == "What is the refund window?"
    assert funnel.notes["pair_sources"] == {"correction": 1, "regenerate": 0, "ab_variant": 0, "rating": 0}
    out, _ = build(log, include_corrections=False)
    assert out.empty


def test_regenerate_pair_in_one_conversation(build):
    log = EventLog()
    first = log.turn("How do I change my plan?", BAD, conversation_id="c1")
    log.signal("regenerate", turn_id=first)
    second = log.turn("How do I change my plan?", GOOD, conversation_id="c1")
    log.feedback(second, thumbs=1)
    out, _ = build(log)
    assert out[["source", "chosen_turn_id", "rejected_turn_id"]].values.tolist() == [["regenerate", second, first]]


def test_regenerate_pairs_come_from_behaviour_alone(build):
    log = EventLog()
    # a chain: two answers regenerated away, the third kept; nobody rated anything
    chain = [log.turn("Which plan has SSO?", text, conversation_id="c1") for text in (BAD, GOOD2, GOOD)]
    log.signal("regenerate", turn_id=chain[0])
    log.signal("regenerate", turn_id=chain[1])
    # regenerated, then left: nothing was kept, so no pair
    gone = [log.turn("Where is my invoice?", BAD, conversation_id="c2"),
            log.turn("Where is my invoice?", GOOD2, conversation_id="c2")]
    for t in gone:
        log.signal("regenerate", turn_id=t)
    # a second answer without a regenerate (a plain repeat question) is not a regenerate pair
    log.turn("Can I pay yearly?", BAD, conversation_id="c3")
    log.turn("Can I pay yearly?", GOOD, conversation_id="c3")
    out, funnel = build(log)
    got = sorted(out[["source", "chosen_turn_id", "rejected_turn_id"]].values.tolist())
    assert got == sorted([["regenerate", chain[2], chain[0]], ["regenerate", chain[2], chain[1]]])
    # the kept answer counts as 0 and a lone regenerate as -0.4: exactly the default margin
    assert out["margin"].tolist() == pytest.approx([0.4, 0.4])
    out, funnel = build(log, pair_margin=0.5)
    assert out.empty
    margin = {s["step"]: s for s in funnel.steps["dpo"]}["margin"]
    assert margin["dropped"] == {"below_margin": 2} and margin["examples"][0]["reason"] == "below_margin"


def test_ab_variant_pairs_cross_the_variants(build):
    log = EventLog()
    ids = {}
    for name, variant, response, signals in [
            ("c_good", "champion", GOOD, ["copy", "completed"]), ("c_bad", "champion", BAD, ["abandon", "edit"]),
            ("x_good", "challenger", GOOD2, ["copy"]), ("x_bad", "challenger", "No idea, sorry about that one.", ["edit"])]:
        ids[name] = log.turn("How do I change my plan?", response, conversation_id=f"c-{name}", user_id=name,
                             experiment_id="exp-1", variant=variant)
        for kind in signals:
            log.signal(kind, turn_id=ids[name])
    # the same question outside the experiment is not an A/B pair
    outside = log.turn("How do I change my plan?", "Press the big red button twice, then wait a week.")
    log.signal("abandon", turn_id=outside)
    out, funnel = build(log)
    assert funnel.notes["pair_sources"]["ab_variant"] == 2 and funnel.notes["pair_sources"]["rating"] == 0
    got = sorted(out[["source", "chosen_turn_id", "rejected_turn_id"]].values.tolist())
    # best (champion 0.6) with the worst of the other variant, then the rest across variants
    assert got == sorted([["ab_variant", ids["c_good"], ids["x_bad"]], ["ab_variant", ids["x_good"], ids["c_bad"]]])


def test_a_pair_found_by_two_sources_is_kept_once_under_the_most_specific(build):
    log = EventLog()
    first = log.turn("How do I change my plan?", BAD, conversation_id="c1")
    log.feedback(first, thumbs=-1)
    log.signal("regenerate", turn_id=first)
    second = log.turn("How do I change my plan?", GOOD, conversation_id="c1")
    log.feedback(second, thumbs=1)  # both rated: a rating pair too
    out, funnel = build(log)
    assert funnel.notes["pair_sources"] == {"correction": 0, "regenerate": 1, "ab_variant": 0, "rating": 1}
    assert out[["source", "chosen_turn_id", "rejected_turn_id"]].values.tolist() == [["regenerate", second, first]]
    assert {s["step"]: s for s in funnel.steps["dpo"]}["dedup"]["dropped"] == {"same_pair": 1}


def test_rating_pairs_across_conversations_pair_best_with_worst(build):
    log = EventLog()
    ids = {}
    for name, response, fb in [("best", GOOD, {"thumbs": 1, "rating": 5}), ("good", GOOD2, {"thumbs": 1}),
                               ("meh", "Check the billing page, it might be there somewhere.", {"rating": 3}),
                               ("bad", BAD, {"thumbs": -1}), ("worst", "No.", {"thumbs": -1, "rating": 1})]:
        ids[name] = log.turn("How do I change my plan?", response, conversation_id=f"c-{name}", user_id=name)
        log.feedback(ids[name], **fb)
    out, _ = build(log)
    got = sorted(zip(out["chosen_turn_id"], out["rejected_turn_id"], strict=True))
    assert got == sorted([(ids["best"], ids["worst"]), (ids["good"], ids["bad"])])
    assert set(out["source"]) == {"rating"}
    assert (out["margin"] >= 0.4).all()
    # the middle answer is not used; every answer at most once
    used = list(out["chosen_turn_id"]) + list(out["rejected_turn_id"])
    assert ids["meh"] not in used and len(used) == len(set(used))


def test_margin_evidence_and_chosen_quality(build):
    log = EventLog()
    a = log.turn("Can I export my data?", GOOD)
    log.feedback(a, thumbs=1)
    b = log.turn("Can I export my data?", GOOD2)
    log.signal("copy", turn_id=b)  # implicit only: not a rating
    c = log.turn("Can I export my data?", BAD)  # no feedback at all: no reward
    out, _ = build(log)
    assert out.empty

    log = EventLog()
    a = log.turn("Can I export my data?", GOOD)
    log.feedback(a, rating=4)
    b = log.turn("Can I export my data?", GOOD2)
    log.feedback(b, rating=3)  # 0.3 vs 0.0: below the margin
    out, funnel = build(log)
    assert out.empty and {s["step"]: s for s in funnel.steps["dpo"]}["margin"]["dropped"] == {"below_margin": 1}

    log = EventLog()
    looping = log.turn("Can I export my data?", "Yes you can export. " * 20)
    log.feedback(looping, thumbs=1, rating=5)  # liked, but degenerate: never chosen
    fine = log.turn("Can I export my data?", GOOD)
    log.feedback(fine, thumbs=1)
    bad = log.turn("Can I export my data?", BAD)
    log.feedback(bad, thumbs=-1)
    out, _ = build(log)
    assert out[["chosen_turn_id", "rejected_turn_id"]].values.tolist() == [[fine, bad]]

    log = EventLog()
    good = log.turn("Can I export my data?", GOOD)
    log.feedback(good, thumbs=1)
    loop = log.turn("Can I export my data?", "Yes you can export. " * 20)
    log.feedback(loop, thumbs=-1)  # a degenerate rejected answer is exactly what DPO should push down
    out, _ = build(log)
    assert out[["chosen_turn_id", "rejected_turn_id"]].values.tolist() == [[good, loop]]
    assert c not in out.values


def test_min_chosen_reward(build):
    log = EventLog()
    meh = log.turn("Can I export my data?", GOOD)
    log.feedback(meh, rating=3)  # rated, reward 0.0
    bad = log.turn("Can I export my data?", BAD)
    log.feedback(bad, thumbs=-1)
    out, _ = build(log)
    assert len(out) == 1
    out, funnel = build(log, pair_min_chosen_reward=0.1)
    assert out.empty
    assert {s["step"]: s for s in funnel.steps["dpo"]}["margin"]["dropped"] == {"chosen_reward_too_low": 1}


def test_same_answer_twice_is_not_a_pair_and_caps_apply(build):
    log = EventLog()
    x = log.turn("Can I export my data?", GOOD)
    log.feedback(x, thumbs=1)
    y = log.turn("Can I export my data?", GOOD + "  ")
    log.feedback(y, thumbs=-1)
    out, _ = build(log)
    assert out.empty

    log = EventLog()
    for i in range(6):  # six corrected answers to the same question: one cluster
        t = log.turn("What is the refund window?", f"Wrong answer number {i}.", conversation_id=f"c{i}")
        log.feedback(t, correction=f"Thirty days after purchase (version {i}).")
    out, funnel = build(log, max_pairs_per_prompt=4)
    assert len(out) == 4
    step = {s["step"]: s for s in funnel.steps["dpo"]}["per_prompt_cap"]
    assert step["dropped"] == {"cluster_over_cap": 2}


def test_holdout_pairs_are_dropped(build):
    log = EventLog()
    t = log.turn("What is the refund window for annual plans?", "Seven days.")
    log.feedback(t, correction="Thirty days from the purchase date.")
    out, funnel = build(log, holdout=["What is the refund window for annual plans?"])
    assert out.empty
    assert {s["step"]: s for s in funnel.steps["dpo"]}["decontaminate"]["dropped"] == {"matches_holdout": 1}


def test_pair_ids_are_stable(build):
    log = EventLog()
    t = log.turn("What is the refund window?", "Seven days after purchase.", turn_id="fixed")
    log.feedback(t, correction="Thirty days after purchase, for every plan.")
    first, _ = build(log)
    assert first["pair_id"].tolist() == [digest("correction", "fixed", "fixed")]
