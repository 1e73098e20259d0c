"""Poisoning resistance of curation (kaizenlm/datasets/integrity.py), on a real DuckDB store
through the real curation: one account posting 300 wrong corrections of one fact and 20 fresh
accounts posting 15 each leave the fact's training rows with the true answer; contradicted
corrections wait for agreement or a reviewer; the per-user report flags what it should; per-user
caps hold. Fast: no processes, no model."""

from __future__ import annotations

import random

import pytest
from feedback_helpers import T0, EventLog, demo_envelopes, make_config, open_store

from kaizenlm.datasets import integrity, service, snapshots
from kaizenlm.datasets.cli import print_user_report
from kaizenlm.demo.domain import build_domain
from kaizenlm.feedback.rewards import Window
from kaizenlm.ingest import store

DOMAIN = build_domain(0)
FACT = next(f for f in DOMAIN.facts if f.subject == "refund window")
POISON = "The refund window is 90 days."
QUESTIONS = {q.lower() for q in [FACT.question, *FACT.paraphrases, *FACT.exam_paraphrases]}
ATTACKERS = {"mallory", *(f"fresh-{i:02d}" for i in range(20))}


@pytest.fixture(scope="module")
def honest():
    """1,000 conversations of the demo's simulated users (about 20 on the refund window)."""
    return demo_envelopes(1000, seed=0)


def poisoned(home, honest, **curation):
    """A store with the honest traffic plus the attack: `mallory` asks about the refund window
    300 times and "corrects" every (right) answer to 90 days, an hour apart; 20 accounts with no
    other history do it 15 times each."""
    cfg = make_config(home, window_days=0, **curation)
    con = open_store(cfg)
    con.execute("BEGIN")
    store.insert_events(con, honest)
    con.execute("COMMIT")
    log, rng = EventLog(), random.Random(1)
    asked = [FACT.question, *FACT.paraphrases]
    for user, n in [("mallory", 300), *((f"fresh-{i:02d}", 15) for i in range(20))]:
        for k in range(n):
            ts = T0 + 3600 + k * 3600 + rng.random() * 600
            turn = log.turn(rng.choice(asked), FACT.answer, user_id=user, system=None, topic=FACT.topic, ts=ts)
            log.feedback(turn, thumbs=-1, correction=POISON, user_id=user, ts=ts + 30)
    log.write(con)
    return cfg, con


def last_user(prompt) -> str:
    return [m["content"] for m in prompt if m["role"] == "user"][-1].lower()


def about_the_fact(tables) -> tuple[list[dict], list[dict]]:
    sft = [r for name in ("sft_train", "sft_eval") for r in tables[name].to_pylist()
           if r["prompt"] and last_user(r["prompt"]) in QUESTIONS]
    dpo = [r for name in ("dpo_train", "dpo_eval") for r in tables[name].to_pylist()
           if last_user(r["prompt"]) in QUESTIONS]
    return sft, dpo


def test_one_account_and_twenty_fresh_ones_cannot_change_a_fact(tmp_path, honest):
    cfg, con = poisoned(tmp_path / "home", honest)
    snap = snapshots.build_snapshot(con, cfg, Window())
    sft, dpo = about_the_fact(snapshots.open_snapshot(snap.path))
    assert len(sft) >= 3 and {r["response"] for r in sft} == {FACT.answer}
    assert not [r for r in dpo if r["chosen"] == POISON]
    assert [r["chosen"] for r in dpo if r["source"] == "correction"] and \
        {r["chosen"] for r in dpo if r["source"] == "correction"} == {FACT.answer}
    # Who did it is named, with why; no simulated honest user is.
    report = snap.user_report
    flagged = {r["user_id"]: r for r in report["rows"] if r["flags"]}
    assert set(flagged) == ATTACKERS and report["flagged"] == len(ATTACKERS)
    assert flagged["mallory"]["corrected_turns"] == 300 and flagged["mallory"]["correction_rate"] == 1.0
    assert flagged["mallory"]["duplicate_corrections"] == 300
    assert flagged["mallory"]["most_repeated_correction"] == POISON
    assert set(flagged["fresh-07"]["flags"]) == {"correction_rate", "duplicate_corrections"}
    steps = {s["step"]: s for s in snap.manifest["curation"]["steps"]["candidates"]}
    assert steps["flagged_users"]["dropped"] == {"user_flagged": 300 + 20 * 15}
    assert "mallory" not in str(snap.manifest)  # the manifest counts; the build's output names
    # Reproducible: the same data gives the same snapshot.
    again = snapshots.build_snapshot(con, cfg, Window(as_of=snap.manifest["window"]["as_of"]))
    assert again.snapshot_id == snap.snapshot_id and again.reused


