"""Review labels feeding the loop, on a temporary DuckDB file: the gate (no reviewed rows while
reviewers disagree, and the build says why), reviewed SFT rows ranked above raw corrections,
rejected corrections and answers dropped, blind comparisons as DPO pairs (held-out questions
excluded), the manifest's review lineage with a deterministic content hash, blind pairs queued
from a retrain's evaluation with versions hidden, the human win rate on the candidate, and
the weekly sweep as a part of the scheduler's weekly tier."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from feedback_helpers import T0, EventLog, make_config, open_store

from kaizenlm.annotate import labels, queue, training, weekly
from kaizenlm.datasets import service, snapshots
from kaizenlm.datasets.reviewed import BLIND_REVIEW, REVIEWED, ReviewedRows
from kaizenlm.feedback.rewards import Window
from kaizenlm.jobs import scheduler
from kaizenlm.registry import versions

LONG = " The change applies from the next invoice and you can undo it at any time in the same place."
ANSWER = "Open Settings, then Billing, and choose Change plan." + LONG
WRONG = "Plans cannot be changed after the first month, so please write to our sales team." + LONG
FIX = "You can change it any time: open Settings, then Billing, and choose Change plan." + LONG
GOLD = "Go to Settings, then Billing, then Change plan; the new price starts with the next invoice." + LONG
BAD_FIX = "Just delete your account and sign up again with the plan you want to have from now on." + LONG


@pytest.fixture
def world(tmp_path):
    cfg = make_config(tmp_path / "home", window_days=0, eval_fraction=0.0)
    con = open_store(cfg)
    log = EventLog()
    turns = {
        # a user's correction that reviewers accept
        "fixed": log.turn("How do I change my plan?", WRONG, user_id="u1", conversation_id="c1"),
        # a well-rated answer reviewers edit into a gold answer
        "edited": log.turn("Where do I switch plans in the app?", ANSWER, user_id="u2", conversation_id="c2"),
        # a well-rated answer reviewers reject
        "rejected_answer": log.turn("Can I pay for my plan yearly instead of monthly?", ANSWER, user_id="u3",
                                    conversation_id="c3"),
        # a correction reviewers reject
        "rejected_fix": log.turn("How do I upgrade to the team plan today?", ANSWER, user_id="u4",
                                 conversation_id="c4"),
        # well rated, not reviewed: stays a plain feedback row
        "plain": log.turn("What does the team plan cost per seat each month?",
                          "The team plan costs twelve dollars per seat each month, billed monthly." + LONG,
                          user_id="u5", conversation_id="c5"),
    }
    log.feedback(turns["fixed"], thumbs=-1, correction=FIX, user_id="u1")
    for key in ("edited", "rejected_answer", "plain"):
        log.feedback(turns[key], thumbs=1, user_id="u2")
    log.feedback(turns["rejected_fix"], thumbs=-1, correction=BAD_FIX, user_id="u4")
    log.write(con)
    yield {"cfg": cfg, "con": con, "turns": turns, "log": log}
    con.close()


def queue_reviews(con, turns) -> dict[str, str]:
    """The world's turns as review items (and one blind pair), assigned to alice and bob."""
    rows = {r["turn_id"]: r for r in con.execute(
        "SELECT turn_id, prompt, response, user_id FROM turns").fetchall() for r in [dict(zip(
            ("turn_id", "prompt", "answer", "user_id"), r, strict=True))]}
    ids = {}
    for key, kind, correction in (("fixed", "correction", FIX), ("rejected_fix", "correction", BAD_FIX),
                                  ("edited", "sample", None), ("rejected_answer", "sample", None)):
        row = {**rows[turns[key]], "correction": correction}
        ids[key] = queue.enqueue(con, kind, [row], now=T0_DT)["item_ids"][0]
    ids["pair"] = queue.enqueue(con, "blind_pair", [{
        "prompt": "Is there a discount for non-profit organisations?",
        "candidates": [{"version": "cand", "answer": "Yes: non-profits get 30% off every plan, ask support."},
                       {"version": "champ", "answer": "I am not sure about that."}],
        "source": {"candidate": "cand", "champion": "champ"}}], now=T0_DT)["item_ids"][0]
    ids["exam_pair"] = queue.enqueue(con, "blind_pair", [{
        "prompt": "What is the refund window for annual plans?",
        "candidates": [{"version": "cand", "answer": "Thirty days from the date you paid for the plan."},
                       {"version": "champ", "answer": "Refunds are never possible for any plan at all."}]}],
        now=T0_DT)["item_ids"][0]
    queue.assign(con, ["alice", "bob"], overlap=1.0)
    return ids


