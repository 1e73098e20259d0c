"""Shared-prefix batches (kaizenlm/retrain/shared_prefix.py): the same logits, loss and gradients
as the padding-free batch they replace, and SFT through TRL learning the same with them."""

from __future__ import annotations

import json

import pytest
from retrain_helpers import FAST_RUN, build_tiny_base, sft_cfg

from kaizenlm.retrain import shared_prefix

PREFIX = [7, 8, 9, 10, 11, 12]
ROWS = [  # (ids, labels): a common 6-token prefix, then a prompt part and an answer
    (PREFIX + [20, 21, 22, 23, 24], [-100] * 8 + [22, 23, 24]),
    (PREFIX + [30, 31, 32, 33], [-100] * 7 + [31, 32, 33]),
    (PREFIX + [40, 41, 42, 43, 44, 45, 46], [-100] * 9 + [43, 44, 45, 46]),
]


def test_the_prefix_ends_before_any_position_that_predicts_an_answer_token():
    assert shared_prefix.prefix_length(ROWS) == 6
    early = (PREFIX + [50, 51], [-100] * 4 + [12, 50, 51])  # its answer starts inside the common tokens
    assert shared_prefix.prefix_length([*ROWS, early]) == 3  # position 3 predicts its first answer token
    assert shared_prefix.prefix_length(ROWS[:1]) == 0  # one row: nothing to share
    assert shared_prefix.prefix_length([ROWS[0], ([1, *ROWS[1][0][1:]], ROWS[1][1])]) == 0


def test_pack_lays_out_the_prefix_once_and_a_mask_that_sees_prefix_and_own_row():
    batch = shared_prefix.pack(ROWS, 6, "cpu")
    ids = batch["input_ids"][0].tolist()
    assert ids == PREFIX + [20, 21, 22, 23, 24, 30, 31, 32, 33, 40, 41, 42, 43, 44, 45, 46]
    assert batch["position_ids"][0].tolist() == list(range(11)) + list(range(6, 10)) + list(range(6, 13))
    assert batch["labels"][0].tolist() == [-100] * 8 + [22, 23, 24] + [-100, 31, 32, 33] + [-100] * 3 + [43, 44, 45, 46]
    mask = batch["attention_mask"][0, 0]
    first_of_row_2 = 11
    assert mask[first_of_row_2, :6].all() and not mask[first_of_row_2, 6:11].any()  # the prefix, not row 1
    assert mask[first_of_row_2, first_of_row_2] and not mask[first_of_row_2, first_of_row_2 + 1:].any()
    assert not mask[2, 3:].any() and mask[2, :3].all()  # causal inside the prefix


def test_rows_of_a_padding_free_batch_round_trip():
    import torch

    inputs = {"input_ids": torch.tensor([sum((r[0] for r in ROWS), [])]),
              "labels": torch.tensor([sum((r[1] for r in ROWS), [])]),
              "position_ids": torch.tensor([sum((list(range(len(r[0]))) for r in ROWS), [])])}
    assert shared_prefix.rows_of_padding_free(inputs) == ROWS
    assert shared_prefix.rows_of_padding_free({**inputs, "attention_mask": inputs["input_ids"] * 0 + 1}) is None
    batch, tokens = shared_prefix.shared_batch({**inputs, "cu_seq_lens_q": torch.tensor([0, 11, 21, 34])})
    assert tokens == sum(len(r[0]) for r in ROWS) and batch["input_ids"].shape[1] == tokens - 2 * len(PREFIX)
    assert "cu_seq_lens_q" not in batch  # the old layout's row bounds are not passed on


def _tiny_lora_model():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = "sdpa"
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                                init_lora_weights=False, lora_dropout=0.0))


def _scored(model, batch):
    """Log-probs of every labelled token (the position before it predicts it) and LoRA grads of their sum."""
    import torch

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.zero_grad()
    logp = torch.log_softmax(model(**inputs, use_cache=False).logits[0, :-1], -1)  # no cache: rows stay apart
    targets = labels[0, 1:]
    scored = logp[targets != -100].gather(1, targets[targets != -100][:, None])[:, 0]
    scored.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return scored.detach(), grads