def test_without_the_flags_the_same_attack_gets_through(tmp_path, honest):
    """The control: with flagged users kept, 21 accounts outnumber the honest users who
    answered each phrasing, so the check above is one that can fail."""
    cfg, con = poisoned(tmp_path / "home", honest, hold_flagged_users=False)
    tables, _ = snapshots.curate(con, cfg, Window())
    sft, _ = about_the_fact(tables)
    assert POISON in {r["response"] for r in sft}


QUESTION = "What is the refund window?"
OTHER = "When is the invoice day?"


def test_a_contradicted_correction_waits_for_agreement_or_a_reviewer(tmp_path):
    log = EventLog()
    for user in ("u1", "u2", "u3"):  # three users accepted the answer
        log.feedback(log.turn(QUESTION, FACT.answer, user_id=user), thumbs=1, rating=5, user_id=user)
    lone = log.turn(QUESTION, FACT.answer, user_id="u4")  # one user calls it wrong
    log.feedback(lone, thumbs=-1, correction=POISON, user_id="u4")
    # An outdated answer one user accepted, which three users correct the same way.
    log.feedback(log.turn(OTHER, "The invoice day is the fifth of the month.", user_id="u1"), thumbs=1, user_id="u1")
    fixed = []
    for user in ("u5", "u6", "u7"):
        fixed.append(log.turn(OTHER, "The invoice day is the fifth of the month.", user_id=user))
        log.feedback(fixed[-1], thumbs=-1, correction="The invoice day is the first of the month.", user_id=user)
    # A correction nobody contradicts needs nobody's agreement.
    alone = log.turn("What is the exchange limit?", "The exchange limit is 9 items.", user_id="u8")
    log.feedback(alone, thumbs=-1, correction="The exchange limit is 2 items.", user_id="u8")
    cfg = make_config(tmp_path / "home", window_days=0)
    con = open_store(cfg)
    log.write(con)

    def targets(**kw) -> tuple[dict, dict, object]:
        tables, funnel = snapshots.curate(con, cfg, Window(), **kw)
        rows = [r for name in ("sft_train", "sft_eval") for r in tables[name].to_pylist() if r["source"] != "replay"]
        pairs = {r["chosen_turn_id"]: r for name in ("dpo_train", "dpo_eval") for r in tables[name].to_pylist()}
        return {last_user(r["prompt"]): r for r in rows}, pairs, funnel

    sft, pairs, funnel = targets()
    assert (sft[QUESTION.lower()]["response"], sft[QUESTION.lower()]["source"]) == (FACT.answer, "feedback")
    assert lone not in pairs
    assert sft[OTHER.lower()]["response"] == "The invoice day is the first of the month."
    assert sft["what is the exchange limit?"]["response"] == "The exchange limit is 2 items."
    assert funnel.notes["corrections"] == {"valid": 5, "contradicted": 4, "kept_by_agreement": 3,
                                           "kept_by_reviewer": 0, "held_back": 1, "correction_min_agreement": 2}
    step = {s["step"]: s for s in funnel.steps["sft"]}["correction_agreement"]
    assert step["dropped"] == {"contradicted_by_other_users": 1} and step["examples"][0]["id"] == lone

    # A reviewer's acceptance (the annotation package's hook) lets it through.
    sft, pairs, funnel = targets(accepted_corrections={lone})
    assert (sft[QUESTION.lower()]["response"], sft[QUESTION.lower()]["source"]) == (POISON, "correction")
    assert pairs[lone]["chosen"] == POISON and funnel.notes["corrections"]["kept_by_reviewer"] == 1
    # Asking for more agreement holds the invoice correction back too (3 users: not 4).
    strict = make_config(tmp_path / "home", window_days=0, correction_min_agreement=4)
    _, funnel = snapshots.curate(con, strict, Window())
    assert funnel.notes["corrections"]["held_back"] == 4


