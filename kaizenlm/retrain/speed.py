"""Training speed without a change to what is learnt: the two kernels-level choices the
recipes make beyond TRL's own settings (padding-free batches and gradient checkpointing are
plain SFTConfig arguments, chosen in training.hardware).

* `score_labelled_positions_only()`: TRL's fused LM head projects only the positions whose
  label is not -100 through the LM head on CUDA (its Triton path), but every position on other
  devices, so that a compiler (Neuron) sees one tile shape per batch shape. In eager PyTorch on
  CPU nothing is compiled per shape, and a chat row's loss covers only its answer: projecting
  the prompt positions through a 49,152-word head and back is pure waste (about a fifth of a
  SmolLM2-135M step). The loss, its gradient and the logged metrics are the same numbers.
* `register_sdpa_varlen()`: the attention implementation 'sdpa_varlen'. With padding-free
  batches (every row of the batch concatenated into one sequence, `cu_seq_lens_q` marking
  where each starts), plain SDPA would attend over the whole concatenation under a
  block-diagonal mask (quadratic in the batch's tokens); PyTorch's variable-length
  FlashAttention kernel (`torch.nn.attention.varlen.varlen_attn`, CUDA) attends within each
  row only, as flash-attn's varlen kernel does, without the flash-attn package. Padded
  batches (evaluation, generation) go to plain SDPA unchanged.
"""

from __future__ import annotations

import inspect
import logging

import torch

log = logging.getLogger("kaizenlm.retrain")

SDPA_VARLEN = "sdpa_varlen"


def score_labelled_positions_only() -> bool:
    """Make TRL's fused LM head score only labelled positions on every device (process-wide;
    idempotent). Returns False, and changes nothing, when this TRL has no such switch."""
    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)  # add_fused_lm_head's "compact" decision, nothing else
    if decide is None or not callable(decide):
        log.warning("this TRL version has no fused-LM-head compaction switch; every position is scored")
        return False
    if getattr(decide, "kaizen_compact", False):
        return True

    def compact_on_every_device(device: torch.device) -> bool:
        return True

    compact_on_every_device.kaizen_compact = True
    trl_utils._use_triton = compact_on_every_device
    return True


# ---------------------------------------------------------------- variable-length attention


def varlen_available() -> bool:
    """True when PyTorch has the variable-length attention kernel and a CUDA device to run it."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def register_sdpa_varlen() -> str:
    """Register 'sdpa_varlen' (attention and mask functions) with transformers; returns the name
    to pass as attn_implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention)
    AttentionMaskInterface.register(SDPA_VARLEN, _varlen_mask)
    return SDPA_VARLEN


def _varlen_mask(*args, attention_mask=None, **kwargs):
    """No mask for unpadded input (the attention finds the rows itself); SDPA's 4-D mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def sdpa_varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          is_causal=None, **kwargs):
    """transformers attention function: query (1, heads, tokens, dim) of concatenated rows ->
    (1, tokens, heads, dim), each row attending causally to itself only. Falls back to SDPA for
    padded batches, dropout, or when no row boundaries are known."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = _row_bounds(query, attention_mask, kwargs)
    if bounds is None or dropout > 0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    cu_q, cu_k, max_q, max_k = bounds
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (tokens, heads, dim)
    groups = q.shape[1] // k.shape[1]
    out = varlen_causal(q, k, v, cu_q, cu_k, max_q, max_k, scaling, groups)
    return out.unsqueeze(0), None


def _row_bounds(query, attention_mask, kwargs):
    """(cu_seq_lens_q, cu_seq_lens_k, max_q, max_k) of a padding-free batch, or None."""
    if attention_mask is not None or query.shape[0] != 1:
        return None
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None:
        return cu_q.to(torch.int32), cu_k.to(torch.int32), int(kwargs["max_length_q"]), int(kwargs["max_length_k"])
    position_ids = kwargs.get("position_ids")
    if position_ids is None or position_ids.shape[-1] != query.shape[2]:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten()
    if starts.numel() <= 1:
        return None  # one row: plain causal SDPA is the same and as fast
    cu = torch.cat([starts, torch.tensor([position_ids.shape[-1]], device=starts.device)]).to(torch.int32)
    longest = int(cu.diff().max())
    return cu, cu, longest, longest


def varlen_causal(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale, groups: int):
    """Causal attention within each row of concatenated (tokens, heads, dim) tensors."""
    kernel = _varlen_kernel()
    params = inspect.signature(kernel).parameters
    options = {"scale": scale}
    if groups > 1:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "is_causal" in params:  # torch 2.10-2.11
        options["is_causal"] = True
    else:  # later: causal is a window with no look-ahead
        options["window_size"] = (-1, 0)
    return kernel(q, k, v, cu_q, cu_k, max_q, max_k, **options)


def _varlen_kernel():
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn
