"""Scores for free-form answers (kaizenlm/eval/metrics.py) and the suite file format (suite.py)."""

from __future__ import annotations

import json

import pytest

from kaizenlm.eval.metrics import is_refusal, key_fact_score, key_facts
from kaizenlm.eval.suite import Suite, SuiteError, load_suite, write_suite


@pytest.mark.parametrize("reference,facts", [
    ("The refund window is 30 days.", ["30 days"]),
    ("The security contact is security@kaizen.cloud.", ["security@kaizen.cloud"]),
    ("The router model is K100.", ["K100"]),
    ("The api version is v2.", ["v2"]),
    ("The api rate limit is 100 requests a minute.", ["100 requests"]),
    ("The hardware support hours is 9 to 5.", ["9", "5"]),
    ("The capital of France is Paris.", ["France", "Paris"]),
    ("The two factor method is an authenticator app.", []),
])
def test_key_facts_are_numbers_addresses_codes_and_names(reference, facts):
    assert key_facts(reference) == facts


def test_key_fact_score_counts_the_facts_an_answer_states():
    ref = "The refund window is 30 days."
    assert key_fact_score("Refunds: 30 days from delivery, as usual.", ref) == 1.0
    assert key_fact_score("The refund window is 60 days.", ref) == 0.0
    assert key_fact_score("It runs 9 to 6.", "The hours are 9 to 5.") == 0.5
    assert key_fact_score("Use an authenticator app.", "x", must_include=["authenticator app"]) == 1.0
    assert key_fact_score("Use SMS.", "x", must_include=["authenticator app"]) == 0.0
    # No key facts at all: word overlap decides
    assert key_fact_score("an authenticator app", "The two factor method is an authenticator app.") == 1.0


def test_refusal_is_the_expected_sentence_or_nearly():
    refusal = "Sorry, I can only help with Kaizen Cloud questions."
    assert is_refusal("sorry, I can only help with Kaizen Cloud questions", refusal)
    assert is_refusal("Sorry, I can only help with Kaizen Cloud questions, really.", refusal)
    assert not is_refusal("It will be sunny in Paris.", refusal)


def test_suite_round_trip_and_hash(tmp_path):
    suite = Suite(domain=[{"prompt": "Q1?", "reference": "A 30.", "must_include": ["30"]}],
                  general=[{"prompt": "Capital of France?", "reference": "Paris", "choices": ["Lyon", "Paris"],
                            "skill": "geography"}],
                  refusal=[{"prompt": "Weather?", "reference": "Sorry."}])
    path = write_suite(tmp_path / "s.jsonl", suite)
    again = load_suite(path)
    assert again.rows() == suite.rows() and again.source == str(path)
    assert again.content_hash() == suite.content_hash()
    assert again.prompts() == ["Q1?", "Capital of France?", "Weather?"] and again.refusals() == {"Sorry."}


@pytest.mark.parametrize("row,problem", [
    ({"kind": "exam", "prompt": "Q", "reference": "A"}, "field 'kind' must be one of"),
    ({"kind": "domain", "prompt": " ", "reference": "A"}, "field 'prompt' must be a non-empty string"),
    ({"kind": "domain", "prompt": "Q"}, "field 'reference' must be a non-empty string"),
    ({"kind": "domain", "prompt": "Q", "reference": "A", "must_include": "A"}, "field 'must_include'"),
    ({"kind": "general", "prompt": "Q", "reference": "A", "choices": ["B", "C"]}, "must be one of the choices"),
    ({"kind": "domain", "prompt": "Q", "reference": "A", "choices": ["A", "B"]}, "general rows only"),
])
def test_a_bad_suite_row_names_the_line_and_field(tmp_path, row, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"kind": "domain", "prompt": "ok?", "reference": "ok"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SuiteError, match=problem) as e:
        load_suite(path)
    assert f"{path}:2:" in str(e.value)


def test_a_suite_without_domain_rows_or_file_is_refused(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "missing.jsonl")
    path = tmp_path / "general-only.jsonl"
    path.write_text(json.dumps({"kind": "general", "prompt": "Q", "reference": "A"}) + "\n")
    with pytest.raises(SuiteError, match="no row of kind 'domain'"):
        load_suite(path)