T0_DT = datetime.fromtimestamp(T0, UTC)
VERDICTS = {"fixed": ("accept", "correct", None), "edited": ("edit", "incomplete", GOLD),
            "rejected_answer": ("reject", "wrong", None), "rejected_fix": ("reject", "wrong", None)}


def label_all(con, ids, bob_agrees: bool = True) -> None:
    for key, (verdict, label, gold) in VERDICTS.items():
        labels.record_label(con, ids[key], "alice", verdict, label=label, gold_answer=gold)
        bob = (verdict, label, gold) if bob_agrees else ("accept", "correct", None) if verdict != "accept" \
            else ("reject", "wrong", None)
        labels.record_label(con, ids[key], "bob", bob[0], label=bob[1], gold_answer=bob[2])
    pair = queue.get_item(con, ids["pair"])
    good = "a" if pair["version_a"] == "cand" else "b"  # the candidate's answer is the better one
    for who in ("alice", "bob"):
        labels.record_label(con, ids["pair"], who, good)
        exam = queue.get_item(con, ids["exam_pair"])
        labels.record_label(con, ids["exam_pair"], who, "a" if exam["version_a"] == "cand" else "b")


def build(con, cfg, reviews, holdout=()):
    return snapshots.build_snapshot(con, cfg, Window(), reviews=reviews, holdout=list(holdout))


def sft_rows(snap) -> dict[str, dict]:
    tables = snapshots.open_snapshot(snap.path)
    return {r["turn_id"]: r for r in tables["sft_train"].to_pylist() if r["source"] != "replay"}


