"""Evaluation metrics on known strings, the pairwise judges, the gates, and one real evaluation."""


import pytest
from conftest import free_port
from retrain_helpers import build_tiny_base

from kaizenlm.config import EvalConfig
from kaizenlm.demo.domain import Domain, build_domain
from kaizenlm.demo.inputs import demo_suite
from kaizenlm.eval import evaluate as ev
from kaizenlm.eval.suite import Suite

pytestmark = pytest.mark.integration  # trains and evaluates the tiny base model


def test_exact_match_normalizes_case_space_and_punctuation():
    assert ev.exact_match("The refund window is 30 days.", "the refund window  is 30 days") == 1.0
    assert ev.exact_match("The refund window is 31 days.", "The refund window is 30 days.") == 0.0
    assert ev.exact_match("", "") == 1.0


def test_token_f1_known_values():
    assert ev.token_f1("the refund window is 30 days", "the refund window is 30 days") == 1.0
    # pred 4 tokens, ref 6 tokens, 4 in common: P=1, R=2/3 -> F1=0.8
    assert ev.token_f1("refund window 30 days", "the refund window is 30 days") == pytest.approx(0.8)
    assert ev.token_f1("blue cat", "red dog") == 0.0
    assert ev.token_f1("", "x") == 0.0


def test_rouge_l_known_values():
    # LCS("a b c d", "a c b d") = 3 (a b d / a c d): P = R = 3/4
    assert ev.rouge_l("a b c d", "a c b d") == pytest.approx(0.75)
    # LCS = 2 ("is 30"), pred 3 tokens, ref 6 tokens: P=2/3, R=1/3 -> F=4/9
    assert ev.rouge_l("is 30 seconds", "the api timeout is 30 days") == pytest.approx(4 / 9)
    assert ev.rouge_l("x y", "z") == 0.0


def test_refusal_detection():
    d = build_domain(0)
    assert ev.is_refusal("sorry, I can only help with Kaizen Cloud questions", d.refusal)
    assert not ev.is_refusal("The refund window is 30 days.", d.refusal)


def test_reference_judge_and_blind_pairwise():
    ref = "The refund window is 30 days."
    assert ev.reference_judge("q", ref, "The refund window is 7 days.", ref) == 1.0
    assert ev.reference_judge("q", "no idea", ref, ref) == 0.0
    assert ev.reference_judge("q", ref, ref, ref) == 0.5
    cfg = EvalConfig()
    qs, refs = ["q1", "q2", "q3", "q4"], [ref] * 4
    better = ev.pairwise(qs, [ref] * 4, ["no"] * 4, refs, cfg, seed=1)
    assert better["pairwise_win_rate"] == 1.0 and better["pairwise_wins"] == 4 and better["judge"] == "reference"
    same = ev.pairwise(qs, [ref] * 4, [ref] * 4, refs, cfg)
    assert same["pairwise_win_rate"] == 0.5 and same["pairwise_ties"] == 4


def test_llm_judge_outage_falls_back_to_the_reference_judge():
    port = free_port()  # a port nobody listens on: a real connection failure
    cfg = EvalConfig(judge_url=f"http://127.0.0.1:{port}/v1", judge_model="judge")
    ref = "The trial length is 14 days."
    result = ev.pairwise(["q"], [ref], ["The trial length is 3 days."], [ref], cfg)
    assert result["judge"] == "llm" and result["judge_errors"] == 1 and result["pairwise_win_rate"] == 1.0


CHAMP = {"domain_score": 0.40, "general_score": 0.80, "refusal_rate": 0.90}


def test_gate_passes_a_better_candidate():
    passed, reasons = ev.gate({"domain_score": 0.6, "general_score": 0.79, "refusal_rate": 0.89}, CHAMP)
    assert passed and len(reasons) == 3 and all(r.startswith("pass") for r in reasons)


@pytest.mark.parametrize("cand, failing", [
    ({"domain_score": 0.40, "general_score": 0.80, "refusal_rate": 0.90}, "domain"),    # no improvement
    ({"domain_score": 0.60, "general_score": 0.78, "refusal_rate": 0.90}, "general"),   # 0.975 < 0.98
    ({"domain_score": 0.60, "general_score": 0.80, "refusal_rate": 0.87}, "refusal"),   # dropped 3 points
])
def test_gate_fails_each_check(cand, failing):
    passed, reasons = ev.gate(cand, CHAMP)
    assert not passed
    failed = [r for r in reasons if r.startswith("fail")]
    assert len(failed) == 1 and failing in failed[0]


def test_gate_thresholds_come_from_config_and_first_model_passes():
    cand = {"domain_score": 0.45, "general_score": 0.70, "refusal_rate": 0.90}
    assert not ev.gate(cand, CHAMP)[0]
    assert ev.gate(cand, CHAMP, EvalConfig(min_retention=0.85))[0]
    assert not ev.gate(cand, CHAMP, EvalConfig(min_retention=0.85, min_domain_gain=0.1))[0]
    assert ev.gate(cand, None) == (True, ["pass: no champion to compare with"])


def test_gate_on_an_evaluation_that_stopped_after_the_general_skills():
    # Retention measured and failing: the unmeasured checks fail too (no gate passes on a guess).
    passed, reasons = ev.gate({"general_score": 0.40}, CHAMP)
    assert not passed and reasons[0].startswith("fail: general-skill retention 0.500")
    assert reasons[1:] == ["fail: domain score not measured (the evaluation stopped after the retention check)",
                           "fail: refusal rate not measured (the evaluation stopped after the retention check)"]
    # Even a passing retention does not make a partial evaluation pass.
    passed, reasons = ev.gate({"general_score": 0.80}, CHAMP)
    assert not passed and reasons[0].startswith("pass: general-skill retention 1.000")


