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

Cost: a question's context (the chat template, ~40 tokens) runs once and its choices (~2 tokens
each) on top of its KV cache, less each choice's last token, whose prediction is never read (a
one-token choice costs nothing more); the system prompt all contexts of a batch share runs once.
Choices run in groups of similar length, so a long one does not pad the short ones: 160 questions
of the shipped general set score in ~11 s on 2 CPU cores instead of ~16 with all four choices of a
batch padded to its longest.
"""

from __future__ import annotations

import math

from kaizenlm.base.generate import prefix_cache, prompt_text, select_rows, shared_prefix_length

QUESTIONS_PER_BATCH = 16  # x 4 choices = 64 short sequences on top of the cache


def choice_logprobs(model, tokenizer, rows: list[dict]) -> list[list[float]]:
    """Summed log p(choice tokens | chat-formatted prompt), per row and choice.

    Each question's context runs once: a batch of contexts (left-padded) fills the KV cache and
    predicts every choice's first token; a choice's later tokens run on top of its question's rows
    of the cache (positions continuing the context's own), all but its last.
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
        for k, i in enumerate(idx):
            scores[i] = [float(first[k, tail[0]]) for tail in tails[i]]
        # A choice's later tokens: all but its last run on top of its question's cache (the last
        # token's prediction is never read), in groups of similar length (little padding).
        rest = [(k, j, len(tail) - 1) for k, i in enumerate(idx) for j, tail in enumerate(tails[i]) if len(tail) > 1]
        for group in _similar_lengths(rest, lambda item: item[2]):
            picked = [k for k, _, _ in group]  # each choice's question: its rows of the cache and mask
            cache = select_rows(out.cache, torch.tensor(picked, device=device))
            inputs = [tails[idx[k]][j][:-1] for k, j, _ in group]
            width = max(len(t) for t in inputs)
            tail_ids = torch.tensor([t + [pad] * (width - len(t)) for t in inputs], device=device)
            tail_mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in inputs], device=device)
            lengths = torch.tensor([len(contexts[idx[k]]) for k in picked], device=device)
            positions = lengths.unsqueeze(1) + torch.arange(width, device=device).unsqueeze(0)
            with torch.no_grad():
                logits = model(input_ids=tail_ids, attention_mask=torch.cat([ctx_mask[picked], tail_mask], 1),
                               position_ids=positions, cache=cache, use_cache=False).logits.float()
            logp = torch.log_softmax(logits, dim=-1)  # position t predicts tail token t + 1
            for row, (k, j, _) in enumerate(group):
                targets = torch.tensor(tails[idx[k]][j][1:], device=device)
                scores[idx[k]][j] += float(logp[row, : len(targets)].gather(-1, targets.unsqueeze(-1)).sum())
    return scores


def _similar_lengths(items: list, length) -> list[list]:
    """items in groups of similar length, shortest first: a group closes before its padded size
    (rows x its longest) would exceed twice its real tokens."""
    groups: list[list] = []
    real = 0
    for item in sorted(items, key=length):
        if groups and (len(groups[-1]) + 1) * length(item) <= 2 * (real + length(item)):
            groups[-1].append(item)
            real += length(item)
        else:
            groups.append([item])
            real = length(item)
    return groups


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