def test_reviewed_rows_feed_the_build_only_while_reviewers_agree(world):
    con, cfg, turns = world["con"], world["cfg"], world["turns"]
    plain = build(con, cfg, None)
    assert plain.manifest["reviews"] is None
    ids = queue_reviews(con, turns)

    # reviewers disagree on every answer: the gate stays closed and the build says why
    label_all(con, ids, bob_agrees=False)
    closed = training.reviewed_rows(con, cfg)
    assert closed.empty and not closed.gate["open"] and "below annotate.min_kappa" in closed.gate["reason"]
    snap = build(con, cfg, closed)
    assert snap.snapshot_id == plain.snapshot_id  # nothing reviewed entered: the same tables, the same hash
    assert snap.reused and snap.reviews["gate_open"] is False and snap.reviews["used"] == {"sft": 0, "pairs": 0}
    built = service.build(con, cfg, all_data=True)  # `kaizen dataset build`: the reviews' provider, and why not
    assert built["reviews"]["gate_open"] is False and built["reviews"]["labelled_items"] == 6
    assert any(w.startswith("reviewed labels not used: agreement is below annotate.min_kappa")
               for w in built["warnings"])

    # they agree (bob's later labels replace his earlier ones): Fleiss' kappa 1.0 opens the gate
    label_all(con, ids, bob_agrees=True)
    reviews = training.reviewed_rows(con, cfg)
    assert reviews.gate["open"] and reviews.gate["fleiss_kappa"] == 1.0
    assert {r["turn_id"]: r["target"] for r in reviews.sft} == {turns["fixed"]: FIX, turns["edited"]: GOLD}
    assert {(r["turn_id"], r["what"]) for r in reviews.rejected} == {
        (turns["rejected_answer"], "answer"), (turns["rejected_fix"], "correction")}
    assert {p["item_id"] for p in reviews.pairs} == {ids["pair"], ids["exam_pair"]}
    assert len(reviews.labels) == 12  # 2 reviewers x (4 answers + 2 pairs), the latest label of each

    exam = ["What is the refund window for annual plans?"]  # a held-out evaluation question
    snap = build(con, cfg, reviews, holdout=exam)
    rows = sft_rows(snap)
    assert rows[turns["fixed"]]["source"] == REVIEWED and rows[turns["fixed"]]["response"] == FIX
    assert rows[turns["edited"]]["source"] == REVIEWED and rows[turns["edited"]]["response"] == GOLD
    assert rows[turns["plain"]]["source"] == "feedback"
    assert turns["rejected_answer"] not in rows and turns["rejected_fix"] not in rows
    dpo = snapshots.open_snapshot(snap.path)["dpo_train"].to_pylist()
    assert not [p for p in dpo if p["chosen"] == BAD_FIX]  # a rejected correction makes no pair either
    blind = [p for p in dpo if p["source"] == BLIND_REVIEW]
    assert [(p["chosen"], p["rejected"], p["model_version"]) for p in blind] == [
        ("Yes: non-profits get 30% off every plan, ask support.", "I am not sure about that.", "cand")]
    assert snap.manifest["pair_sources"][BLIND_REVIEW] == 1
    steps = {s["step"]: s for s in snap.manifest["curation"]["steps"]["dpo"]}
    assert steps[BLIND_REVIEW]["dropped"] == {"matches_holdout": 1}  # the exam question's pair stays out
    sft_steps = {s["step"]: s for s in snap.manifest["curation"]["steps"]["sft"]}
    assert sft_steps["quality"]["dropped"]["rejected_by_reviewer"] == 2
    lineage = snap.manifest["reviews"]
    assert lineage["gate_open"] and lineage["fleiss_kappa"] == 1.0 and lineage["min_kappa"] == 0.8
    assert lineage["used"] == {"sft": 2, "pairs": 1}
    assert lineage["review_items"] == sorted([ids["fixed"], ids["edited"], ids["pair"]])
    assert lineage["rejected_items"] == sorted([ids["rejected_answer"], ids["rejected_fix"]])
    assert lineage["labels"] == sorted(reviews.labels)
    # the same inputs give the same snapshot
    again = build(con, cfg, training.reviewed_rows(con, cfg), holdout=exam)
    assert again.snapshot_id == snap.snapshot_id and again.reused


def test_reviewed_rows_rank_above_raw_corrections(tmp_path):
    cfg = make_config(tmp_path / "home", window_days=0, eval_fraction=0.0, max_per_prompt=1)
    con = open_store(cfg)
    log = EventLog()
    q = "How do I change my plan?"
    corrected = log.turn(q, WRONG, user_id="u1", conversation_id="c1")
    log.feedback(corrected, correction=FIX, user_id="u1")
    reviewed = log.turn(q, ANSWER, user_id="u2", conversation_id="c2")  # no feedback: no target on its own
    log.write(con)
    without = sft_rows(build(con, cfg, None))
    assert list(without) == [corrected] and without[corrected]["source"] == "correction"
    rows = ReviewedRows(sft=[{"item_id": "rv-1", "turn_id": reviewed, "kind": "sample", "target": ANSWER}],
                        gate={"open": True, "reason": "test", "fleiss_kappa": 0.9, "min_kappa": 0.8})
    snap = build(con, cfg, rows)
    assert list(sft_rows(snap)) == [reviewed] and sft_rows(snap)[reviewed]["source"] == REVIEWED
    near = {s["step"]: s for s in snap.manifest["curation"]["steps"]["sft"]}["near_dedup"]
    assert near["dropped"] == {"near_duplicate": 1}
    con.close()


