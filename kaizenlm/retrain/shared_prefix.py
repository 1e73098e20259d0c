"""Shared-prefix batches: the tokens every row of a batch starts with, computed once per batch.

Why: a chat template puts the same system prompt and user header before every row
(SmolLM2-135M-Instruct: 24 of a demo row's ~48 tokens). In a padding-free batch each row
computes them again. Here the batch becomes the prefix once, then each row's rest, with an
attention mask that lets every rest attend to the prefix and causally to itself: the same
logits at every rest position (causal attention over the same tokens), so the same loss and
gradients, for ~35% less work in the SFT batch and ~20% less in the KL anchor's (measured:
docs/TRAINING.md "Training speed and scale"). The one difference, with LoRA dropout on (the
embedded recipe has none): one dropout mask for the shared prefix instead of one per row.

Used on CPU with PyTorch's SDPA attention (`usable`, asked by lora_sft.train_sft for padding-free
batches, by lora_dpo.train_dpo for TRL's padded preference batches, through `fused_calls_shared`,
and by anchor.setup_anchor), where the padding-free batch already runs under a dense
block-diagonal mask; never with the GPU's variable-length kernel, which takes no custom mask.
"""

from __future__ import annotations

import contextlib

import torch

from kaizenlm.base.generate import MIN_SHARED_PREFIX, common_prefix_length

# Fewer shared tokens than this: not worth a different batch layout (generation's threshold too).
MIN_PREFIX = MIN_SHARED_PREFIX
# What TRL's padding-free collator adds for variable-length kernels: row boundaries of the old
# layout, which the mask now carries.
_ROW_BOUNDS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def prefix_length(rows: list[tuple[list[int], list[int]]]) -> int:
    """The number of leading tokens all rows (ids, labels) share, ending before the position that
    predicts any row's first labelled token (that position must stay in its own row), so that
    every scored position is in a row's rest."""
    return common_prefix_length([ids for ids, _ in rows],
                                limit=min((_first_label(labels) - 1 for _, labels in rows), default=0))


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


# ---------------------------------------------------------------- padded batches through TRL's fused LM head

# The per-token fields of TRL's FusedCausalLMOutput (shape: batch x (width - 1)).
_FUSED_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def rows_of_padded(inputs: dict) -> list[tuple[list[int], list[int]]] | None:
    """The (ids, labels) rows of a right-padded batch (a 2-D attention mask of ones, then zeros),
    or None when `inputs` is not one."""
    mask, labels = inputs.get("attention_mask"), inputs.get("labels")
    if mask is None or labels is None or mask.dim() != 2 or "position_ids" in inputs:
        return None
    lengths = mask.sum(1)
    if not torch.equal(mask.bool(), torch.arange(mask.shape[1], device=mask.device)[None] < lengths[:, None]):
        return None  # left padding, or holes
    ids, label_rows = inputs["input_ids"].tolist(), labels.tolist()
    return [(ids[i][:n], label_rows[i][:n]) for i, n in enumerate(lengths.tolist())]


def unpack_shifted(values: torch.Tensor, rows: list[tuple[list[int], list[int]]], n: int, width: int) -> torch.Tensor:
    """Shifted per-token outputs of a packed sequence ((1, tokens - 1): index j scores token j + 1)
    laid out as the padded batch's (rows, width - 1), at the labelled positions (zero elsewhere, as
    TRL leaves them); differentiable."""
    dst, src, offset = [], [], n
    for i, (ids, labels) in enumerate(rows):
        for t in range(n + 1, len(ids)):  # a rest's first token (n) is never labelled (prefix_length)
            if labels[t] != -100:
                dst.append(i * (width - 1) + t - 1)
                src.append(offset + t - n - 1)
        offset += len(ids) - n
    flat = values.new_zeros(len(rows) * (width - 1))
    index = torch.tensor(dst, dtype=torch.long, device=values.device)
    picked = values[0, torch.tensor(src, dtype=torch.long, device=values.device)]
    return flat.index_put((index,), picked).view(len(rows), width - 1)


@contextlib.contextmanager
def fused_calls_shared(model):
    """Within it, a call of `model` with TRL's fused LM head (`fused_lm_head=True`) on a right-padded
    batch whose rows share at least MIN_PREFIX tokens runs in the shared layout, and its per-token
    outputs come back in the padded batch's shape: how TRL's DPO batches (every chosen and rejected
    answer after the same system prompt) compute that prompt once. Yields a dict whose "tokens" counts
    the real tokens not computed again in gradient-tracking calls (the policy's, not the reference's)."""
    had_own = "forward" in vars(model)
    original = model.forward
    saved = {"tokens": 0}

    def forward(*args, **kwargs):
        rows = rows_of_padded(kwargs) if kwargs.get("fused_lm_head") and not args else None
        n = prefix_length(rows) if rows else 0
        if n < MIN_PREFIX:
            return original(*args, **kwargs)
        width = kwargs["input_ids"].shape[1]
        packed = pack(rows, n, kwargs["input_ids"].device)
        out = original(**{k: v for k, v in kwargs.items() if k not in packed}, **packed)
        if torch.is_grad_enabled():
            saved["tokens"] += sum(len(ids) for ids, _ in rows) - packed["input_ids"].shape[1]
        fields = {f: unpack_shifted(out[f], rows, n, width) for f in _FUSED_FIELDS if out.get(f) is not None}
        return type(out)(**{**dict(out.items()), **fields})

    model.forward = forward
    try:
        yield saved
    finally:
        if had_own:
            model.forward = original
        else:
            del model.forward

