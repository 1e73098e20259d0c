"""The generated demo domain and general skills: determinism, shape and the public API."""

import random

from kaizenlm.demo.domain import REFUSAL, build_domain
from kaizenlm.demo.general import SKILLS, general_skills, read_general_jsonl, write_general_jsonl


def test_domain_is_deterministic_per_seed():
    a, b, c = build_domain(0), build_domain(0), build_domain(1)
    assert [f.exam_paraphrases for f in a.facts] == [f.exam_paraphrases for f in b.facts]
    assert a.out_of_scope_exam == b.out_of_scope_exam
    assert [f.exam_paraphrases for f in a.facts] != [f.exam_paraphrases for f in c.facts]
    assert [f.answer for f in a.facts] == [f.answer for f in c.facts]  # facts are fixed, splits vary


def test_domain_shape_and_lookup():
    d = build_domain(0)
    assert d.name == "Kaizen Cloud" and d.refusal == REFUSAL
    assert len(d.facts) == 48 and len({f.qid for f in d.facts}) == 48
    assert {f.topic for f in d.facts} == {"billing", "shipping", "returns", "account", "security", "plans", "api", "hardware"}
    refund = d.fact("billing-1")
    assert refund.question == "What is the refund window?"
    assert refund.answer == "The refund window is 30 days."
    for f in d.facts:
        assert f.answer.startswith("The ") and f.answer.endswith(".")
        assert len(f.paraphrases) == 7 and len(f.exam_paraphrases) == 3
        assert not set(f.paraphrases) & set(f.exam_paraphrases)  # the exam is held out
        assert f.question not in f.exam_paraphrases
        assert all(f.subject in q.lower() for q in f.exam_paraphrases)
        assert d.fact_for_question(f.exam_paraphrases[0]) is f
    assert not set(d.out_of_scope) & set(d.out_of_scope_exam)
    assert d.is_out_of_scope(d.out_of_scope_exam[0]) and not d.is_out_of_scope(refund.question)
    assert d.fact_for_question("What is the weather in Paris?") is None
    assert len(d.train_rows()) == 48 * 8 and len(d.exam_rows()) == 48 * 3


def test_documents_contain_every_fact(tmp_path):
    d = build_domain(0)
    paths = d.write_documents(tmp_path / "kb")
    assert len(paths) == len(d.docs) == 16
    texts = {p.stem: p.read_text() for p in paths}
    for f in d.facts:
        assert f.answer in texts[f.doc_id]


def test_wrong_answer_is_plausible_and_wrong():
    d = build_domain(0)
    rng = random.Random(3)
    for f in d.facts:
        for _ in range(5):
            w = d.wrong_answer(f, rng)
            assert w != f.answer and w.startswith("The ") and w.endswith(".")
    assert build_domain(0).wrong_answer(d.facts[0], random.Random(1)) == d.wrong_answer(d.facts[0], random.Random(1))


def test_general_skills(tmp_path):
    train, heldout = general_skills(0)
    assert (train, heldout) == general_skills(0)
    assert {r["skill"] for r in heldout} == set(SKILLS)
    assert {r["skill"] for r in train} == set(SKILLS) | {"refusal", "recall"}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    rows = {r["prompt"]: r["response"] for r in train + heldout}
    assert rows.get("Add 3 and 4.", "7") == "7"
    reverse = next(r for r in train if r["skill"] == "reverse")
    assert reverse["response"].split() == reverse["prompt"].removeprefix("Reverse: ").split()[::-1]
    path = write_general_jsonl(tmp_path / "g.jsonl", heldout)
    assert read_general_jsonl(path) == heldout


def test_side_by_side_general_questions_are_neither_trained_on_nor_out_of_scope():
    """The demo's side-by-side shows whether the retrain kept general skills: its general questions
    are no shipped general prompt (replay and anchor rows) and match no out-of-scope template
    (questions the assistant is taught to decline)."""
    import re

    from kaizenlm.base.general import general_prompts
    from kaizenlm.demo.domain import _OUT_OF_SCOPE
    from kaizenlm.demo.stages import GENERAL_QUESTIONS

    shipped = {r["prompt"] for r in general_prompts()}
    templates = [re.compile(re.escape(t).replace(re.escape("{x}"), ".+"), re.IGNORECASE) for t, _ in _OUT_OF_SCOPE]
    assert len(GENERAL_QUESTIONS) == 2
    for question in GENERAL_QUESTIONS:
        assert question not in shipped and not build_domain(0).is_out_of_scope(question)
        assert not any(t.fullmatch(question) for t in templates), question
    assert any(t.fullmatch("What is the capital of France?") for t in templates)  # the check can fail