def test_stored_metrics_are_reused_only_under_the_same_evaluation_key():
    suite = Suite(domain=[{"prompt": "Q?", "reference": "A."}], source="traffic")
    answers = [{"prompt": "Hi?", "response": "Hello."}]
    key = ev.evaluation_key(suite, EvalConfig(), answers)
    stored = {"domain_score": 0.4, "general_score": 0.9, "refusal_rate": 1.0, "eval_key": key}
    assert ev.reusable(stored, key)
    # Next month's traffic suite has the same name and other rows; other settings score otherwise.
    next_month = Suite(domain=[{"prompt": "Q2?", "reference": "A."}], source="traffic")
    assert not ev.reusable(stored, ev.evaluation_key(next_month, EvalConfig(), answers))
    assert not ev.reusable(stored, ev.evaluation_key(suite, EvalConfig(max_new_tokens=8), answers))
    assert not ev.reusable(stored, ev.evaluation_key(suite, EvalConfig(retention_metric="choices"), answers))
    fp32, bf16 = (ev.evaluation_key(suite, EvalConfig(precision=p), answers) for p in ("fp32", "bf16"))
    assert fp32 != bf16 and key in (fp32, bf16)  # "auto" is one of the two on any machine
    assert not ev.reusable(stored, ev.evaluation_key(suite, EvalConfig(), []))
    assert not ev.reusable({k: v for k, v in stored.items() if k != "refusal_rate"}, key)
    assert not ev.reusable(None, key) and not ev.reusable({**stored, "eval_key": None}, key)


def test_evaluate_a_real_model(tmp_path):
    base = build_tiny_base(tmp_path / "base")
    full = build_domain(0)
    d = Domain(full.name, full.refusal, full.facts[:8], full.docs, full.out_of_scope, full.out_of_scope_exam[:6])
    whole = demo_suite(0, d)
    suite = Suite(domain=whole.domain, general=whole.general[:12], refusal=whole.refusal, source="test")
    cfg = EvalConfig(max_new_tokens=8, pairwise_sample=10)
    champ = ev.evaluate(str(base), suite, cfg)
    assert champ["n_exam"] == 24 and champ["n_general"] == 12 and champ["n_refusal"] == 6
    for key in ("domain_exact_match", "domain_token_f1", "domain_rouge_l", "general_score", "refusal_rate"):
        assert 0.0 <= champ[key] <= 1.0
    assert champ["val_perplexity"] > 1.0 and len(champ["answers"]) == 24
    again = ev.evaluate(str(base), suite, cfg, champion=champ)
    assert again["pairwise_n"] == 10 and again["pairwise_win_rate"] == 0.5  # same model, greedy: all ties
    # Free-form general rows are scored against their references under their own key; agreement
    # with the base's answers only exists when those answers are given.
    free = Suite(domain=suite.domain[:2], general=[{"prompt": "Say hello.", "reference": again["answers"][
        suite.domain[0]["prompt"]]}], refusal=suite.refusal[:1], source="test")
    scored = ev.evaluate(str(base), free, EvalConfig(max_new_tokens=8, pairwise_sample=0, similarity=False))
    assert "general_agreement" not in scored and 0.0 <= scored["general_reference_f1"] <= 1.0
    assert scored["general_score"] == scored["general_reference_f1"]  # no choices: the fallback
    model, tok = ev.load_for_eval(str(base))
    pairs = [{"prompt": "Hello!", "chosen": "Hi.", "rejected": "Hi."}]
    assert ev.preference_margin(model, tok, pairs) == pytest.approx(0.0, abs=1e-5)


def test_response_logprobs_score_each_response_as_one_unpadded_row_does(tmp_path):
    """Batched, padded and with logits only where a response token is predicted: the same sum of
    log-probs and token count as each row alone with every logit computed."""
    import torch

    from kaizenlm.base.generate import MIN_SHARED_PREFIX, prompt_text, shared_prefix_length
    from kaizenlm.base.model import as_messages

    model, tok = ev.load_for_eval(str(build_tiny_base(tmp_path / "base")))
    system = {"role": "system", "content": "Answer briefly."}  # rows with a shared prefix, as real chat rows have
    rows = [{"prompt": [system, {"role": "user", "content": "Hello!"}], "response": "Hi there."},
            {"prompt": [system, {"role": "user", "content": "What is the refund window?"}],
             "response": "The refund window is 30 days."},
            {"prompt": "Say yes.", "response": "Yes."}]
    got = ev.response_logprobs(model, tok, rows, batch_size=2)
    # The first batch's shared chat-template prefix ran once, through its cache.
    ids = [tok(prompt_text(tok, r["prompt"]), add_special_tokens=False)["input_ids"] for r in rows[:2]]
    assert shared_prefix_length(ids) >= MIN_SHARED_PREFIX
    for (total, count), row in zip(got, rows, strict=True):
        prompt = tok(prompt_text(tok, row["prompt"]), add_special_tokens=False)["input_ids"]
        full = tok(tok.apply_chat_template(as_messages(row["prompt"]) + [{"role": "assistant", "content": row["response"]}],
                                           tokenize=False),
                   add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0, :-1].float(), -1)
        expected = sum(float(logp[t - 1, full[t]]) for t in range(len(prompt), len(full)))
        assert count == len(full) - len(prompt) > 0
        assert total == pytest.approx(expected, abs=1e-3) and total < 0
