"""Inference precision: which dtype "auto" picks, and that an adapter is merged before the cast."""

import pytest
import torch
from serving_helpers import build_adapter, build_tiny_model

from kaizenlm.base import model as base_model
from kaizenlm.config import ConfigError, EvalConfig


def test_auto_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    assert base_model.inference_dtype("fp32") is torch.float32
    assert base_model.inference_dtype("bf16") is torch.bfloat16
    # Which CPU runs the tests is not ours to choose: both answers of the probe are stood in for.
    monkeypatch.setattr(base_model, "native_cpu_bf16", lambda: True)
    assert base_model.inference_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setattr(base_model, "native_cpu_bf16", lambda: False)
    assert base_model.inference_dtype("auto", "cpu") is torch.float32
    with pytest.raises(ValueError, match="precision: 'fp8'"):
        base_model.inference_dtype("fp8")


def test_training_auto_precision_follows_the_same_probe(monkeypatch):
    from kaizenlm.retrain import training

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(base_model, "native_cpu_bf16", lambda: True)
    assert training.training_precision("auto") == "bf16"
    monkeypatch.setattr(base_model, "native_cpu_bf16", lambda: False)
    assert training.training_precision("auto") == "fp32"
    assert training.training_precision("bf16") == "bf16" and training.training_precision("fp32") == "fp32"


def test_the_keys_that_name_the_dtype_need_no_torch(tmp_path):
    """The controller computes evaluation and answer keys and never loads torch."""
    import subprocess
    import sys

    (tmp_path / "config.json").write_text("{}")
    code = f"""
import sys
from kaizenlm.base.general import answers_key
from kaizenlm.config import EvalConfig
from kaizenlm.eval.evaluate import evaluation_key
from kaizenlm.eval.suite import Suite
evaluation_key(Suite(domain=[{{"prompt": "Q?", "reference": "A."}}], source="s"), EvalConfig(), [])
answers_key({str(tmp_path)!r}, None, 48, 96)
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_the_config_names_a_bad_precision():
    with pytest.raises(ConfigError, match="eval.precision"):
        EvalConfig(precision="half")


@pytest.mark.integration
def test_an_adapter_is_merged_in_fp32_then_cast(tmp_path):
    base = build_tiny_model(tmp_path / "base")
    adapter = build_adapter(base, tmp_path / "adapter", seed=3)
    fp32, _ = base_model.load_model_and_tokenizer(base, adapter, precision="fp32")
    bf16, _ = base_model.load_model_and_tokenizer(base, adapter, precision="bf16")
    assert bf16.dtype == torch.bfloat16
    merged = dict(fp32.named_parameters())
    for name, weight in bf16.named_parameters():
        assert torch.equal(weight, merged[name].to(torch.bfloat16)), name
    # Merged into the bf16 base instead, the update rounds against bf16 weights: other weights.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    in_bf16 = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
    in_bf16 = PeftModel.from_pretrained(in_bf16, str(adapter)).merge_and_unload()
    ours = dict(bf16.named_parameters())
    assert any(not torch.equal(w, ours[n]) for n, w in in_bf16.named_parameters())


@pytest.mark.integration
def test_the_lm_head_gets_a_contiguous_input(tmp_path):
    """Without it a merged (frozen) model's head multiplied by the vocabulary matrix expanded once
    per row: 3x slower scoring on SmolLM2 in bf16 (kaizenlm.base.model.contiguous_head_input)."""
    from transformers import AutoModelForCausalLM

    base = build_tiny_model(tmp_path / "base")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])

    def head_input_contiguous(model) -> bool:
        seen = []
        handle = model.get_output_embeddings().register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].is_contiguous()))
        with torch.no_grad():
            logits = model(input_ids=ids, logits_to_keep=1).logits
        handle.remove()
        return seen[0], logits

    plain = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    strided, expected = head_input_contiguous(plain)
    assert not strided  # the last position's view, as transformers passes it
    model, _ = base_model.load_model_and_tokenizer(base, precision="fp32")
    base_model.contiguous_head_input(model)  # a second call adds nothing
    assert len(model.get_output_embeddings()._forward_pre_hooks) == 1
    contiguous, logits = head_input_contiguous(model)
    assert contiguous and torch.allclose(logits, expected, atol=1e-6)