def test_reviewed_rows_check_their_fields():
    with pytest.raises(ValueError, match=r"reviews.sft\[0\].target"):
        ReviewedRows(sft=[{"item_id": "rv-1", "turn_id": "t1", "target": " "}])
    with pytest.raises(ValueError, match=r"reviews.rejected\[0\].what"):
        ReviewedRows(rejected=[{"turn_id": "t1", "what": "everything"}])
    with pytest.raises(ValueError, match=r"reviews.pairs\[0\].chosen"):
        ReviewedRows(pairs=[{"item_id": "rv-1", "prompt": "q", "rejected": "r"}])


def test_consensus_majority_and_ties(world):
    con, turns = world["con"], world["turns"]
    ids = queue_reviews(con, turns)
    labels.record_label(con, ids["fixed"], "alice", "accept", label="correct")
    labels.record_label(con, ids["fixed"], "bob", "reject", label="wrong")
    labels.record_label(con, ids["edited"], "alice", "accept", label="correct")
    labels.record_label(con, ids["edited"], "bob", "reject", label="wrong")
    labels.record_label(con, ids["edited"], "carol", "reject", label="wrong")
    found = {d["item_id"]: d for d in training.decisions(con)}
    assert found[ids["fixed"]]["verdict"] is None and found[ids["fixed"]]["tied"]
    assert found[ids["edited"]]["verdict"] == "reject" and found[ids["edited"]]["reviewers"] == 3
    assert len(found[ids["edited"]]["seqs"]) == 2


def test_blind_pairs_from_a_retrain_and_the_human_win_rate(world, tmp_path):
    con, cfg = world["con"], world["cfg"]
    cfg.annotate.reviewers, cfg.annotate.blind_pairs = ["alice", "bob"], 3
    art = tmp_path / "art"
    art.mkdir()
    (art / "w.bin").write_bytes(b"x")
    champ = versions.register_version(con, "adapter", art, cfg.home).version_id
    cand = versions.register_version(con, "adapter", art, cfg.home, parent_id=champ).version_id
    questions = [f"Question number {i} about plans?" for i in range(6)]
    evaluation = {"candidate": {"domain_score": 0.7, "answers": {q: f"new answer {i}" for i, q in enumerate(questions)}},
                  "champion": {"answers": {q: f"old answer {i}" for i, q in enumerate(questions)}}}
    evaluation["champion"]["answers"][questions[0]] = "new answer 0"  # answered alike: nothing to compare
    out = training.enqueue_blind_pairs(con, cfg, cand, champ, evaluation, now=T0_DT)
    assert out == {"candidate": cand, "champion": champ, "questions": 6, "not_answered_by_both": 0,
                   "answered_alike": 1, "not_picked": 2,
                   "queued": 3, "already_queued": 0, "assigned": 3}
    assert training.enqueue_blind_pairs(con, cfg, cand, champ, evaluation)["already_queued"] == 3
    items = queue.list_items(con, kind="blind_pair")
    assert len(items) == 3 and all("version_a" not in i and "source" not in i for i in items)
    metrics = versions.get_version(con, cand).metrics
    assert metrics["human_comparisons"] == 0 and metrics["human_win_rate"] is None

    # both reviewers prefer the candidate on two pairs and call the third a tie
    full = [queue.get_item(con, i["item_id"]) for i in sorted(items, key=lambda i: i["item_id"])]
    assert {i["version_a"] for i in full} | {i["version_b"] for i in full} == {cand, champ}
    for n, item in enumerate(full):
        verdict = "tie" if n == 2 else ("a" if item["version_a"] == cand else "b")
        for who in ("alice", "bob"):
            labels.record_label(con, item["item_id"], who, verdict)
    rates = training.human_win_rates(con)[cand]
    assert rates["human_win_rate"] == pytest.approx((1 + 1 + 0.5) / 3) and rates["human_comparisons"] == 3
    # the gate is closed (no schema labels on answers yet): the rate is not counted, and the note says why
    done = training.refresh_human_metrics(con, cfg)
    assert done[0]["human_win_rate"] is None and "no item has labels from 2 reviewers" in done[0]["human_win_rate_note"]
    ids = queue_reviews(con, world["turns"])
    label_all(con, ids)
    training.refresh_human_metrics(con, cfg)
    metrics = versions.get_version(con, cand).metrics
    assert metrics["human_win_rate"] == pytest.approx(2.5 / 3) and metrics["human_comparisons"] == 3
    assert metrics["human_win_rate_vs"] == champ