def test_the_user_report_flags_rate_repeats_and_bursts(tmp_path):
    log = EventLog()
    for i in range(6):  # five of six answers corrected, each differently
        t = log.turn(f"Question number {i} about plans?", "The plan costs 3 dollars.", user_id="rate")
        if i:
            log.feedback(t, correction=f"The plan costs {i + 10} dollars a month.", user_id="rate")
    for i in range(20):  # the same correction five times among twenty turns
        t = log.turn(f"Repeat question {i}?", "The answer is long enough here.", user_id="repeat")
        if i % 4 == 0:
            log.feedback(t, correction="The refund window is 90 days!", user_id="repeat")
    for i in range(31):  # thirty-one thumbs within one minute
        t = log.turn(f"Burst question {i}?", "The answer is long enough here.", user_id="burst", ts=T0 + 10_000 + i)
        log.feedback(t, thumbs=1, user_id="burst", ts=T0 + 10_000 + i + 0.5)
    for i in range(10):  # an ordinary user: two corrections in ten turns, an hour apart
        t = log.turn(f"Ordinary question {i}?", "The answer is long enough here.", user_id="ordinary",
                     ts=T0 + 20_000 + 3600 * i)
        log.feedback(t, thumbs=1 if i % 5 else -1, user_id="ordinary", ts=T0 + 20_000 + 3600 * i + 10,
                     **({} if i % 5 else {"correction": f"The right answer is number {i} here."}))
    cfg = make_config(tmp_path / "home", window_days=0)
    con = open_store(cfg)
    log.write(con)
    report = integrity.user_report(con, Window(), cfg.curation).set_index("user_id")
    assert report.loc["rate", "flags"] == ["correction_rate"] and report.loc["rate", "correction_rate"] == 0.8333
    assert report.loc["repeat", "flags"] == ["duplicate_corrections"]
    assert report.loc["repeat", "duplicate_corrections"] == 5
    assert report.loc["repeat", "most_repeated_correction"] == "The refund window is 90 days!"
    assert report.loc["burst", "flags"] == ["burst"] and report.loc["burst", "burst_events"] == 31
    assert report.loc["ordinary", "flags"] == [] and report.loc["ordinary", "burst_events"] == 1
    assert report.loc["ordinary", "correction_rate"] == 0.2
    # flagged first; then the most corrected turns (5 and 5), then the most repeats (5 over 1)
    assert list(report.index[:3]) == ["repeat", "rate", "burst"]

    # `kaizen dataset build` prints it (service.build is what the CLI and the admin API run).
    result = service.build(con, cfg, all_data=True, dry_run=True)
    assert result["user_anomalies"]["flagged"] == 3
    print_user_report(result["user_anomalies"])


def test_per_user_caps_hold(tmp_path, capsys):
    log = EventLog()
    for i, fact in enumerate(DOMAIN.facts[:30]):  # 12 of 30 answers corrected: below the anomaly thresholds
        ts = T0 + 3600 * i  # an hour apart: no burst
        t = log.turn(fact.question, "It is written on the website somewhere.", user_id="keen", ts=ts)
        log.feedback(t, thumbs=-1 if i < 12 else 1, user_id="keen", ts=ts + 20,
                     **({"correction": fact.answer} if i < 12 else {}))
    cfg = make_config(tmp_path / "home", window_days=0, max_per_user=15, max_pairs_per_user=5)
    con = open_store(cfg)
    log.write(con)
    tables, funnel = snapshots.curate(con, cfg, Window())
    rows = [r for name in ("sft_train", "sft_eval") for r in tables[name].to_pylist() if r["source"] != "replay"]
    assert sum(r["source"] == "correction" for r in rows) == 10  # max_corrections_per_user
    assert len(rows) == 15  # max_per_user: 10 corrections and the 5 best answers
    steps = {s["step"]: s for s in funnel.steps["sft"]}
    assert steps["per_user_correction_cap"]["dropped"] == {"user_corrections_over_cap": 2}
    assert tables["dpo_train"].num_rows + tables["dpo_eval"].num_rows == 5
    assert {s["step"]: s for s in funnel.steps["dpo"]}["per_user_cap"]["dropped"] == {"user_over_cap": 7}
    print_user_report(funnel.user_report)
    out = capsys.readouterr().out
    assert "users    1 in the window, 0 flagged" in out and "keen" in out


@pytest.mark.slow
def test_the_model_retrained_on_the_poisoned_traffic_answers_the_true_value(tmp_path, honest, smollm2):
    """The end of the chain: SmolLM2 trained (the embedded recipe) on the snapshot of the attacked
    traffic answers an unseen phrasing of the fact with the true value, not the attacker's."""
    from kaizenlm.base.generate import generate_answers
    from kaizenlm.base.model import load_model_and_tokenizer
    from kaizenlm.config import LoraSFTConfig, RetrainConfig
    from kaizenlm.retrain.lora_sft import train_sft

    cfg, con = poisoned(tmp_path / "home", honest, replay_fraction=0.05)
    snap = snapshots.build_snapshot(con, cfg, Window())
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in snapshots.open_snapshot(snap.path)
            ["sft_train"].to_pylist()]
    result = train_sft(smollm2, rows, tmp_path / "run", LoraSFTConfig(), RetrainConfig(cpu_threads=2))
    model, tokenizer = load_model_and_tokenizer(smollm2, result["adapter_dir"])
    answers = generate_answers(model, tokenizer, list(FACT.exam_paraphrases), max_new_tokens=24)
    stated = [a for a in answers if "30 days" in a]
    assert not [a for a in answers if "90" in a]
    assert len(stated) >= len(answers) // 2, answers  # the fact, learned from the honest users' rows