def test_the_shared_layout_gives_the_padding_free_batch_s_log_probs_and_gradients():
    import torch

    model = _tiny_lora_model()
    assert shared_prefix.usable(model)
    padding_free = {"input_ids": torch.tensor([sum((r[0] for r in ROWS), [])]),
                    "labels": torch.tensor([sum((r[1] for r in ROWS), [])]),
                    "position_ids": torch.tensor([sum((list(range(len(r[0]))) for r in ROWS), [])])}
    expected, expected_grads = _scored(model, padding_free)
    got, grads = _scored(model, shared_prefix.pack(ROWS, 6, "cpu"))
    assert got.shape == expected.shape == (10,)
    assert torch.allclose(got, expected, atol=1e-5)
    assert expected_grads.keys() == grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-5), name


def test_the_anchor_draws_its_rows_in_the_shared_layout_with_the_same_kl():
    import random
    from types import SimpleNamespace

    from kaizenlm.retrain.anchor import Anchor, AnchorLoss

    model = _tiny_lora_model()
    kls = []
    for shared in (False, True):
        trainer = AnchorLoss()
        trainer.accelerator = SimpleNamespace(unwrap_model=lambda m: m)
        trainer.anchor = Anchor(ROWS, weight=1.0, batch_size=3, pad_id=0, rng=random.Random(0), shared_prefix=shared)
        batch, _ = trainer.anchor.draw("cpu")
        assert (batch["input_ids"].shape[0] == 1) == shared  # one sequence in the shared layout, padded rows otherwise
        kls.append(float(trainer._anchor_kl(model).detach()))
    assert kls[0] > 0 and kls[1] == pytest.approx(kls[0], rel=1e-4)


def _with_logged_steps(metrics: dict, run_dir) -> tuple[dict, list[dict]]:
    """A recipe's metrics and the training steps its newest checkpoint logged (those with a loss)."""
    state = json.loads(max((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"),
                           key=lambda p: int(p.parent.name.split("-")[1])).read_text())
    return metrics, [h for h in state["log_history"] if "loss" in h]


def _same_steps_with_and_without(runs: dict) -> tuple[list[dict], list[dict]]:
    """The "on" run used the shared layout and left tokens out, the "off" run neither; both logged
    as many steps with the same losses. Returns their logged steps (on, off)."""
    assert runs["on"][0]["hardware"]["shared_prefix"] and not runs["off"][0]["hardware"]["shared_prefix"]
    assert runs["on"][0]["prefix_tokens_saved"] > 0 == runs["off"][0]["prefix_tokens_saved"]
    on, off = runs["on"][1], runs["off"][1]
    assert len(on) == len(off) > 0
    for a, b in zip(on, off, strict=True):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-3)
    return on, off


def test_sft_with_shared_prefix_batches_learns_as_the_padded_run_does(tmp_path):
    """TRL's SFT on chat rows that share a system prompt: padding-free batches in the shared-prefix
    layout give the padded run's losses step by step (no dropout), and count the same tokens."""
    from dataclasses import replace

    from kaizenlm.retrain.lora_sft import train_sft

    base = build_tiny_base(tmp_path / "base")
    system = "You are the Kaizen Cloud support assistant. Answer in one short sentence."
    rows = [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": f"What is the fee {i}?"}],
             "response": f"The fee is {i} dollars."} for i in range(16)]
    cfg = sft_cfg(epochs=1.0, lora_dropout=0.0, val_fraction=0.0)
    runs = {mode: _with_logged_steps(train_sft(base, rows, tmp_path / mode, cfg, replace(FAST_RUN, padding_free=mode)),
                                     tmp_path / mode) for mode in ("on", "off")}
    on, off = _same_steps_with_and_without(runs)
    for a, b in zip(on, off, strict=True):
        assert a["num_tokens"] == b["num_tokens"]  # real tokens, not the 4-D mask's entries


