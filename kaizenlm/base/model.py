"""Where the base model lives, and loading any Hugging Face causal LM directory (+ a LoRA adapter)
with its tokenizer in the inference dtype; the chat-message form of a prompt that training,
evaluation and serving share."""

from __future__ import annotations

import contextlib
import functools
import json
import re
from pathlib import Path

from kaizenlm.config.core import PRECISIONS

EMBEDDED_MARKER = "kaizen_base.json"  # written next to the weights by kaizenlm.base.embedded.convert_embedded


def default_base_dir(cfg) -> Path:
    """Where the embedded base lives unless base.path names another model."""
    return cfg.home / "models" / "base-embedded"


def resolve_base_path(cfg) -> Path:
    """The base model directory every retrain starts from (base.path, or the embedded build)."""
    return default_base_dir(cfg) if cfg.base.path == "embedded" else Path(cfg.base.path).expanduser()


def base_marker(path: str | Path) -> dict:
    """What kaizenlm recorded about a base it built (name, source, content hash); {} for any other model."""
    marker = Path(path) / EMBEDDED_MARKER
    if not marker.is_file():
        return {}
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def is_hf_model_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def as_messages(prompt: str | list[dict], system: str | None = None) -> list[dict]:
    """A prompt (plain text, a messages list or its JSON text) as a chat messages list."""
    if isinstance(prompt, str) and prompt.startswith("[{"):
        with contextlib.suppress(json.JSONDecodeError):
            prompt = json.loads(prompt)
    messages = [{"role": "system", "content": system}] if system else []
    if isinstance(prompt, str):
        return messages + [{"role": "user", "content": prompt}]
    return messages + [{"role": m["role"], "content": m["content"]} for m in prompt]


@functools.cache
def native_cpu_bf16() -> bool:
    """Does this CPU compute bf16 natively (the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo)?
    Elsewhere torch emulates it, slower than fp32. Read without torch: the controller computes
    evaluation and answer keys, which name the dtype, and never loads torch. No /proc: False."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def inference_dtype_name(precision: str = "auto", device: str = "cpu") -> str:
    """'bfloat16' or 'float32': the dtype a model answers and scores in. 'fp32', 'bf16', or
    'auto' = bf16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX), else fp32. Measured on a 2-core AMD EPYC with AVX512-BF16: greedy
    generation 1.7x and multiple-choice scoring 1.4x faster than fp32, the right choice's
    probability moving by sd 0.015 a question (docs/TRAINING.md "Inference precision"). Only a
    CUDA device imports torch to ask."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return "bfloat16" if precision == "bf16" else "float32"
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if native_cpu_bf16() else "float32"


def inference_dtype(precision: str = "auto", device: str = "cpu"):
    """inference_dtype_name as a torch dtype."""
    import torch

    return getattr(torch, inference_dtype_name(precision, device))


def contiguous_head_input(model):
    """Make the LM head's input contiguous before it runs, once per model; returns the model.

    Generation and scoring keep the last position's hidden state only (`logits_to_keep`), a
    strided [batch, 1, hidden] view. For a weight that does not require grad (an adapter merged
    with merge_and_unload, a frozen model) torch.matmul then multiplies it by the whole
    vocabulary matrix expanded once per row (bmm over [batch, hidden, vocab]): measured on
    SmolLM2-135M in bf16, a forward of 64 x 40 tokens took 6.2 s instead of 2.1, a merged adapter
    scored the 320 multiple-choice questions in 32 s instead of 12. A contiguous input folds into
    one matrix product; the copy is one hidden vector a row."""
    head = model.get_output_embeddings()
    if head is not None and not getattr(head, "_kaizen_contiguous_input", False):
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
        head._kaizen_contiguous_input = True
    return model


def load_model_and_tokenizer(path: str | Path, adapter: str | Path | None = None, precision: str = "fp32"):
    """Load any Hugging Face causal LM directory (+ optional LoRA adapter) for inference on the
    CPU, in `precision` (inference_dtype). The adapter is merged into the weights in fp32 before
    the cast (a LoRA update added to bf16 weights would round away): the same function at the
    base's speed (unmerged, each of the adapted layers runs two more small matmuls per token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model = contiguous_head_input(model.to(inference_dtype(precision, "cpu")).eval())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
