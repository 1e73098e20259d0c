"""Greedy, batched generation with any base (+ adapter): what evaluation, the general answers,
the KL anchor's missing answers and the local backend's greedy batches use (its streamed and
sampled answers go through `generate`)."""

from __future__ import annotations

from kaizenlm.base.model import as_messages

# Fewer shared leading tokens than this: not worth running them apart.
MIN_SHARED_PREFIX = 4


def prompt_text(tokenizer, prompt: str) -> str:
    if tokenizer.chat_template is not None:
        return tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=False)
    return prompt


def common_prefix_length(seqs: list[list[int]], limit: int | None = None) -> int:
    """How many leading tokens all seqs share, leaving each at least one token of its own (the
    position whose logits are read) and at most `limit`."""
    if len(seqs) < 2:
        return 0
    cap = min(len(s) for s in seqs) - 1 if limit is None else min(limit, *(len(s) - 1 for s in seqs))
    first, n = seqs[0], 0
    while n < cap and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


def shared_prefix_length(seqs: list[list[int]], limit: int | None = None) -> int:
    """common_prefix_length, or 0 when it is below MIN_SHARED_PREFIX (not worth running apart)."""
    n = common_prefix_length(seqs, limit)
    return n if n >= MIN_SHARED_PREFIX else 0


def prefix_cache(model, prefix: list[int], rows: int):
    """The KV cache of `prefix` run once, repeated for `rows` rows: a batch whose prompts all start
    with the same chat-template system prompt (~20 of SmolLM2's ~40 prompt tokens) computes it once."""
    import torch

    if not prefix:
        return None
    device = next(model.parameters()).device
    with torch.no_grad():
        cache = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1).cache
    cache.batch_repeat_interleave(rows)
    return cache


def select_rows(cache, index):
    """A new cache holding the rows `index` of `cache` (which stays as it is): one cache serves
    several forward passes on different subsets of its rows."""
    import copy

    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(index)  # each layer rebinds its own tensors to the selection
    return selected


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy answers; special tokens and surrounding space removed."""
    return [text for text, _ in generate_with_ends(model, tokenizer, prompts, max_new_tokens, batch_size)]


def generate_with_ends(model, tokenizer, prompts: list[str], max_new_tokens: int = 32,
                       batch_size: int = 64) -> list[tuple[str, bool]]:
    """generate_answers, each with whether the model ended it (False: cut at max_new_tokens).

    Prompts are batched by length (little padding); each batch's shared leading tokens run once
    (prefix_cache) and a row leaves the batch when it ends, so a batch's steps cost what its
    unfinished rows cost. The same greedy tokens as `model.generate` (tests/test_generate.py)."""
    ids = [tokenizer(prompt_text(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    answers: list[tuple[str, bool]] = [("", False)] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        for i, tokens in zip(batch, greedy_tokens(model, [ids[i] for i in batch], max_new_tokens,
                                                  tokenizer.eos_token_id, tokenizer.pad_token_id), strict=True):
            ended = tokens[-1:] == [tokenizer.eos_token_id]
            answers[i] = (tokenizer.decode(tokens, skip_special_tokens=True).strip(), ended)
    return answers


# generation_config settings that change which token greedy decoding picks, with their no-op
# values: a model that sets one is decoded by `generate`, which applies them.
_LOGITS_SETTINGS = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                    "min_length": 0, "min_new_tokens": 0, "bad_words_ids": None, "sequence_bias": None,
                    "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
                    "forced_eos_token_id": None}


def plain_greedy(model) -> bool:
    """Whether greedy decoding of `model` is the argmax of its logits (no generation_config processors)."""
    cfg = getattr(model, "generation_config", None)
    return cfg is None or all(getattr(cfg, k, None) in (None, off) for k, off in _LOGITS_SETTINGS.items())


def greedy_tokens(model, seqs: list[list[int]], max_new_tokens: int, eos: int, pad: int | None) -> list[list[int]]:
    """The greedy continuation of each token sequence (ending with eos where the model ended it)."""
    import torch

    pad = 0 if pad is None else pad
    if not plain_greedy(model):
        return _generate_tokens(model, seqs, max_new_tokens, eos, pad)
    device = next(model.parameters()).device
    n = shared_prefix_length(seqs)
    cache = prefix_cache(model, seqs[0][:n], len(seqs))
    tails = [s[n:] for s in seqs]
    width = max(len(t) for t in tails)
    # Left-padded tails after the shared prefix; positions count each row's own tokens only.
    input_ids = torch.tensor([[pad] * (width - len(t)) + t for t in tails], device=device)
    mask = torch.tensor([[1] * n + [0] * (width - len(t)) + [1] * len(t) for t in tails], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, n:]
    out_tokens: list[list[int]] = [[] for _ in seqs]
    active = list(range(len(seqs)))  # the row of seqs behind each batch row
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                    logits_to_keep=1)
        next_position = positions[:, -1:] + 1
        for step in range(max_new_tokens):
            chosen = out.logits[:, -1].argmax(-1)
            for k, row in enumerate(active):
                out_tokens[row].append(int(chosen[k]))
            going = (chosen != eos).nonzero()[:, 0]
            if len(going) == 0 or step == max_new_tokens - 1:
                break
            cache = out.cache
            if len(going) < len(active):  # finished rows leave the batch and its cache
                cache.batch_select_indices(going)
                mask, chosen, next_position = mask[going], chosen[going], next_position[going]
                active = [active[k] for k in going.tolist()]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_position, cache=cache,
                        use_cache=True)
            next_position = next_position + 1
    return out_tokens


def _generate_tokens(model, seqs: list[list[int]], max_new_tokens: int, eos: int, pad: int) -> list[list[int]]:
    """greedy_tokens through `model.generate` (its logits processors apply), each cut after eos."""
    rows = padded_generate(model, seqs, max_new_tokens, eos, pad, do_sample=False)
    return [row[:row.index(eos) + 1] if eos in row else row for row in rows]


def padded_generate(model, seqs: list[list[int]], max_new_tokens: int, eos: int, pad: int, **sampling) -> list[list[int]]:
    """`model.generate` on the left-padded batch of token sequences: each row's new tokens (pad
    after an eos). `sampling`: generate's do_sample, temperature, top_p."""
    import torch

    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                             pad_token_id=pad, **sampling)
    return out[:, width:].tolist()
