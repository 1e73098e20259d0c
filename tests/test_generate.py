"""Greedy generation (kaizenlm.base.generate): the shared-prefix cache and rows leaving the batch
when they end give the same tokens as transformers' own `generate` on a padded batch."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kaizenlm.base.generate import MIN_SHARED_PREFIX, greedy_tokens, plain_greedy, select_rows, shared_prefix_length

PAD = 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def reference(model, seqs: list[list[int]], max_new_tokens: int, eos: int) -> list[list[int]]:
    """model.generate on the left-padded batch, each row cut after its first eos."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[PAD] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=PAD)
    rows = out[:, width:].tolist()
    return [row[:row.index(eos) + 1] if eos in row else row[:max_new_tokens] for row in rows]


def rows(prefix_len: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1, 300, (prefix_len,), generator=gen).tolist()
    return [prefix + torch.randint(1, 300, (n,), generator=gen).tolist() for n in (1, 3, 6, 2, 9, 4)]


def frequent_token(model, seqs: list[list[int]]) -> int:
    """A token the model generates early in several rows: as eos, rows end at different steps."""
    free = reference(model, seqs, 8, eos=-1)
    counts: dict[int, int] = {}
    for row in free:
        for t in set(row[1:5]):
            counts[t] = counts.get(t, 0) + 1
    return max(counts, key=counts.get)


@pytest.mark.parametrize("prefix_len", [12, 0])
def test_greedy_tokens_equal_transformers_generate(model, prefix_len):
    seqs = rows(prefix_len, seed=prefix_len)
    assert shared_prefix_length(seqs) == prefix_len  # the path under test: the prefix run once, or not
    eos = frequent_token(model, seqs)
    expected = reference(model, seqs, 10, eos)
    got = greedy_tokens(model, seqs, 10, eos, PAD)
    assert got == expected
    ended = [row[-1] == eos for row in got]
    assert any(ended) and not all(ended)  # some rows left the batch early, others ran to the cap


def test_one_token_and_one_row(model):
    seqs = rows(8, seed=3)
    assert greedy_tokens(model, seqs, 1, -1, PAD) == reference(model, seqs, 1, eos=-1)
    assert greedy_tokens(model, seqs[:1], 5, -1, PAD) == reference(model, seqs[:1], 5, eos=-1)


def test_shared_prefix_length_keeps_a_token_per_row_and_skips_short_prefixes():
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]) == 5  # each row keeps its last token
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 9, 9]], limit=4) == 4
    assert shared_prefix_length([[1, 2, 3, 7], [1, 2, 3, 8]]) == 0  # 3 < MIN_SHARED_PREFIX
    assert shared_prefix_length([[1] * 9]) == 0
    assert MIN_SHARED_PREFIX == 4


def test_a_model_with_logits_processors_is_decoded_by_generate(model):
    """A generation_config setting that changes greedy picks (here a repetition penalty) is applied."""
    seqs = rows(12, seed=5)
    plain = greedy_tokens(model, seqs, 10, -1, PAD)
    model.generation_config.repetition_penalty = 5.0
    try:
        assert not plain_greedy(model)
        penalized = greedy_tokens(model, seqs, 10, -1, PAD)
        assert penalized == reference(model, seqs, 10, eos=-1)
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert plain_greedy(model) and penalized != plain


def test_select_rows_leaves_the_cache_it_selects_from_as_it_was(model):
    seqs = torch.randint(1, 300, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model(input_ids=seqs, use_cache=True).cache
        keys = [layer.keys.clone() for layer in cache.layers]
        picked = select_rows(cache, torch.tensor([2, 0]))
        model(input_ids=torch.tensor([[7], [8]]), cache=picked, use_cache=True)  # grows the selection only
    assert [layer.keys.shape[0] for layer in picked.layers] == [2, 2] and picked.get_seq_length() == 6
    assert all(torch.equal(layer.keys, k) for layer, k in zip(cache.layers, keys, strict=True))
    assert torch.equal(picked.layers[0].keys[0, :, :5], keys[0][2])
