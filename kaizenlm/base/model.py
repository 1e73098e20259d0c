"""Where the base model lives, and loading any Hugging Face causal LM directory (+ a LoRA adapter)
with its tokenizer; the chat-message form of a prompt that training, evaluation and serving share."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

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



def load_model_and_tokenizer(path: str | Path, adapter: str | Path | None = None):
    """Load any Hugging Face causal LM directory (+ optional LoRA adapter) for inference. The
    adapter is merged into the weights: the same function at the base's speed (unmerged, each
    of the adapted layers runs two more small matmuls per token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
