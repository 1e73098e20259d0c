"""Multiple-choice scoring by log-likelihood: the batched, left-padded, last-positions-only
scorer gives the same numbers as scoring each (question, choice) sequence alone."""

from __future__ import annotations

import math

import pytest
import torch
from serving_helpers import build_tiny_model

from kaizenlm.base.generate import prompt_text, shared_prefix_length
from kaizenlm.base.model import load_model_and_tokenizer
from kaizenlm.eval.choices import choice_logprobs, multiple_choice

pytestmark = pytest.mark.integration  # builds a (tiny) torch model

ROWS = [{"prompt": "what is the price of the plan", "choices": ["red", "blue green cat", "the quick brown fox", "dog"],
         "answer": 1},
        {"prompt": "hello", "choices": ["thank you very much", "apple"], "answer": 0},
        {"prompt": "reset my password please now", "choices": ["plum", "pear plum", "bird"], "answer": 2}]


def naive(model, tokenizer, prompt: str | list[dict], choice: str) -> float:
    context = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    tail = tokenizer(choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + tail])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    return float(sum(logp[len(context) - 1 + k, t] for k, t in enumerate(tail)))


SYSTEM = {"role": "system", "content": "Answer with one of the choices."}
# The same questions after a shared system prompt, which each batch then runs once.
WITH_SYSTEM = [{**r, "prompt": [SYSTEM, {"role": "user", "content": r["prompt"]}]} for r in ROWS]


@pytest.mark.parametrize("rows", [ROWS, WITH_SYSTEM], ids=["no-shared-prefix", "shared-system-prompt"])
def test_batched_scores_equal_one_sequence_at_a_time(tmp_path, rows):
    model, tokenizer = load_model_and_tokenizer(build_tiny_model(tmp_path / "m"))
    contexts = [tokenizer(prompt_text(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"] for r in rows]
    assert (shared_prefix_length(contexts) > 0) == (rows is WITH_SYSTEM)
    got = choice_logprobs(model, tokenizer, rows)
    want = [[naive(model, tokenizer, r["prompt"], c) for c in r["choices"]] for r in rows]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-3)
    scored = multiple_choice(model, tokenizer, rows)
    picks = [max(range(len(w)), key=w.__getitem__) for w in want]
    assert scored["picks"] == picks
    assert scored["acc"] == pytest.approx(sum(p == r["answer"] for p, r in zip(picks, rows, strict=True)) / 3)
    # prob: the right choice's share once the likelihoods are renormalised over the choices.
    shares = [math.exp(w[r["answer"]]) / sum(math.exp(x) for x in w) for w, r in zip(want, rows, strict=True)]
    assert 0 < scored["prob"] < 1 and scored["prob"] == pytest.approx(sum(shares) / 3, abs=1e-3)


def test_similar_lengths_groups_short_first_with_bounded_padding():
    from kaizenlm.eval.choices import _similar_lengths

    lengths = [1, 9, 2, 1, 3, 2, 1, 1, 4]
    groups = _similar_lengths(lengths, lambda n: n)
    assert sorted(n for g in groups for n in g) == sorted(lengths)  # every item once
    assert [n for g in groups for n in g] == sorted(lengths)  # shortest first
    for g in groups:  # padded size at most twice the real tokens
        assert len(g) * max(g) <= 2 * sum(g)
    assert groups == [[1, 1, 1, 1, 2, 2, 3], [4, 9]]  # the long ones do not pad the many short ones