def test_blind_pairs_need_two_different_answers(world):
    con, cfg = world["con"], world["cfg"]
    out = training.enqueue_blind_pairs(con, cfg, "cand", "champ", {"candidate": {"answers": {"q?": "a"}},
                                                                    "champion": {}})
    assert out["queued"] == 0 and out["questions"] == 0 and out["not_answered_by_both"] == 1
    empty = {"candidate": {"answers": {"q?": " "}}, "champion": {"answers": {"q?": "b"}}}  # a model that said nothing
    assert training.enqueue_blind_pairs(con, cfg, "cand", "champ", empty)["not_answered_by_both"] == 1
    cfg.annotate.blind_pairs = 0
    out = training.enqueue_blind_pairs(con, cfg, "cand", "champ", {"candidate": {"answers": {"q?": "a"}},
                                                                    "champion": {"answers": {"q?": "b"}}})
    assert out["queued"] == 0 and out["not_picked"] == 1


def test_weekly_sweep_queues_the_week_and_assigns(world):
    con, cfg, turns = world["con"], world["cfg"], world["turns"]
    cfg.annotate.reviewers, cfg.annotate.sample_size = ["alice", "bob"], 3
    until = T0_DT + timedelta(days=2)
    out = weekly.sweep(con, cfg, until)
    assert out["added"]["correction"] == 2 and out["added"]["sample"] == 3
    assert out["since"] == (until - timedelta(days=7)).isoformat() and out["batch"] == f"weekly-{until.date()}"
    assert out["assigned"]["items"] == sum(out["added"].values())
    assert {i["turn_id"] for i in queue.list_items(con, kind="correction")} == {turns["fixed"], turns["rejected_fix"]}
    again = weekly.sweep(con, cfg, until)
    assert sum(again["added"].values()) == 0 and again["already_queued"]["correction"] == 2
    empty = weekly.sweep(con, cfg, T0_DT - timedelta(days=30))  # a week with no traffic
    assert sum(empty["added"].values()) == 0


def knowledge_fails(ctx):
    raise RuntimeError("the knowledge job failed")


def test_the_weekly_tier_runs_the_sweep_even_when_the_knowledge_refresh_fails(world):
    import logging

    con, cfg = world["con"], world["cfg"]
    assert scheduler.DEFAULT_TIERS["weekly"][1] == "kaizenlm.annotate.weekly:run_weekly"
    tier = scheduler.chain(("test_annotate_training:knowledge_fails", "kaizenlm.annotate.weekly:run_weekly"))
    ctx = scheduler.JobContext(tier="weekly", run_id="r1", trigger="manual", attempt=1,
                               scheduled_for=T0_DT + timedelta(days=2), started_at=datetime.now(UTC),
                               log_path=world["cfg"].home / "r1.log", log=logging.getLogger("test"), cfg=cfg, db=con)
    with pytest.raises(RuntimeError, match="the knowledge job failed"):
        tier(ctx)
    assert con.execute("SELECT count(*) FROM review_items WHERE kind = 'correction'").fetchone()[0] == 2
    ok = scheduler.chain(("kaizenlm.annotate.weekly:run_weekly",))(ctx)
    assert ok["already_queued"]["correction"] == 2  # the first part's result is the tier's result
    both = scheduler.chain(("kaizenlm.annotate.weekly:run_weekly", "kaizenlm.annotate.weekly:run_weekly"))(ctx)
    assert json.loads(json.dumps(both["annotate"]))["batch"] == both["batch"]
