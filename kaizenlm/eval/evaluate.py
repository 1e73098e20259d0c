"""Evaluation of a model (base, or base + LoRA adapter) and the gates a candidate must pass.

    evaluate(model, suite, ...) -> metrics          (suite: kaizenlm.eval.suite, data the caller gives)
    gate(candidate_metrics, champion_metrics, cfg) -> (passed, reasons)

Metrics (all in [0, 1] unless said otherwise; greedy decoding; kaizenlm/eval/metrics.py):
  domain_score          key facts stated: the reference's numbers, names, codes, addresses (or the row's
                        must_include) found in the answer, averaged (what the gate compares)
  domain_exact_match / domain_token_f1 / domain_rouge_l / domain_similarity (all-MiniLM-L6-v2 cosine)
  general_score         eval.retention_metric's measure (what the retention gate compares):
                        general_mc_prob (choice_prob: probability of the right choice, renormalised
                        over the choices; kaizenlm/eval/choices.py), general_mc_accuracy (choices),
                        general_agreement (agreement: token F1 with the base's own answers to held-out
                        general prompts); when that one was not measured, multiple-choice accuracy,
                        else general_reference_f1 (token F1 of free-form general rows); general_by_skill
  refusal_rate          share of the suite's refusal rows answered with their refusal
  false_refusal_rate    share of domain questions wrongly refused
  val_perplexity        exp(mean token NLL) of the reference answers (or the given val_rows)
  pairwise_win_rate     blind comparison with the champion's answers on a sample (ties count half)
  stopped_early         only with general_floor: why the evaluation ended after the general skills
Forgetting is the caller's subtraction: champion general_score minus candidate general_score.
Each result carries `eval_key` (evaluation_key): a version's stored metrics stand in for a new
evaluation of it only under the same key (same suite rows, settings and base answers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kaizenlm.base.generate import generate_answers, prefix_cache, prompt_text, shared_prefix_length  # noqa: E402
from kaizenlm.config import EvalConfig  # noqa: E402
from kaizenlm.eval.choices import multiple_choice  # noqa: E402
from kaizenlm.eval.metrics import (  # noqa: E402
    exact_match,
    is_refusal,
    key_fact_score,
    rouge_l,
    token_f1,
)
from kaizenlm.eval.suite import Suite  # noqa: E402

log = logging.getLogger(__name__)

ModelSpec = str | Path | tuple  # a model directory, or (base directory, adapter directory or None)

# ---------------------------------------------------------------- model I/O


def load_for_eval(model: ModelSpec, precision: str = "fp32"):
    """(model, tokenizer) from a directory or a (base, adapter) pair, in eval mode, in `precision`
    (eval.precision; kaizenlm.base.model.inference_dtype)."""
    from kaizenlm.base.model import load_model_and_tokenizer

    if isinstance(model, tuple):
        base, adapter = model
        return load_model_and_tokenizer(base, adapter, precision)
    return load_model_and_tokenizer(model, precision=precision)


def answer_positions(labels):
    """Where an answer token is predicted (position t predicts token t + 1): the `logits_to_keep`
    mask that leaves the LM head and the softmax over the vocabulary out at prompt positions."""
    import torch

    return torch.cat([labels[:, 1:] != -100, torch.zeros_like(labels[:, :1], dtype=torch.bool)], dim=1)


def response_logprobs(model, tokenizer, rows: list[dict], batch_size: int = 32) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each row's response given its prompt.

    A batch's shared leading tokens (the chat template's system prompt, about half of a short
    exam row) run once (prefix_cache); each row's own tokens run on top, right-padded; logits
    only where an answer token is predicted."""
    import torch

    device = next(model.parameters()).device
    encoded = [_prompt_and_full(tokenizer, r) for r in rows]
    pad = tokenizer.pad_token_id
    out: list[tuple[float, int]] = []
    for i in range(0, len(rows), batch_size):
        batch = encoded[i:i + batch_size]
        # The position predicting a row's first answer token must be in its own tokens.
        n = shared_prefix_length([f for _, f in batch], limit=min(len(p) for p, _ in batch) - 1)
        cache = prefix_cache(model, batch[0][1][:n], len(batch))
        tails = [f[n:] for _, f in batch]
        labels = [[-100] * (len(p) - n) + f[len(p):] for p, f in batch]
        width = max(len(t) for t in tails)
        ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=device)
        lab = torch.tensor([y + [-100] * (width - len(y)) for y in labels], device=device)
        mask = torch.tensor([[1] * (n + len(t)) + [0] * (width - len(t)) for t in tails], device=device)
        positions = torch.arange(n, n + width, device=device).expand(len(batch), -1)
        keep = answer_positions(lab)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                           logits_to_keep=keep).logits.float()
        targets = lab[:, 1:][keep[:, :-1]]
        logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1).gather(-1, targets[:, None])[:, 0]
        counts = keep.sum(1).tolist()
        out += [(float(part.sum()), count) for part, count in zip(logp.split(counts), counts, strict=True)]
    return out


