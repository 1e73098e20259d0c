"""An evaluation suite built from the deployment's own traffic (kaizenlm/eval/traffic_suite.py):
corrected and well-rated answers become the exam, whole near-duplicate clusters at a time; a
canned refusal accepted across topics becomes refusal rows; too little traffic is a clear error;
the suite is written once and reused, and its prompts never reach a training snapshot."""

from __future__ import annotations

import json
import random

import pytest
from feedback_helpers import EventLog, make_config, open_store

from kaizenlm.datasets.snapshots import build_snapshot, open_snapshot
from kaizenlm.eval.suite import SuiteError
from kaizenlm.eval.traffic_suite import EXAM_PERCENT, build_from_traffic, suite_for, traffic_suite_path
from kaizenlm.feedback.rewards import Window

REFUSAL = "Sorry, I can only help with Acme questions."


WORDS = ["alpine", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kestrel", "lagoon", "meadow", "nectar", "onyx", "prairie", "quartz", "raven", "saffron", "tundra", "umber", "violet", "willow", "xenon", "yarrow", "zephyr", "amber", "birch", "coral", "dune", "falcon", "glacier", "heron", "iris", "jasmine", "kelp", "lotus", "maple", "nimbus", "orchid", "pebble", "quill", "ridge", "sierra", "thistle"]


def question_for(i: int) -> str:
    """A question about parcel type i, worded differently enough from every other to be its own cluster."""
    rng = random.Random(i)
    return f"What is parcel type {i}, " + " ".join(rng.sample(WORDS, 6)) + "?"


def paraphrase(question: str) -> str:
    return question[:-1] + " please?"


def populate(log: EventLog, n_facts: int = 200) -> None:
    for i in range(n_facts):
        question = question_for(i)
        wrong = log.turn(question, "It takes 3 weeks.", user_id=f"u{i}")  # one question each: nobody looks like a poisoner
        log.feedback(wrong, thumbs=-1, correction=f"Parcel type {i} arrives in {i % 5 + 1} days.")
        if i % 4 == 0:  # a paraphrase of the same question, answered well
            good = log.turn(paraphrase(question), f"Parcel type {i} arrives in {i % 5 + 1} days.",
                            user_id=f"u{i % 7}")
            log.feedback(good, thumbs=1, rating=5)
    for topic in ("weather in Oslo", "football results", "stock prices", "a pizza recipe"):
        turn = log.turn(f"Can you tell me about {topic}?", REFUSAL, user_id="u1")
        log.feedback(turn, thumbs=1)


@pytest.fixture
def cfg_con(tmp_path):
    cfg = make_config(tmp_path / "home", window_days=0)
    con = open_store(cfg)
    log = EventLog()
    populate(log)
    log.write(con)
    yield cfg, con
    con.close()


def test_the_exam_is_whole_clusters_of_answered_questions(cfg_con):
    cfg, con = cfg_con
    suite = build_from_traffic(con, cfg)
    assert 0.5 * EXAM_PERCENT / 100 * 250 <= len(suite.domain) <= 2 * EXAM_PERCENT / 100 * 250  # a share of clusters
    for row in suite.domain:
        number = row["prompt"].split("parcel type ")[1].split(",")[0]
        assert row["reference"] == f"Parcel type {number} arrives in {int(number) % 5 + 1} days."  # the correction
        assert row["turn_id"]
    exam = {r["prompt"] for r in suite.domain}
    for row in suite.domain:  # a question's paraphrase is in the exam too, never split across train and exam
        number = int(row["prompt"].split("parcel type ")[1].split(",")[0])
        if not row["prompt"].endswith("please?") and number % 4 == 0:
            assert paraphrase(row["prompt"]) in exam
    assert {r["prompt"] for r in suite.refusal} == {f"Can you tell me about {t}?" for t in
                                                   ("weather in Oslo", "football results", "stock prices",
                                                    "a pizza recipe")}
    assert {r["reference"] for r in suite.refusal} == {REFUSAL}
    assert len(suite.general) == 320 and all(r["choices"] for r in suite.general)


def test_it_is_written_once_reused_and_held_out_of_training(cfg_con):
    cfg, con = cfg_con
    first = suite_for(cfg, con)
    path = traffic_suite_path(cfg.home)
    assert path.is_file() and first.source == str(path)
    assert suite_for(cfg).rows() == first.rows()  # later calls (no connection needed) read the same exam
    snap = build_snapshot(con, cfg, Window(), holdout=first.prompts())
    tables = open_snapshot(snap.path)
    trained = json.dumps([t.to_pylist() for t in tables.values()], default=str)
    assert tables["sft_train"].num_rows > 0
    assert not [r["prompt"] for r in first.domain if r["prompt"] in trained]


def test_too_little_traffic_says_what_is_missing(tmp_path):
    cfg = make_config(tmp_path / "home", window_days=0)
    con = open_store(cfg)
    log = EventLog()
    populate(log, n_facts=10)
    log.write(con)
    with pytest.raises(SuiteError, match=r"no evaluation suite: \[eval\] suite_path is not set .* needs 20"):
        suite_for(cfg, con)
    assert not traffic_suite_path(cfg.home).exists()
    with pytest.raises(SuiteError, match="let the first retrain build one"):
        suite_for(cfg)
    con.close()