def _padded(rows):
    """A right-padded batch of (ids, labels) rows, as TRL's preference collator makes it."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    return {"input_ids": torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
            "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows])}


def _fused(model, batch):
    """TRL's fused-LM-head outputs of a padded batch and the LoRA grads of the log-probs' sum."""
    model.zero_grad()
    out = model(**batch, use_cache=False, fused_lm_head=True)
    out.log_probs.sum().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fused_lm_head_calls_on_a_padded_batch_give_its_outputs_and_gradients():
    import torch
    from trl.trainer.utils import add_fused_lm_head

    model = _tiny_lora_model()
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "mean_logits"))
    batch = _padded(ROWS)
    assert shared_prefix.rows_of_padded(batch) == ROWS
    expected, expected_grads = _fused(model, batch)
    with shared_prefix.fused_calls_shared(model) as saved:
        got, grads = _fused(model, batch)
    assert "forward" not in vars(model)  # the model's own forward again
    assert saved["tokens"] == 2 * len(PREFIX)  # the prefix computed once instead of three times
    assert got.log_probs.shape == expected.log_probs.shape == (3, 12)  # the longest row: 13 tokens
    assert torch.equal(got.label_mask, expected.label_mask) and int(got.label_mask.sum()) == 10
    for field in ("log_probs", "entropy", "mean_logits"):
        assert torch.allclose(got[field], expected[field], atol=1e-5), field
    assert torch.allclose(got.loss, expected.loss, atol=1e-6)
    assert expected_grads.keys() == grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-5), name
    unshared = _padded([ROWS[0], ([1, *ROWS[1][0][1:]], ROWS[1][1])])  # no common prefix: the padded call as is
    plain = _fused(model, unshared)[0].log_probs
    with shared_prefix.fused_calls_shared(model) as saved:
        assert torch.equal(_fused(model, unshared)[0].log_probs, plain)
    assert saved["tokens"] == 0


def test_dpo_with_shared_prefix_batches_learns_as_the_padded_run_does(tmp_path, monkeypatch):
    """TRL's DPO on chat pairs that share a system prompt: the same losses and reward margins step
    by step (no dropout), and the same adapter, with the policy's and the reference's prefix computed once."""
    from pathlib import Path

    import torch
    from retrain_helpers import dpo_cfg

    from kaizenlm.retrain import lora_dpo
    from kaizenlm.retrain.lora_dpo import train_dpo
    from kaizenlm.retrain.lora_sft import train_sft

    base = build_tiny_base(tmp_path / "base")
    system = "Answer briefly."  # rows within the tiny base's 64 positions, so no answer is cut

    def prompt(i):
        return [{"role": "system", "content": system}, {"role": "user", "content": f"What is the fee {i}?"}]

    sft = train_sft(base, [{"prompt": prompt(i), "response": f"The fee is {i} dollars."} for i in range(8)],
                    tmp_path / "sft", sft_cfg(epochs=1.0, lora_dropout=0.0, val_fraction=0.0), FAST_RUN)
    pairs = [{"prompt": prompt(i), "chosen": f"The fee is {i} dollars.", "rejected": f"The fee is {i + 7} euros."}
             for i in range(16)]
    runs = {}
    for mode in ("on", "off"):
        if mode == "off":
            monkeypatch.setattr(lora_dpo.shared_prefix, "usable", lambda model: False)  # the switch, not a fault
        metrics = train_dpo(base, sft["adapter_dir"], pairs, tmp_path / f"dpo-{mode}",
                            dpo_cfg(epochs=1.0, val_fraction=0.0), FAST_RUN)
        runs[mode] = _with_logged_steps(metrics, tmp_path / f"dpo-{mode}")
    on, off = _same_steps_with_and_without(runs)
    for a, b in zip(on, off, strict=True):
        assert float(a["rewards/margins"]) == pytest.approx(float(b["rewards/margins"]), rel=1e-3, abs=1e-5)
    assert float(on[-1]["rewards/margins"]) > 0  # it learnt something to compare
    from safetensors.torch import load_file

    trained = [load_file(str(Path(runs[m][0]["adapter_dir"]) / "adapter_model.safetensors")) for m in ("on", "off")]
    assert trained[0].keys() == trained[1].keys() and len(trained[0]) > 0
    # The same adapter, up to float rounding, which Adam amplifies where a gradient is near zero
    # (it divides each by its own running scale): up to 2e-4 here, on weights of ~0.2 after
    # steps of lr 1e-2 (within 1e-4 on the packages of earlier runs; peft 0.22 here).
    for name, weight in trained[0].items():
        assert torch.allclose(weight, trained[1][name], atol=1e-3), name
