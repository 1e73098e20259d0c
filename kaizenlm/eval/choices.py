"""Multiple-choice questions scored by log-likelihood, as lm-evaluation-harness scores ARC-style
tasks: the model "answers" with the choice whose text it finds most likely after the chat-formatted
question. No generation, no wording: a retrain that rephrases but still knows scores the same,
one that forgot (e.g. "CPU stands for Central Processing Unit" -> "Control Unit") does not.

    scores = multiple_choice(model, tokenizer, rows)   # rows: {prompt, choices, answer (index)}

`acc` compares summed log-probabilities; `acc_norm` divides each by the choice's length in
characters (lm-evaluation-harness's acc_norm uses bytes; the same for ASCII choices). `prob` is
the mean probability of the right choice when the model's likelihoods are renormalised over the
choices (softmax of the summed log-probabilities): the same evidence as `acc` without the
threshold, so a question the model was unsure of moves it a little instead of a whole point.

Cost: a question's context (the chat template, ~40 tokens) runs once, its choices (~3 tokens
each) on top of its KV cache, and the system prompt all contexts of a batch share runs once;
questions are batched (on CPU the batch size, not the number of sequences, decides the speed).
"""

from __future__ import annotations

import math

from kaizenlm.base.generate import prefix_cache, prompt_text, shared_prefix_length

QUESTIONS_PER_BATCH = 16  # x 4 choices = 64 short sequences on top of the cache


def choice_logprobs(model, tokenizer, rows: list[dict]) -> list[list[float]]:
    """Summed log p(choice tokens | chat-formatted prompt), per row and choice.

    Each question's context runs once: a batch of contexts (left-padded) fills the KV cache,
    the cache is repeated once per choice, and only the choice tokens run on top of it (right-
    padded, positions continuing each context's own). The context is ~40 tokens and a choice
    ~3, so this costs about a third of scoring every (question, choice) sequence in full.
    """
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    contexts = [tokenizer(prompt_text(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"] for r in rows]
    tails = [[tokenizer(c, add_special_tokens=False)["input_ids"] for c in r["choices"]] for r in rows]
    scores: list[list[float]] = [[] for _ in rows]
    order = sorted(range(len(rows)), key=lambda i: len(contexts[i]))  # similar lengths: little padding
    for start in range(0, len(order), QUESTIONS_PER_BATCH):
        idx = order[start:start + QUESTIONS_PER_BATCH]
        # The batch's shared leading tokens (the chat template's system prompt) run once; each
        # context's own tokens run on top, left-padded after them.
        n = shared_prefix_length([contexts[i] for i in idx])
        own = [contexts[i][n:] for i in idx]
        width = max(len(c) for c in own)
        ctx_ids = torch.tensor([[pad] * (width - len(c)) + c for c in own], device=device)
        ctx_mask = torch.tensor([[1] * n + [0] * (width - len(c)) + [1] * len(c) for c in own], device=device)
        with torch.no_grad():
            out = model(input_ids=ctx_ids, attention_mask=ctx_mask,
                        position_ids=(ctx_mask.cumsum(-1) - 1).clamp(min=0)[:, n:],
                        cache=prefix_cache(model, contexts[idx[0]][:n], len(idx)), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each choice's first token
        pairs = [(k, j) for k, i in enumerate(idx) for j in range(len(tails[i]))]
        cache = out.cache
        cache.batch_select_indices(torch.tensor([k for k, _ in pairs], device=device))
        tail_w = max(len(tails[idx[k]][j]) for k, j in pairs)
        tail_ids = torch.tensor([tails[idx[k]][j] + [pad] * (tail_w - len(tails[idx[k]][j])) for k, j in pairs],
                                device=device)
        tail_mask = torch.tensor([[1] * len(tails[idx[k]][j]) + [0] * (tail_w - len(tails[idx[k]][j]))
                                  for k, j in pairs], device=device)
        lengths = torch.tensor([len(contexts[idx[k]]) for k, _ in pairs], device=device)
        positions = lengths.unsqueeze(1) + torch.arange(tail_w, device=device).unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=tail_ids, attention_mask=torch.cat([ctx_mask[[k for k, _ in pairs]], tail_mask], 1),
                           position_ids=positions, cache=cache, use_cache=False).logits.float()
        logp = torch.log_softmax(logits, dim=-1)  # position t predicts tail token t + 1
        for row, (k, j) in enumerate(pairs):
            tail = tails[idx[k]][j]
            total = float(first[k, tail[0]])
            if len(tail) > 1:
                targets = torch.tensor(tail[1:], device=device)
                total += float(logp[row, : len(tail) - 1].gather(-1, targets.unsqueeze(-1)).sum())
            scores[idx[k]].append(total)
    return scores


def multiple_choice(model, tokenizer, rows: list[dict]) -> dict:
    """acc, acc_norm, prob and the chosen index per row for rows {prompt, choices, answer (index)}."""
    picks, picks_norm, probs = [], [], []
    for row, scores in zip(rows, choice_logprobs(model, tokenizer, rows), strict=True):
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        probs.append(weights[row["answer"]] / sum(weights))
        normed = [s / max(1, len(c)) for s, c in zip(scores, row["choices"], strict=True)]
        picks.append(max(range(len(scores)), key=scores.__getitem__))
        picks_norm.append(max(range(len(normed)), key=normed.__getitem__))
    n = max(1, len(rows))
    return {"acc": sum(p == r["answer"] for p, r in zip(picks, rows, strict=True)) / n,
            "acc_norm": sum(p == r["answer"] for p, r in zip(picks_norm, rows, strict=True)) / n,
            "prob": sum(probs) / n, "picks": picks, "picks_norm": picks_norm}
