"""Training throughput of LoRA SFT through TRL: tokens/s and model-FLOPs utilisation (MFU),
TRL's defaults vs tuned settings. Prints ONE JSON line.

    .venv/bin/python benchmarks/train_throughput.py            # GPU: ~0.5B LLaMA, bf16
    .venv/bin/python benchmarks/train_throughput.py --tiny     # CPU (automatic without CUDA)

The model is LLaMA-shaped with random weights (no download): 24 layers, hidden 1280,
GQA 20/4 heads, MLP 3584, vocab 32000 = ~0.47B parameters; --tiny shrinks it to run on CPU.
The data are random token sequences of mixed lengths (as chat data are), so padding, packing
and padding-free collation differ the way they do on real data.

Settings, each measured in a fresh process on a fresh model, same data, same LoRA (the
recipe's real-model defaults: r=16, alpha=32, q_proj/v_proj):
  trl_defaults      SFTConfig as TRL ships it: padded batches, gradient checkpointing on, bf16 on GPU
  no_checkpointing  the same without gradient checkpointing (more memory, no recompute)
  padding_free      sequences concatenated without pads (position_ids mark the boundaries)
  packing_bfd       best-fit-decreasing packing into max_length rows (padding-free inside)
  packing_bfd_ckpt  packing with gradient checkpointing (the memory-lean tuned choice)
tokens/s counts real (non-pad) tokens. MFU = achieved model FLOPs / peak bf16 FLOPs, with
LoRA model FLOPs per token = 4 x matmul params (forward 2N + input-gradient backward 2N; the
frozen weights get no weight gradient) + 8 x layers x hidden x mean context (attention
scores); gradient-checkpointing recompute is not counted (that is what MFU means).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

FULL = dict(hidden_size=1280, num_hidden_layers=24, num_attention_heads=20, num_key_value_heads=4,
            intermediate_size=3584, vocab_size=32000, max_length=1024, batch_size=8)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=172, vocab_size=1024, max_length=128, batch_size=8)

SETTINGS = {
    "trl_defaults": {},
    "no_checkpointing": {"gradient_checkpointing": False},
    "padding_free": {"padding_free": True, "max_length": None, "gradient_checkpointing": False},  # rows are <= max_length
    "packing_bfd": {"packing": True, "gradient_checkpointing": False},
    "packing_bfd_ckpt": {"packing": True, "gradient_checkpointing": True},
}

# Dense bf16 peak of the accelerators this is expected on (tensor cores, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


class StepTimer(TrainerCallback):
    """Wall time and tokens seen at the end of every optimizer step."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))


def make_tokenizer(vocab_size: int):
    """Any tokenizer with a pad token will do: the data are already token ids."""
    from kaizenlm.demo.tiny_base import train_tokenizer

    tok = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 8, vocab_size=300)
    tok.model_max_length = 1 << 20
    return tok


def make_data(n_rows: int, max_length: int, vocab_size: int, seed: int):
    """Random sequences with chat-like lengths: most short, some near max_length."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        length = min(max_length, max(8, int(rng.lognormvariate(0, 0.7) * max_length / 4)))
        rows.append({"input_ids": [rng.randrange(8, vocab_size) for _ in range(length)]})
    return Dataset.from_list(rows)


def make_model(shape: dict, dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"], max_position_embeddings=shape["max_length"],
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def flops_per_token(model, shape: dict, mean_context: float) -> float:
    embed = model.get_input_embeddings().weight.numel()
    matmul_params = sum(p.numel() for p in model.parameters()) - embed  # lm_head stays: it is a matmul
    attention = 8 * shape["num_hidden_layers"] * shape["hidden_size"] * mean_context
    return 4 * matmul_params + attention


def run_setting(name: str, overrides: dict, shape: dict, data, tokenizer, steps: int, warmup: int, out: Path,
                cuda: bool) -> dict:
    from trl import SFTConfig, SFTTrainer

    from kaizenlm.config import LoraSFTConfig
    from kaizenlm.retrain.training import lora_config

    dtype = torch.bfloat16 if cuda else torch.float32
    model = make_model(shape, dtype, "cuda" if cuda else "cpu")
    n_params = sum(p.numel() for p in model.parameters())
    overrides = {"max_length": shape["max_length"], **overrides}
    args = SFTConfig(
        output_dir=str(out / name), max_steps=warmup + steps, per_device_train_batch_size=shape["batch_size"],
        learning_rate=3e-5, logging_steps=10_000, save_strategy="no",
        report_to="none", include_num_input_tokens_seen="non_padding", use_cpu=not cuda,
        bf16=cuda, dataloader_num_workers=0, disable_tqdm=True, seed=0, **overrides,
    )
    timer = StepTimer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config(LoraSFTConfig()), callbacks=[timer])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, n0), (t1, n1) = timer.marks[warmup - 1], timer.marks[-1]
    tokens_per_s = (n1 - n0) / (t1 - t0)
    lengths = [len(x) for x in data["input_ids"]]
    flops = flops_per_token(trainer.model.get_base_model(), shape, sum(lengths) / len(lengths) / 2)
    achieved = tokens_per_s * flops
    peak = next((v for k, v in PEAK_BF16.items() if cuda and k in torch.cuda.get_device_name()), None)
    result = {
        "tokens_per_s": round(tokens_per_s, 1),
        "step_s": round((t1 - t0) / steps, 4),
        "achieved_gflops": round(achieved / 1e9, 1),
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "gradient_checkpointing": args.gradient_checkpointing,
        "params": n_params,
    }
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def run_in_child(name: str, args) -> dict:
    """One setting in a fresh process: a later setting then never inherits the earlier ones'
    allocator state and warm kernels (in one process the order moved a setting's figure 2-3x)."""
    cmd = [sys.executable, __file__, "--settings", name, "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--out", args.out] + (["--steps", str(args.steps)] if args.steps else []) + (["--tiny"] if args.tiny else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith('{"benchmark"')), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"setting {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line)["settings"][name]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU (automatic when CUDA is absent)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 30 GPU, 5 CPU)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of: " + ", ".join(SETTINGS))
    p.add_argument("--out", default="benchmarks/out/throughput")
    p.add_argument("--same-process", action="store_true",
                   help="measure every setting in this process (default: one fresh process per setting)")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    shape = FULL if cuda else TINY
    steps = args.steps or (30 if cuda else 5)
    if not cuda:
        torch.set_num_threads(args.threads)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    if len(names) > 1 and not args.same_process:
        results = {name: run_in_child(name, args) for name in names}
    else:
        tokenizer = make_tokenizer(shape["vocab_size"])
        data = make_data((steps + args.warmup) * shape["batch_size"] * 4, shape["max_length"], shape["vocab_size"], 0)
        results = {name: run_setting(name, SETTINGS[name], shape, data, tokenizer, steps, args.warmup,
                                     Path(args.out), cuda) for name in names}
    baseline = results.get("trl_defaults")
    print(json.dumps({
        "benchmark": "train_throughput",
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({args.threads} threads)",
        "model": "llama-0.47B-random-bf16" if cuda else "llama-tiny-random-fp32",
        "params": next(iter(results.values()))["params"],
        "steps": steps, "batch_size": shape["batch_size"], "max_length": shape["max_length"],
        "settings": results,
        "speedup_vs_trl_defaults": {k: round(v["tokens_per_s"] / baseline["tokens_per_s"], 2)
                                    for k, v in results.items()} if baseline else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
