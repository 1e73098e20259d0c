"""Multiple-choice questions scored by log-likelihood, as lm-evaluation-harness scores ARC-style
tasks: the model "answers" with the choice whose text it finds most likely after the chat-formatted
question. No generation, no wording: a retrain that rephrases but still knows scores the same,
one that forgot (e.g. "CPU stands for Central Processing Unit" -> "Control Unit") does not.

    accuracy, per_row = multiple_choice(model, tokenizer, rows)   # rows: {prompt, choices, answer}

`acc` compares summed log-probabilities; `acc_norm` divides each by the choice's length in
characters (lm-evaluation-harness's acc_norm uses bytes; the same for ASCII choices).
"""

from __future__ import annotations

from kaizenlm.base.generate import prompt_text


def choice_logprobs(model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """Summed log p(choice tokens | chat-formatted prompt) for each choice, in one batch."""
    import torch

    context = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    seqs = [context + tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
    out = []
    for row, seq in enumerate(seqs):
        targets = torch.tensor(seq[len(context):], device=device)
        positions = torch.arange(len(context) - 1, len(seq) - 1, device=device)
        out.append(float(logp[row, positions, targets].sum()))
    return out


def multiple_choice(model, tokenizer, rows: list[dict]) -> dict:
    """acc, acc_norm and the chosen index per row for rows {prompt, choices, answer (index)}."""
    picks, picks_norm = [], []
    for row in rows:
        scores = choice_logprobs(model, tokenizer, row["prompt"], row["choices"])
        normed = [s / max(1, len(c)) for s, c in zip(scores, row["choices"], strict=True)]
        picks.append(max(range(len(scores)), key=scores.__getitem__))
        picks_norm.append(max(range(len(normed)), key=normed.__getitem__))
    n = max(1, len(rows))
    return {"acc": sum(p == r["answer"] for p, r in zip(picks, rows, strict=True)) / n,
            "acc_norm": sum(p == r["answer"] for p, r in zip(picks_norm, rows, strict=True)) / n,
            "picks": picks, "picks_norm": picks_norm}
