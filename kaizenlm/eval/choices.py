"""Multiple-choice questions scored by log-likelihood, as lm-evaluation-harness scores ARC-style
tasks: the model "answers" with the choice whose text it finds most likely after the chat-formatted
question. No generation, no wording: a retrain that rephrases but still knows scores the same,
one that forgot (e.g. "CPU stands for Central Processing Unit" -> "Control Unit") does not.

    scores = multiple_choice(model, tokenizer, rows)   # rows: {prompt, choices, answer (index)}

`acc` compares summed log-probabilities; `acc_norm` divides each by the choice's length in
characters (lm-evaluation-harness's acc_norm uses bytes; the same for ASCII choices).

Cost: every (question, choice) pair is one sequence; sequences of all questions are batched
together, left-padded so that every choice ends at the last position, and the LM head runs only
on the last few positions (`logits_to_keep`): on CPU the batch size, not the sequence count,
decides the speed.
"""

from __future__ import annotations

from kaizenlm.base.generate import prompt_text

BATCH = 32


def _sequences(tokenizer, rows: list[dict]) -> list[tuple[int, int, list[int], int]]:
    """(row index, choice index, token ids, number of choice tokens) for every pair."""
    out = []
    for i, row in enumerate(rows):
        context = tokenizer(prompt_text(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"]
        for j, choice in enumerate(row["choices"]):
            tail = tokenizer(choice, add_special_tokens=False)["input_ids"]
            out.append((i, j, context + tail, len(tail)))
    return out


def choice_logprobs(model, tokenizer, rows: list[dict]) -> list[list[float]]:
    """Summed log p(choice tokens | chat-formatted prompt), per row and choice."""
    import torch

    seqs = sorted(_sequences(tokenizer, rows), key=lambda s: len(s[2]))
    scores = [[0.0] * len(r["choices"]) for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for start in range(0, len(seqs), BATCH):
        batch = seqs[start:start + BATCH]
        width = max(len(s[2]) for s in batch)
        keep = max(n for *_, n in batch) + 1  # logits of the last `keep` positions predict the choice tokens
        ids = torch.tensor([[pad] * (width - len(s[2])) + s[2] for s in batch], device=device)
        mask = torch.tensor([[0] * (width - len(s[2])) + [1] * len(s[2]) for s in batch], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position p predicts token p + 1 of the kept tail
        for k, (i, j, seq, n) in enumerate(batch):
            targets = torch.tensor(seq[-n:], device=device)
            scores[i][j] = float(logp[k, keep - 1 - n:, :].gather(-1, targets.unsqueeze(-1)).sum())
    return scores


def multiple_choice(model, tokenizer, rows: list[dict]) -> dict:
    """acc, acc_norm and the chosen index per row for rows {prompt, choices, answer (index)}."""
    picks, picks_norm = [], []
    for row, scores in zip(rows, choice_logprobs(model, tokenizer, rows), strict=True):
        normed = [s / max(1, len(c)) for s, c in zip(scores, row["choices"], strict=True)]
        picks.append(max(range(len(scores)), key=scores.__getitem__))
        picks_norm.append(max(range(len(normed)), key=normed.__getitem__))
    n = max(1, len(rows))
    return {"acc": sum(p == r["answer"] for p, r in zip(picks, rows, strict=True)) / n,
            "acc_norm": sum(p == r["answer"] for p, r in zip(picks_norm, rows, strict=True)) / n,
            "picks": picks, "picks_norm": picks_norm}
