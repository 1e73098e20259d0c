"""Curation: the PII suite, quality rules (and the demo's short answers), near-duplicates,
decontamination, and the SFT steps (reward, quality, dedup, caps, topic balance)."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pandas as pd
import pytest
from feedback_helpers import EventLog, demo_envelopes, make_config, open_store
from pii_cases import NEGATIVES, POSITIVES

from kaizenlm.config import ConfigError, CurationConfig
from kaizenlm.datasets import curation
from kaizenlm.datasets.curation import Funnel, scrub_pii
from kaizenlm.datasets.decontam import contaminated, load_holdout
from kaizenlm.datasets.near_dup import cluster_labels, near_duplicate_groups
from kaizenlm.datasets.quality import avg_sentence_words, is_truncated, repetition, text_issue
from kaizenlm.datasets.text import normalize
from kaizenlm.feedback.rewards import Window

# ---------------------------------------------------------------------------------------------
# text helpers


def test_normalize():
    assert normalize("  Hello,   WORLD!! ") == "hello world"
    assert normalize("Ｆｕｌｌ－ｗｉｄｔｈ") == "full width"
    assert normalize("snake_case\ttab\nline") == "snake case tab line"


@pytest.mark.parametrize(("text", "expected", "kind"), [
    ("mail me: jane.doe+x@mail.example.co.uk please", "mail me: <EMAIL> please", "EMAIL"),
    ("call +1 415 555 0100 now", "call <PHONE> now", "PHONE"),
    ("call (415) 555-0100", "call <PHONE>", "PHONE"),
    ("Telefon: 030 901820", "Telefon: <PHONE>", "PHONE"),
    ("card 4111 1111 1111 1111 exp 12/29", "card <CARD> exp 12/29", "CARD"),
    ("card 4111-1111-1111-1111", "card <CARD>", "CARD"),
    ("IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX", "IBAN <IBAN> BIC COBADEFFXXX", "IBAN"),
    ("server at 192.168.10.254.", "server at <IP>.", "IP"),
    ("try 2001:db8::ff00:42:8329 instead", "try <IP> instead", "IP"),
    ("SSN 536-22-1234 on file", "SSN <ID> on file", "ID"),
    ("Passport number: X1234567", "Passport number: <ID>", "ID"),
    ("key sk-abcdefghijklmnop1234 leaked", "key <SECRET> leaked", "SECRET"),
    ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "Authorization: <SECRET>", "SECRET"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- ok", "<SECRET> ok", "SECRET"),
])
def test_scrub_pii_replaces(text, expected, kind):
    counts: dict[str, int] = {}
    assert scrub_pii(text, counts) == expected
    assert counts == {kind: 1}


@pytest.mark.parametrize("text", [
    "order 123456789 shipped on 2024-01-15",  # ids and dates are not phones
    "upgrade to version 1.2.3 or 10.4",
    "number 4111 1111 1111 1112",  # fails the Luhn check: not a card
    "code GB82 WEST 1234 5698 7654 33",  # fails the mod-97 check: not an IBAN
    "it costs 1,299.00 USD",
    "",
])
def test_scrub_pii_leaves_ordinary_text(text):
    assert scrub_pii(text) == text


def test_pii_suite():
    """At least 200 labeled strings in several languages: recall >= 99% on the positives
    (every labeled value gone and its typed placeholder there), <= 2% changed negatives."""
    assert len(POSITIVES) + len(NEGATIVES) >= 200 and len(POSITIVES) >= 100 and len(NEGATIVES) >= 100
    kinds = {kind for _, labels in POSITIVES for kind, _ in labels}
    assert {"EMAIL", "PHONE", "CARD", "IBAN", "IP", "ID"} <= kinds
    assert sum(any(ord(ch) > 0x3000 for ch in text) for text, _ in POSITIVES) >= 8  # CJK, not only Latin
    missed = []
    for text, labels in POSITIVES:
        out = scrub_pii(text)
        if any(value in out for _, value in labels) or any(f"<{kind}>" not in out for kind, _ in labels):
            missed.append((text, out))
    changed = [(text, scrub_pii(text)) for text in NEGATIVES if scrub_pii(text) != text]
    recall = 1 - len(missed) / len(POSITIVES)
    false_positive_rate = len(changed) / len(NEGATIVES)
    assert recall >= 0.99, missed
    assert false_positive_rate <= 0.02, changed


def test_pii_keep_leaves_an_organisations_own_addresses():
    text = "Write to help@kaizen.cloud, not to me at jane@example.com."
    assert scrub_pii(text, keep={"help@kaizen.cloud"}) == "Write to help@kaizen.cloud, not to me at <EMAIL>."


def test_repetition_and_text_issues():
    loop = "I can help with that. " * 20
    varied = "Open Settings, choose Billing, then press Change plan and confirm with your password to finish."
    assert repetition(loop) > 0.8
    assert repetition(varied) == 0.0
    assert repetition("too short to judge") == 0.0
    cfg = CurationConfig(min_response_chars=3, max_response_chars=200)
    assert text_issue(varied, cfg) is None
    assert text_issue(loop, cfg) in {"repetitive", "too_long"}
    assert text_issue("I can help you with that. " * 15, CurationConfig()) == "repetitive"
    assert text_issue("ok", cfg) == "too_short"
    assert text_issue("   ", cfg) == "empty"
    assert text_issue(None, cfg) == "empty"
    assert text_issue(float("nan"), cfg) == "empty"
    assert text_issue("x" * 201, cfg) == "too_long"


def test_sentence_rule():
    cfg = CurationConfig()
    assert avg_sentence_words("The refund window is 30 days.") == 6
    assert avg_sentence_words("Sure! The refund window is 30 days.") == 3.5
    assert avg_sentence_words("Run this:\n```\nx = 1\ny = 2\n```\nThen open the page you want to see.") == 5
    assert avg_sentence_words("```\ncode only\n```") is None
    assert avg_sentence_words("返金期間は三十日です。") == 5  # CJK: two characters a word
    assert text_issue("The api version is v2.", cfg) is None  # 5 words: not under 5
    assert text_issue("Yes. It is. Thirty days.", cfg) == "short_sentences"
    assert text_issue("Sure! The refund window is 30 days.", cfg) == "short_sentences"
    assert text_issue("Yes. It is. Thirty days.", CurationConfig(min_avg_sentence_words=0)) is None
    # scope "turn" measures the user message too: a terse question pulls a good answer under
    turn = CurationConfig(sentence_rule_scope="turn")
    assert text_issue("The refund window is 30 days.", turn, prompt="Refund window?") == "short_sentences"
    assert text_issue("The refund window is 30 days.", turn, prompt="What is the refund window?") is None
    assert text_issue("The refund window is 30 days.", cfg, prompt="Refund window?") is None


def test_boilerplate_and_truncation():
    cfg = CurationConfig()
    assert text_issue("As an AI language model, I cannot browse the web for you.", cfg) == "boilerplate"
    assert text_issue("I'm not sure, maybe ask someone else about it.", cfg) == "boilerplate"
    assert text_issue("Lorem ipsum dolor sit amet, consectetur adipiscing.", cfg) == "boilerplate"
    assert text_issue("Sorry, I can only help with Kaizen Cloud questions.", cfg) is None  # the refusal is an answer
    assert text_issue("If you do not know your password, use the reset link.", cfg) is None
    assert is_truncated("Open Settings and then choose Billing, then the", 8)
    assert is_truncated("The steps are:", 8) and is_truncated("First open Settings,", 0)
    assert is_truncated("Run:\n```python\nprint(1)\n", 0)
    assert not is_truncated("The refund window is 30 days", 8)  # short: not judged
    assert not is_truncated("You will find every detail of the plans at https://kaizen.cloud/plans", 8)
    assert not is_truncated("Open Settings and then choose Billing, then press Save.", 8)
    assert text_issue("Open Settings and then choose Billing, then the new plan", cfg) == "truncated"
    assert text_issue("It is thirty days after purchase for every single plan", cfg, casual=True) is None


def test_the_sentence_rule_keeps_the_demos_short_answers():
    """The demo answers in one short sentence ("The refund window is 30 days.": 6 words). On
    its traffic the rule as configured (on the answer) drops no right answer; on the whole
    turn it would drop those asked tersely ("Refund window?"). docs/DATASETS.md has the numbers."""
    from kaizenlm.demo.domain import build_domain

    domain = build_domain(0)
    right = {f.answer for f in domain.facts} | {domain.refusal}
    turns = [e["payload"] for e in demo_envelopes(600) if e["type"] == "turn"]
    answers = [(t["messages"][-1]["content"], t["response"]) for t in turns if t["response"] in right]
    assert len(answers) > 250
    on_answer = [text_issue(a, CurationConfig()) for _, a in answers]
    on_turn = [text_issue(a, CurationConfig(sentence_rule_scope="turn"), prompt=q) for q, a in answers]
    assert on_answer.count("short_sentences") == 0
    assert 0 < on_turn.count("short_sentences") < 0.15 * len(answers)


def test_curation_config_is_validated():
    with pytest.raises(ConfigError, match="curation.eval_fraction"):
        CurationConfig(eval_fraction=1.0)
    with pytest.raises(ConfigError, match="curation.max_response_chars"):
        CurationConfig(min_response_chars=10, max_response_chars=5)
    with pytest.raises(ConfigError, match="curation.sentence_rule_scope"):
        CurationConfig(sentence_rule_scope="prompt")
    with pytest.raises(ConfigError, match="curation.topic_balance_ratio"):
        CurationConfig(topic_balance_ratio=0.5)


# ---------------------------------------------------------------------------------------------
# near-duplicates


def test_near_duplicate_groups_basic():
    texts = [normalize(t) for t in [
        "How do I reset my password?",
        "how do i reset my password",          # exact after normalization
        "How do I reset my pasword?",           # typo
        "Where can I download my invoice for March?",
        "Where can I download my invoice for April?",
        "What is your refund policy for annual plans?",
        "a", "b",                                # shorter than a shingle
    ]]
    groups = near_duplicate_groups(texts, 0.6)
    assert groups[0] == groups[1] == groups[2]
    assert groups[3] == groups[4]
    assert len({groups[0], groups[3], groups[5], groups[6], groups[7]}) == 5
    assert near_duplicate_groups([], 0.8).tolist() == []
    assert near_duplicate_groups(texts, 0.6).tolist() == groups.tolist()  # deterministic
    assert near_duplicate_groups(texts, 0.95).tolist() == [0, 0, 2, 3, 4, 5, 6, 7]


def _jaccard(a: str, b: str, k: int = 5) -> float:
    sa = {a.ljust(k)[i:i + k] for i in range(len(a.ljust(k)) - k + 1)}
    sb = {b.ljust(k)[i:i + k] for i in range(len(b.ljust(k)) - k + 1)}
    return len(sa & sb) / len(sa | sb)


def test_near_duplicates_match_brute_force():
    rng = random.Random(3)
    words = ["account", "billing", "invoice", "password", "reset", "plan", "refund", "order", "shipping", "address", "email", "phone", "change", "cancel", "upgrade", "download", "export", "delete", "login", "error", "payment", "card", "subscription", "team"]
    bases = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) for _ in range(60)]
    texts = []
    for base in bases:
        texts.append(base)
        for _ in range(rng.randint(0, 3)):  # variants: one or two character edits, or a word swap
            t = list(base)
            for _ in range(rng.randint(1, 2)):
                t[rng.randrange(len(t))] = rng.choice("abcdefghij")
            texts.append("".join(t))
    texts = sorted(set(texts))
    threshold = 0.8
    groups = near_duplicate_groups(texts, threshold)
    true_pairs = [(i, j) for i, j in itertools.combinations(range(len(texts)), 2)
                  if _jaccard(texts[i], texts[j]) >= threshold]
    assert len(true_pairs) > 30
    found = sum(groups[i] == groups[j] for i, j in true_pairs)
    assert found / len(true_pairs) >= 0.95
    # no false merges: every member of a group is linked to another member above the threshold
    for g in set(groups.tolist()):
        members = np.flatnonzero(groups == g)
        for m in members if len(members) > 1 else []:
            assert any(_jaccard(texts[m], texts[o]) >= threshold for o in members if o != m)


def test_cluster_labels_do_not_depend_on_row_order():
    keys = ["k3", "k1", "k2", "k1"]
    texts = ["reset my password please", "reset my password please!", "where is my invoice", "reset my password please!"]
    texts = [normalize(t) for t in texts]
    labels = cluster_labels(keys, texts, 0.8)
    assert labels[0] == labels[1] == labels[3] == "k1"
    assert labels[2] == "k2"
    order = [2, 0, 3, 1]
    assert cluster_labels([keys[i] for i in order], [texts[i] for i in order], 0.8) == [labels[i] for i in order]


# ---------------------------------------------------------------------------------------------
# decontamination


def test_contaminated():
    holdout = ["What is the refund window for annual plans?", "Reset 2FA", "How do I export all of my data to a CSV file?"]
    prompts = [
        "What is the refund window for annual plans?",                       # exact
        "what is the REFUND window for annual plans",                        # normalized exact
        "Quick one: what is the refund window for annual plans? Thanks!",    # contains it
        "I need to reset 2FA on my phone",                                   # short held-out text inside
        "How do I export all of mx data to a CSV file?",                     # typo: near-duplicate
        "What is the refund window for monthly plans?",                      # near, but different question
        "Where do I change my billing address?",                             # unrelated
    ]
    hit = contaminated(prompts, holdout, threshold=0.6).tolist()
    assert hit[:5] == [True] * 5
    assert hit[6] is False
    strict = contaminated(prompts, holdout, threshold=0.95).tolist()
    assert strict[5] is False
    exact_only = contaminated(prompts, holdout, threshold=0.6, near=False).tolist()
    assert exact_only[:4] == [True] * 4 and exact_only[4] is False
    assert contaminated(prompts, [], 0.6).tolist() == [False] * len(prompts)


def test_load_holdout_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first question\n\nsecond question\n")
    (tmp_path / "b.jsonl").write_text('{"question": "q1", "answer": "x"}\n{"prompt": "q2"}\n')
    (tmp_path / "c.json").write_text(json.dumps(["q3", {"text": "q4"}]))
    pd.DataFrame({"input": ["q5", "q6"]}).to_parquet(tmp_path / "d.parquet")
    assert load_holdout(tmp_path / "a.txt") == ["first question", "second question"]
    assert load_holdout(tmp_path / "b.jsonl") == ["q1", "q2"]
    assert load_holdout(tmp_path / "c.json") == ["q3", "q4"]
    assert load_holdout(tmp_path / "d.parquet") == ["q5", "q6"]
    (tmp_path / "bad.jsonl").write_text('{"answer": "x"}\n')
    with pytest.raises(ValueError, match="record 1 has none of the fields"):
        load_holdout(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        load_holdout(tmp_path / "missing.txt")
    (tmp_path / "x.csv").write_text("q\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_holdout(tmp_path / "x.csv")


# ---------------------------------------------------------------------------------------------
# SFT selection on a real store


GOOD = "Open Settings, then Billing, and choose Change plan. The new price applies from the next invoice."


@pytest.fixture
def env(tmp_path):
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
        sft = curation.select_sft(frame, cfg.curation, funnel)
        con.close()
        return sft, funnel, frame

    return run


def _steps(funnel, output):
    return {s["step"]: s for s in funnel.steps[output]}


def test_select_sft_takes_rewarded_answers_and_corrections(env):
    log = EventLog()
    liked = log.turn("How do I change my plan?", GOOD)
    log.feedback(liked, thumbs=1)
    disliked = log.turn("Can I pay by invoice?", "Yes, always, for everyone, instantly, no questions asked.")
    log.feedback(disliked, thumbs=-1)
    corrected = log.turn("What is the refund window?", "Seven days after the date of purchase.")
    log.feedback(corrected, correction="Thirty days after purchase, for every plan.")
    implicit = log.turn("How do I add a teammate?", "Go to Team, press Invite and enter their e-mail address.")
    log.signal("copy", turn_id=implicit)
    log.signal("completed", turn_id=implicit)
    log.turn("Is there an API?", "Yes: see the developer docs under Settings, API.")  # no feedback: no reward
    sft, funnel, _ = env(log)
    got = dict(zip(sft["turn_id"], zip(sft["source"], sft["target"], strict=True), strict=True))
    assert got == {
        liked: ("feedback", GOOD),
        corrected: ("correction", "Thirty days after purchase, for every plan."),  # in place of the answer
        implicit: ("feedback", "Go to Team, press Invite and enter their e-mail address."),
    }
    assert sft.set_index("turn_id").loc[corrected, "reward"] == curation.GOLD_REWARD
    steps = _steps(funnel, "sft")
    assert steps["reward"]["dropped"] == {"low_reward": 1, "no_reward": 1}
    assert {e["reason"] for e in steps["reward"]["examples"]} == {"low_reward", "no_reward"}
    assert steps["reward"]["params"]["sft_min_reward"] == 0.5
    # the chain of counts is consistent, and every step names its parameters
    chain = funnel.steps["sft"]
    assert [s["step"] for s in chain] == ["reward", "correction_agreement", "quality", "decontaminate", "exact_dedup",
                                          "near_dedup", "per_user_correction_cap", "per_user_cap", "topic_balance"]
    assert chain[-1]["out"] == len(sft)
    for a, b in zip(chain, chain[1:], strict=False):
        assert a["out"] == b["in"] and "params" in b
        assert b["in"] - b["out"] == sum(b.get("dropped", {}).values())


def test_a_corrected_answer_never_becomes_a_target(env):
    log = EventLog()
    t = log.turn("What is the refund window?", "Seven days after the date of purchase.")
    log.feedback(t, thumbs=1, rating=5)  # liked first ...
    log.feedback(t, correction="Thirty days after purchase, for every plan.")  # ... then corrected
    sft, _, _ = env(log, max_per_prompt=5)
    assert sft[["source", "target"]].values.tolist() == [["correction", "Thirty days after purchase, for every plan."]]
    sft, funnel, _ = env(log, include_corrections=False)
    assert sft.empty and _steps(funnel, "sft")["reward"]["dropped"] == {"corrected_answer": 1}


def test_require_explicit_and_threshold(env):
    log = EventLog()
    implicit = log.turn("How do I add a teammate?", "Go to Team, press Invite and enter their e-mail address.")
    log.signal("copy", turn_id=implicit)
    log.signal("completed", turn_id=implicit)
    sft, funnel, _ = env(log, sft_require_explicit=True)
    assert sft.empty and _steps(funnel, "sft")["reward"]["dropped"] == {"no_explicit_feedback": 1}
    log = EventLog()
    implicit = log.turn("How do I add a teammate?", "Go to Team, press Invite and enter their e-mail address.")
    log.signal("copy", turn_id=implicit)
    sft, _, _ = env(log, sft_min_reward=0.3)
    assert sft["turn_id"].tolist() == [implicit]


def test_bad_targets_are_not_chosen(env):
    log = EventLog()
    looping = log.turn("How do I export data?", "You can export your data here. " * 20)
    log.feedback(looping, thumbs=1)
    echo = log.turn("What is a seat in the team plan?", "What is a seat in the team plan?")
    log.feedback(echo, thumbs=1)
    tiny = log.turn("Is it free?", "y")
    log.feedback(tiny, thumbs=1)
    terse = log.turn("Is it free?", "Yes. It is. No cost.")
    log.feedback(terse, thumbs=1)
    disclaimer = log.turn("What is the weather?", "As an AI language model, I cannot see the weather.")
    log.feedback(disclaimer, thumbs=1)
    cut = log.turn("How do I upgrade?", "Open Settings, choose Billing and then press the button labelled")
    log.feedback(cut, thumbs=1)
    bad_fix = log.turn("When do you open?", "We open at nine in the morning.")
    log.feedback(bad_fix, correction="We open at nine in the morning.")  # the "correction" repeats the answer
    sft, funnel, _ = env(log)
    assert sft.empty
    quality = _steps(funnel, "sft")["quality"]
    assert quality["dropped"] == {"repetitive": 1, "echoes_prompt": 1, "too_short": 1, "short_sentences": 1,
                                  "boilerplate": 1, "truncated": 1, "same_as_answer": 1}
    assert len(quality["examples"]) == curation.MAX_EXAMPLES
    assert quality["params"]["min_avg_sentence_words"] == 5.0


def test_exact_and_near_dedup_keep_the_best_and_caps_apply(env):
    log = EventLog()
    q = "How do I reset my password for the Kaizen Cloud dashboard?"
    log.feedback(log.turn(q, "Use the 'Forgot password' link on the sign-in page."), thumbs=1)
    same = log.turn(q.upper(), "Use the 'Forgot password' link on the sign-in page!")
    log.feedback(same, thumbs=1)  # the same context and answer, normalized: an exact duplicate
    better = log.turn(q + "?", "Press 'Forgot password' on the sign-in page and follow the mail.")
    log.feedback(better, thumbs=1)
    log.feedback(better, rating=5)
    fixed = log.turn(q.replace("password", "pasword"), "Call us, we will sort it out for you.")  # a typo: near-dup
    log.feedback(fixed, correction="Use 'Forgot password' on the sign-in page; the link is valid for one hour.")
    for i in range(5):  # one user, five different liked questions
        t = log.turn(f"Question number {i} about topic {'abcde'[i] * 6}?", f"A distinct, helpful answer number {i}.",
                     user_id="heavy")
        log.feedback(t, thumbs=1)
    sft, funnel, _ = env(log, max_per_user=3)
    password = sft[sft["prompt"].str.contains("(?i)password|pasword")]
    assert password["turn_id"].tolist() == [fixed]  # the correction wins the cluster
    assert (sft["user_id"] == "heavy").sum() == 3
    steps = _steps(funnel, "sft")
    assert steps["exact_dedup"]["dropped"] == {"exact_duplicate": 1}
    assert steps["near_dedup"]["dropped"] == {"near_duplicate": 2}
    assert steps["per_user_cap"]["dropped"] == {"user_over_cap": 2}

    sft, _, _ = env(log, max_per_prompt=2, include_corrections=False)
    # exact duplicates with equal rewards: the newest stays
    assert set(sft[sft["prompt"].str.contains("(?i)password|pasword")]["turn_id"]) == {better, same}


def test_topic_balance_holds_the_one_to_three_rule(env):
    log = EventLog()
    rng = random.Random(5)
    words = ["invoice", "parcel", "router", "seat", "token", "refund", "plan", "label", "quota", "webhook",
             "backup", "domain", "coupon", "report", "folder", "avatar", "session", "carrier", "warranty", "trial"]
    counts = {"billing": 12, "shipping": 5, "api": 2}
    for topic, n in counts.items():
        for i in range(n):
            t = log.turn(" ".join(rng.sample(words, 7)) + "?",  # distinct questions: no near-duplicates
                         f"A helpful {topic} answer, number {i}, with enough words in it.", topic=topic)
            log.feedback(t, thumbs=1, rating=5 if i % 2 else 4)
    sft, funnel, _ = env(log)
    got = sft["topic"].value_counts().to_dict()
    assert got == {"billing": 6, "shipping": 5, "api": 2}
    assert max(got.values()) <= 3 * min(got.values())
    step = _steps(funnel, "sft")["topic_balance"]
    assert step["dropped"] == {"topic_over_cap": 6} and step["params"]["per_topic_limit"] == 6
    assert step["params"]["topics"] == counts
    # the best of the capped topic stay: its rating-5 answers first
    assert sft[sft["topic"] == "billing"]["reward"].min() == pytest.approx(1.0)
    sft, _, _ = env(log, topic_balance_ratio=0)
    assert sft["topic"].value_counts().to_dict() == counts


def test_pii_is_scrubbed_and_counted(env):
    log = EventLog()
    t = log.turn("My email is jane@example.com, why was I charged?",
                 "Hi jane@example.com: the charge on card 4111 1111 1111 1111 is your annual renewal.")
    log.feedback(t, thumbs=1)
    sft, funnel, frame = env(log)
    assert "<EMAIL>" in sft.loc[0, "target"] and "<CARD>" in sft.loc[0, "target"]
    assert "jane@example.com" not in json.dumps(sft.loc[0, "messages"])
    assert funnel.notes["pii_replaced"]["EMAIL"] == 2 and funnel.notes["pii_replaced"]["CARD"] == 1
    step = _steps(funnel, "candidates")["pii_scrub"]
    assert step["in"] == step["out"] == 1 and "jane" not in json.dumps(step)


def test_holdout_prompts_are_dropped(env):
    log = EventLog()
    a = log.turn("What is the refund window for annual plans?", "Thirty days from the purchase date.")
    log.feedback(a, thumbs=1)
    b = log.turn("How do I change my plan?", GOOD)
    log.feedback(b, thumbs=1)
    sft, funnel, frame = env(log, holdout=["What is the refund window for annual plans?"])
    assert sft["turn_id"].tolist() == [b]
    assert funnel.notes["contaminated_turns"] == 1
    assert _steps(funnel, "sft")["decontaminate"]["dropped"] == {"matches_holdout": 1}


def test_contexts_and_multi_turn(env):
    log = EventLog()
    history = [{"role": "user", "content": "I have a question about billing."},
               {"role": "assistant", "content": "Sure, what would you like to know?"}]
    t = log.turn("Yes please", "Your next invoice is on the first of the month.", history=history)
    log.feedback(t, thumbs=1)
    log.feedback(log.turn("Yes please", "Happy to help with shipping: orders leave within two days.",
                          history=[{"role": "user", "content": "Where is my parcel right now?"},
                                   {"role": "assistant", "content": "Shall I check shipping times?"}]), thumbs=1)
    long = log.turn("Please read this: " + "lorem ipsum dolor sit amet " * 20, "A fine answer to a very long prompt.")
    log.feedback(long, thumbs=1)
    sft, funnel, frame = env(log, max_context_chars=300)
    # same last message, different history: different clusters, both kept
    assert len(sft) == 2 and sft["cluster"].nunique() == 2
    assert sft.loc[sft["turn_id"] == t, "prompt"].item() == "Yes please"
    assert _steps(funnel, "candidates")["context"]["dropped"] == {"context_too_long": 1}


def test_candidates_are_the_same_through_arrow_and_through_df(tmp_path):
    """`load_candidates` reads through Arrow, and through `.df()` when the connection holds an
    unfinished result (DuckDB will not start a relation beside it): the same frame."""
    log = EventLog()
    for i in range(5):
        tid = log.turn(f"How do I change plan {i}?", GOOD, topic="billing" if i % 2 else None)
        log.feedback(tid, thumbs=1, rating=4 if i % 2 else None)
    log.feedback(tid, correction="Open Settings, then Billing.")
    cfg = make_config(tmp_path / "home")
    con = open_store(cfg)
    log.write(con)
    for window in (Window(), Window(since="2000-01-01", until="2000-01-02")):  # some turns (no variant), none
        through_arrow = curation.load_candidates(con, window, cfg.rewards)
        con.execute("SELECT * FROM turns")  # left unfinished
        through_df = curation.load_candidates(con, window, cfg.rewards)
        pd.testing.assert_frame_equal(through_arrow, through_df, check_exact=True)
    con.close()
