"""Shared-prefix batches: the tokens every row of a batch starts with, computed once per batch.

Why: a chat template puts the same system prompt and user header before every row
(SmolLM2-135M-Instruct: 24 of a demo row's ~48 tokens). In a padding-free batch each row
computes them again. Here the batch becomes the prefix once, then each row's rest, with an
attention mask that lets every rest attend to the prefix and causally to itself: the same
logits at every rest position (causal attention over the same tokens), so the same loss and
gradients, for ~35% less work in the SFT batch and ~20% less in the KL anchor's (measured:
docs/TRAINING.md "Training speed and scale"). The one difference: LoRA dropout draws one mask
for the shared prefix instead of one per row.

Used on CPU with PyTorch's SDPA attention (`usable`, asked by lora_sft.train_sft for padding-free
batches and by anchor.setup_anchor), where the padding-free batch already runs under a dense
block-diagonal mask; never with the GPU's variable-length kernel, which takes no custom mask.
"""

from __future__ import annotations

import torch

# Fewer shared tokens than this: not worth a different batch layout.
MIN_PREFIX = 4
# What TRL's padding-free collator adds for variable-length kernels: row boundaries of the old
# layout, which the mask now carries.
_ROW_BOUNDS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def prefix_length(rows: list[tuple[list[int], list[int]]]) -> int:
    """The number of leading tokens all rows (ids, labels) share, ending before the position that
    predicts any row's first labelled token (that position must stay in its own row), so that
    every scored position is in a row's rest."""
    if len(rows) < 2:
        return 0
    limit = min(_first_label(labels) - 1 for _, labels in rows)
    limit = min(limit, *(len(ids) - 1 for ids, _ in rows))
    first = rows[0][0]
    n = 0
    while n < limit and all(ids[n] == first[n] for ids, _ in rows):
        n += 1
    return n


def _first_label(labels: list[int]) -> int:
    return next((i for i, y in enumerate(labels) if y != -100), len(labels))


def pack(rows: list[tuple[list[int], list[int]]], n: int, device) -> dict:
    """input_ids, labels, position_ids (1, tokens) and a (1, 1, tokens, tokens) boolean
    attention mask (True: may attend) of `rows` sharing their first `n` tokens."""
    ids, labels, positions, segment = list(rows[0][0][:n]), [-100] * n, list(range(n)), [-1] * n
    for i, (row_ids, row_labels) in enumerate(rows):
        ids += row_ids[n:]
        labels += row_labels[n:]
        positions += range(n, len(row_ids))
        segment += [i] * (len(row_ids) - n)
    seg = torch.tensor(segment, device=device)
    index = torch.arange(len(ids), device=device)
    causal = index[:, None] >= index[None, :]
    own_row = (seg[:, None] == seg[None, :]) & causal
    prefix = (index[None, :] < n) & (causal | (index[:, None] >= n))  # the prefix: seen by all, causal within
    return {"input_ids": torch.tensor([ids], device=device), "labels": torch.tensor([labels], device=device),
            "position_ids": torch.tensor([positions], device=device), "attention_mask": (own_row | prefix)[None, None]}


def rows_of_padding_free(inputs: dict) -> list[tuple[list[int], list[int]]] | None:
    """The (ids, labels) rows of a padding-free batch (one sequence, position_ids restarting at 0
    for each row), or None when `inputs` is not one."""
    if "attention_mask" in inputs or "position_ids" not in inputs or inputs["input_ids"].shape[0] != 1:
        return None
    starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist() + [inputs["input_ids"].shape[1]]
    ids, labels = inputs["input_ids"][0].tolist(), inputs["labels"][0].tolist()
    return [(ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:]) if b > a]


def shared_batch(inputs: dict) -> tuple[dict, int] | None:
    """A padding-free SFT batch in the shared-prefix layout (other keys kept) and its token count
    before, or None when its rows share fewer than MIN_PREFIX tokens."""
    rows = rows_of_padding_free(inputs)
    if rows is None:
        return None
    n = prefix_length(rows)
    if n < MIN_PREFIX:
        return None
    packed = pack(rows, n, inputs["input_ids"].device)
    rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "labels", "position_ids", *_ROW_BOUNDS)}
    return {**rest, **packed}, int(inputs["input_ids"].shape[1])



def usable(model) -> bool:
    """True when `model` runs on the CPU with SDPA attention, which takes a boolean 4-D mask as it is."""
    config = getattr(model, "config", None)
    device = next(model.parameters()).device
    return device.type == "cpu" and getattr(config, "_attn_implementation", None) == "sdpa"