def _prompt_and_full(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """The token ids of a row's chat-formatted prompt, and of the prompt with its response."""
    from kaizenlm.base.model import as_messages

    prompt = prompt_text(tokenizer, row["prompt"])
    if tokenizer.chat_template is not None:
        full = tokenizer.apply_chat_template(
            as_messages(row["prompt"]) + [{"role": "assistant", "content": row["response"]}], tokenize=False)
    else:
        full = prompt + " " + row["response"] + (tokenizer.eos_token or "")
    return (tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(full, add_special_tokens=False)["input_ids"])


def perplexity(model, tokenizer, rows: list[dict]) -> float:
    """exp(mean NLL per answer token) of rows {prompt, response} under the model."""
    scores = response_logprobs(model, tokenizer, rows)
    return math.exp(-sum(lp for lp, _ in scores) / max(1, sum(n for _, n in scores)))


def preference_margin(model, tokenizer, pairs: list[dict]) -> float:
    """Mean log p(chosen) - log p(rejected) over pairs {prompt, chosen, rejected} (summed over tokens)."""
    chosen = response_logprobs(model, tokenizer, [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs])
    rejected = response_logprobs(model, tokenizer, [{"prompt": p["prompt"], "response": p["rejected"]} for p in pairs])
    return _mean(c - r for (c, _), (r, _) in zip(chosen, rejected, strict=True))


# ---------------------------------------------------------------- pairwise judges


def reference_judge(question: str, answer_a: str, answer_b: str, reference: str) -> float:
    """1.0 if A is closer to the reference, 0.0 if B is, 0.5 for a tie (key facts, then token F1, then ROUGE-L)."""
    a = (key_fact_score(answer_a, reference), token_f1(answer_a, reference), rouge_l(answer_a, reference))
    b = (key_fact_score(answer_b, reference), token_f1(answer_b, reference), rouge_l(answer_b, reference))
    return 1.0 if a > b else 0.0 if b > a else 0.5


def llm_judge(cfg: EvalConfig, question: str, answer_a: str, answer_b: str, reference: str) -> float:
    """Ask an OpenAI-compatible judge which answer is better; 1.0 = A, 0.0 = B, 0.5 = tie."""
    from openai import OpenAI

    client = OpenAI(base_url=cfg.judge_url, api_key=os.environ.get(cfg.judge_api_key_env) or "none", timeout=60,
                    max_retries=1)
    content = (
        "You compare two answers of a support assistant. Reply with exactly one letter: "
        "A if answer A is better, B if answer B is better, T if they are equally good.\n"
        f"Question: {question}\nReference answer: {reference}\nAnswer A: {answer_a}\nAnswer B: {answer_b}"
    )
    reply = client.chat.completions.create(
        model=cfg.judge_model or "judge", messages=[{"role": "user", "content": content}], max_tokens=2, temperature=0)
    verdict = (reply.choices[0].message.content or "").strip().upper()[:1]
    return {"A": 1.0, "B": 0.0}.get(verdict, 0.5)


def pairwise(questions: list[str], candidate: list[str], champion: list[str], references: list[str],
             cfg: EvalConfig, seed: int = 0) -> dict:
    """Blind pairwise comparison: each pair is shown in random order; returns the candidate's win rate."""
    rng = random.Random(seed)
    wins = losses = ties = judge_errors = 0
    judge = "llm" if cfg.judge_url else "reference"
    for q, cand, champ, ref in zip(questions, candidate, champion, references, strict=True):
        swap = rng.random() < 0.5
        a, b = (champ, cand) if swap else (cand, champ)
        if judge == "llm":
            try:
                score = llm_judge(cfg, q, a, b, ref)
            except Exception as e:  # a judge outage must not fail the evaluation: fall back per item
                judge_errors += 1
                log.warning("LLM judge failed (%s); using the reference judge for this item", e)
                score = reference_judge(q, a, b, ref)
        else:
            score = reference_judge(q, a, b, ref)
        cand_score = 1.0 - score if swap else score
        if cand_score == 1.0:
            wins += 1
        elif cand_score == 0.0:
            losses += 1
        else:
            ties += 1
    n = wins + losses + ties
    return {"pairwise_win_rate": (wins + 0.5 * ties) / n if n else None, "pairwise_wins": wins,
            "pairwise_losses": losses, "pairwise_ties": ties, "pairwise_n": n, "judge": judge,
            "judge_errors": judge_errors}


# ---------------------------------------------------------------- evaluation and gates

GATED_KEYS = ("domain_score", "general_score", "refusal_rate")


def evaluation_key(suite: Suite, cfg: EvalConfig, base_answers: list[dict] | None) -> str:
    """What a model's scores depend on besides the model: the suite's rows (an edited suite file
    keeps its path), the settings that change a score (the dtype eval.precision resolves to among
    them), and the base answers general agreement compares with."""
    from kaizenlm.base.model import inference_dtype_name

    parts = {"suite": suite.content_hash(), "max_new_tokens": cfg.max_new_tokens,
             "retention_metric": cfg.retention_metric, "mc_length_normalized": cfg.mc_length_normalized,
             "similarity": cfg.similarity, "dtype": inference_dtype_name(cfg.precision),
             "base_answers": [[r["prompt"], r["response"]] for r in base_answers or []]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def reusable(stored: dict | None, key: str) -> bool:
    """True when a version's stored metrics were measured under `key` and hold what the gates compare:
    they then stand in for evaluating that version again."""
    return bool(stored) and stored.get("eval_key") == key and all(k in stored for k in GATED_KEYS)


def evaluate(
    model: ModelSpec,
    suite: Suite,
    cfg: EvalConfig | None = None,
    champion: ModelSpec | dict | None = None,
    val_rows: list[dict] | None = None,
    seed: int = 0,
    loaded=None,
    base_answers: list[dict] | None = None,
    general_floor: float | None = None,
) -> dict:
    """Evaluate a model on a suite; see the module docstring for the metrics.

    model: a directory or (base, adapter). champion: the champion's metrics dict from an
    earlier evaluate() (its `answers` are reused) or a model spec; None skips the pairwise
    comparison. val_rows: {prompt, response} rows for perplexity (default: the domain
    references). loaded: an already loaded (model, tokenizer) to skip loading. base_answers:
    {prompt, response} rows the base model gave to held-out general prompts (kaizenlm.base.general):
    general_agreement is how much of them the model still says. general_floor: the general_score
    below which the retention gate fails anyway; the general skills are measured first, and a
    score under it ends the evaluation there (`stopped_early` says why; no domain or refusal
    scores, no eval_key: such metrics never stand in for a full evaluation).
    """
    cfg = cfg or EvalConfig()
    started = time.perf_counter()
    net, tokenizer = loaded or load_for_eval(model, cfg.precision)
    metrics: dict = _general_metrics(net, tokenizer, suite.general, cfg)
    base_answers = base_answers or []
    agreement_first = bool(base_answers) and cfg.retention_metric == "agreement"  # the floor needs it now
    if agreement_first:
        metrics.update(_agreement(tokenizer, base_answers, _generate(net, tokenizer, base_answers, cfg), cfg))
    metrics["general_score"] = metrics.get(RETENTION_METRICS[cfg.retention_metric], metrics["general_score"])
    if general_floor is not None and metrics["general_score"] < general_floor:
        metrics["stopped_early"] = (f"general_score {metrics['general_score']:.3f} < {general_floor:.3f}: the "
                                    "retention gate fails whatever the rest says; domain and refusal not measured")
        metrics["suite"] = suite.source
        metrics["eval_seconds"] = round(time.perf_counter() - started, 1)
        return metrics
    exam = suite.domain
    # Every answer still to generate in one call: fewer, fuller batches than one call per part.
    later = [] if agreement_first else base_answers
    generated = _generate(net, tokenizer, [*later, *exam, *suite.refusal], cfg)
    if later:
        metrics.update(_agreement(tokenizer, later, generated[:len(later)], cfg))
    answers = generated[len(later):len(later) + len(exam)]
    oos_answers = generated[len(later) + len(exam):]
    metrics.update(_domain_metrics(answers, exam, suite.refusals(), cfg))
    metrics["refusal_rate"] = _mean(is_refusal(a, r["reference"]) for a, r in zip(oos_answers, suite.refusal,
                                                                                  strict=True))
    metrics["n_refusal"] = len(oos_answers)
    ppl_rows = val_rows or [{"prompt": r["prompt"], "response": r["reference"]} for r in exam]
    metrics["val_perplexity"] = perplexity(net, tokenizer, ppl_rows)
    metrics["answers"] = dict(zip([r["prompt"] for r in exam], answers, strict=True))
    if champion is not None and cfg.pairwise_sample > 0:
        metrics.update(_compare_with_champion(champion, exam, answers, cfg, seed))
    metrics["suite"] = suite.source
    metrics["eval_key"] = evaluation_key(suite, cfg, base_answers)
    metrics["eval_seconds"] = round(time.perf_counter() - started, 1)
    return metrics


def _generate(net, tokenizer, rows: list[dict], cfg: EvalConfig) -> list[str]:
    return generate_answers(net, tokenizer, [r["prompt"] for r in rows], cfg.max_new_tokens)


def _agreement(tokenizer, base_answers: list[dict], answers_now: list[str], cfg: EvalConfig) -> dict:
    """general_agreement: token F1 of the model's answers with the base's own to the same prompts."""
    # The base answered once with more tokens than an evaluation generates: compare like with
    # like, so the base itself agrees with its own answers (~1.0 in fp32; ~0.94 in bf16, whose
    # rounding depends on the batch a prompt runs in) and the ratio reads as retention.
    base_now = [_first_tokens(tokenizer, r["response"], cfg.max_new_tokens) for r in base_answers]
    return {"general_agreement": _mean(token_f1(a, b) for a, b in zip(answers_now, base_now, strict=True)),
            "n_general_agreement": len(base_answers)}


def _domain_metrics(answers: list[str], exam: list[dict], refusals: set[str], cfg: EvalConfig) -> dict:
    """The domain exam: key facts stated (domain_score, what the gate compares), word overlap,
    embedding similarity to the reference, and how often a domain question was refused."""
    pairs = list(zip(answers, exam, strict=True))
    metrics = {
        "domain_score": _mean(key_fact_score(a, r["reference"], r.get("must_include")) for a, r in pairs),
        "domain_exact_match": _mean(exact_match(a, r["reference"]) for a, r in pairs),
        "domain_token_f1": _mean(token_f1(a, r["reference"]) for a, r in pairs),
        "domain_rouge_l": _mean(rouge_l(a, r["reference"]) for a, r in pairs),
        "false_refusal_rate": _mean(any(is_refusal(a, text) for text in refusals) for a in answers),
        "n_exam": len(exam),
    }
    if cfg.similarity and exam:
        metrics["domain_similarity"] = _mean(similarities(answers, [r["reference"] for r in exam]))
    return metrics


def _first_tokens(tokenizer, text: str, n: int) -> str:
    """The first n tokens of text (what a generation capped at n new tokens can say)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return tokenizer.decode(ids, skip_special_tokens=True)


RETENTION_METRICS = {"choice_prob": "general_mc_prob", "choices": "general_mc_accuracy",
                     "agreement": "general_agreement"}


def _general_metrics(net, tokenizer, rows: list[dict], cfg: EvalConfig) -> dict:
    """General skills: multiple-choice rows by log-likelihood (general_mc_accuracy, general_mc_prob),
    free-form rows by token F1 against their reference (general_reference_f1). The general_score
    set here (multiple-choice accuracy, else that F1) is the fallback: evaluate() replaces it by
    eval.retention_metric's measure whenever that was measured."""
    mc = [r for r in rows if r.get("choices")]
    free = [r for r in rows if not r.get("choices")]
    by_skill: dict[str, list[float]] = defaultdict(list)
    metrics: dict = {"n_general": len(rows)}
    if mc:
        scored = multiple_choice(net, tokenizer, [{**r, "answer": r["choices"].index(r["reference"])} for r in mc])
        picks = scored["picks_norm"] if cfg.mc_length_normalized else scored["picks"]
        for pick, r in zip(picks, mc, strict=True):
            by_skill[r.get("skill", "general")].append(float(r["choices"][pick] == r["reference"]))
        metrics["general_mc_accuracy"] = scored["acc_norm"] if cfg.mc_length_normalized else scored["acc"]
        metrics["general_mc_prob"] = scored["prob"]
    if free:
        answers = generate_answers(net, tokenizer, [r["prompt"] for r in free], cfg.max_new_tokens)
        agreement = [token_f1(a, r["reference"]) for a, r in zip(answers, free, strict=True)]
        if not mc:
            for score, r in zip(agreement, free, strict=True):
                by_skill[r.get("skill", "general")].append(score)
        metrics["general_reference_f1"] = _mean(agreement)
    metrics["general_score"] = metrics.get("general_mc_accuracy", metrics.get("general_reference_f1", 0.0))
    metrics["general_by_skill"] = {k: _mean(v) for k, v in sorted(by_skill.items())}
    return metrics


def _compare_with_champion(champion: ModelSpec | dict, exam: list[dict], answers: list[str],
                           cfg: EvalConfig, seed: int) -> dict:
    sample = random.Random(seed).sample(range(len(exam)), min(cfg.pairwise_sample, len(exam)))
    questions = [exam[i]["prompt"] for i in sample]
    if isinstance(champion, dict):
        champ_answers = [champion["answers"][q] for q in questions]
    else:
        net, tok = load_for_eval(champion, cfg.precision)
        champ_answers = generate_answers(net, tok, questions, cfg.max_new_tokens)
    return pairwise(questions, [answers[i] for i in sample], champ_answers,
                    [exam[i]["reference"] for i in sample], cfg, seed)


def gate(candidate: dict, champion: dict | None, cfg: EvalConfig | None = None) -> tuple[bool, list[str]]:
    """May the candidate become the challenger? Returns (passed, one 'pass: ...' / 'fail: ...' line per check).

    Checks: domain score improves by more than eval.min_domain_gain; general-skill score is at
    least eval.min_retention of the champion's; refusal rate is at most eval.max_refusal_drop
    below the champion's. With no champion (the first model) every check passes.
    """
    cfg = cfg or EvalConfig()
    if champion is None:
        return True, ["pass: no champion to compare with"]
    if any(k not in candidate for k in GATED_KEYS):  # an evaluation that stopped early (general_floor)
        return _gate_on_what_was_measured(candidate, champion, cfg)
    reasons = []
    cand_d, champ_d = candidate["domain_score"], champion["domain_score"]
    ok_domain = cand_d > champ_d + cfg.min_domain_gain
    reasons.append(f"{'pass' if ok_domain else 'fail'}: domain score {cand_d:.3f} vs champion {champ_d:.3f} "
                   f"(must exceed it by more than {cfg.min_domain_gain:.3f})")
    ok_general, line = _retention_check(candidate, champion, cfg)
    reasons.append(line)
    cand_r, champ_r = candidate["refusal_rate"], champion["refusal_rate"]
    ok_refusal = cand_r >= champ_r - cfg.max_refusal_drop - 1e-12
    reasons.append(f"{'pass' if ok_refusal else 'fail'}: refusal rate {cand_r:.3f} vs champion {champ_r:.3f} "
                   f"(may drop at most {cfg.max_refusal_drop:.3f})")
    return ok_domain and ok_general and ok_refusal, reasons


def _gate_on_what_was_measured(candidate: dict, champion: dict, cfg: EvalConfig) -> tuple[bool, list[str]]:
    """The retention line for a candidate whose evaluation stopped at its general skills, and a
    failing line for each check it never reached: a gate passes only on measured numbers."""
    reasons = [_retention_check(candidate, champion, cfg)[1]]
    reasons += [f"fail: {name} not measured (the evaluation stopped after the retention check)"
                for key, name in (("domain_score", "domain score"), ("refusal_rate", "refusal rate"))
                if key not in candidate]
    return False, reasons


def _retention_check(candidate: dict, champion: dict, cfg: EvalConfig) -> tuple[bool, str]:
    """Does the candidate keep at least eval.min_retention of the champion's general score? And the gate line."""
    kept = retention(candidate, champion)
    ok = kept >= cfg.min_retention
    return ok, (f"{'pass' if ok else 'fail'}: general-skill retention {kept:.3f} ({candidate['general_score']:.3f} "
                f"vs {champion['general_score']:.3f}; must be >= {cfg.min_retention:.3f})")


def retention(candidate: dict, champion: dict) -> float:
    """Candidate general score as a fraction of the champion's (1.0 = nothing forgotten)."""
    return candidate["general_score"] / champion["general_score"] if champion["general_score"] > 0 else 1.0


def similarities(answers: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of each answer to its reference under all-MiniLM-L6-v2 (knowledge.embed)."""
    from kaizenlm.knowledge.embed import load_embedder

    embedder = load_embedder()
    a, b = embedder.encode(answers), embedder.encode(references)
    return [float(x) for x in (a * b).sum(axis=1)]


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0


