"""Shared by train_throughput.py (not a benchmark itself): one training setting, measured in
the calling process. Model shapes, data, the trainer a setting builds, step timing and the
model FLOPs that MFU counts.

MFU as NeMo AutoModel counts it (nemo_automodel.components.utils.flops_utils.llama3_flops and
its benchmark recipe's PEFT adjustment), per document of s tokens:

    F(s) = s * L * h^2 * (12 + 12*g/a + 18*f/h + 6*s/h + 6*V/(L*h))      full fine-tuning FLOPs
    F_LoRA(s) = F(s) * (2 + P_lora / P_frozen) / 3                      no weight gradient of frozen weights

(L layers, h hidden, a attention heads, g key-value heads, f MLP width, V vocabulary; the
6*s/h term is causal attention, half of the 12*s/h of full attention). A step's model FLOPs
are the sum of F_LoRA over the real (non-pad) documents it trained on, so padding and
gradient-checkpointing recompute never count; MFU = model FLOPs / step time / peak, with the
dense bf16 peak (989 TFLOP/s for H100/H200, as NeMo's tables use). DPO adds the reference
forward, F(s) / 3 per token, and counts chosen and rejected tokens.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SHAPES = {
    # SmolLM2-135M: the embedded base
    "smol135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    # the ~0.5B shape of the earlier H100 runs (RESULTS.md)
    "llama0.5b": dict(hidden_size=1280, num_hidden_layers=24, num_attention_heads=20, num_key_value_heads=4,
                      intermediate_size=3584, vocab_size=32000, tie_word_embeddings=False),
    # Llama-3-8B: NeMo AutoModel's LoRA figure
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False),
    # code paths only (--smoke)
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=172, vocab_size=1024, tie_word_embeddings=False),
}

# Dense bf16 peak of the accelerators this is expected on (tensor cores, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- FLOPs


def full_flops(config, s: int) -> float:
    """NeMo AutoModel's llama3_flops for one document of s tokens (gbs=1, seq_len=s)."""
    L, h, a = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
    g, f, V = config.num_key_value_heads, config.intermediate_size, config.vocab_size
    return s * L * h * h * (12 + 12 * g / a + 18 * f / h + 12 * s / h * 0.5 + 6 * V / (L * h))


def lora_factor(model) -> float:
    """(2 + P_lora / P_frozen) / 3: NeMo AutoModel's PEFT adjustment of the full fine-tuning FLOPs."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return (2 + trainable / max(frozen, 1)) / 3


# ---------------------------------------------------------------- tokenizer and data


def synthetic_tokenizer(vocab_size: int):
    """A word-level tokenizer whose word 'w<i>' is token i: random-token data then tokenizes to
    exactly the ids and lengths it was written with (no model files needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.model_max_length = 1 << 20
    return fast


def _words(rng: random.Random, n: int, vocab_size: int) -> str:
    return " ".join(f"w{rng.randrange(3, vocab_size)}" for _ in range(n))


def random_rows(n_rows: int, vocab_size: int, max_length: int, seed: int, full: bool, dpo: bool) -> list[dict]:
    """Text rows of random words. Chat-like: lognormal lengths, most short and some near
    max_length, the answer half of each row. full: every row max_length long with the loss on
    all of it (NeMo AutoModel's mock data for its 4,096-token figure)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        length = max_length - 1 if full else min(max_length - 1, max(8, int(rng.lognormvariate(0, 0.7) * max_length / 4)))
        prompt_len = 1 if full else length // 2
        answer = length - prompt_len
        if dpo:
            rows.append({"prompt": _words(rng, prompt_len, vocab_size), "chosen": " " + _words(rng, answer, vocab_size),
                         "rejected": " " + _words(rng, max(1, answer - rng.randrange(0, 4)), vocab_size)})
        else:
            rows.append({"prompt": _words(rng, prompt_len, vocab_size),
                         "completion": " " + _words(rng, answer, vocab_size)})
    return rows


def chat_rows(n_rows: int, seed: int, dpo: bool) -> list[dict]:
    """What the embedded loop trains on: the demo domain's questions and answers plus 8% general
    replay rows, as chat messages (the model's chat template applies)."""
    from kaizenlm.demo.domain import build_domain
    from kaizenlm.demo.general import general_skills

    rng = random.Random(seed)
    domain = build_domain(0)
    facts = domain.train_rows()
    general = general_skills(0)[0]
    rows = []
    for i in range(n_rows):
        if rng.random() < 0.08:
            r = general[rng.randrange(len(general))]
            question, answer = r["prompt"], r["response"]
        else:
            r = facts[i % len(facts)]
            question, answer = r["prompt"], r["response"]
        prompt = [{"role": "user", "content": question}]
        if dpo:
            wrong = domain.wrong_answer(domain.fact(r["qid"]), rng) if "qid" in r else answer[::-1]
            rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": answer}],
                         "rejected": [{"role": "assistant", "content": wrong}]})
        else:
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------- model


def make_model(shape: str, model_dir: str | None, dtype, device: str, attention: str | None):
    """A model directory's weights, or a LLaMA shape with random weights built on the device."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    kwargs = {"attn_implementation": attention} if attention else {}
    if model_dir:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kwargs).to(device)
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, rope_theta=500000.0)
    with torch.device(device):  # built where it trains, in its dtype: an 8B model never sits in fp32
        return AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)


# ---------------------------------------------------------------- one setting


class StepTimer:
    """Wall time, process CPU time and tokens seen at the end of every optimizer step; stops
    training once `seconds` have been timed after the warm-up (at least `min_steps` steps)."""

    def __init__(self, warmup: int, min_steps: int, seconds: float):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.marks.append((time.perf_counter(), cpu_seconds(), state.num_input_tokens_seen))
                timed = len(timer.marks) - timer.warmup
                if timed >= timer.min_steps and timer.marks[-1][0] - timer.marks[timer.warmup - 1][0] >= timer.seconds:
                    control.should_training_stop = True
                return control

        self.callback = Callback()
        self.warmup, self.min_steps, self.seconds = warmup, min_steps, seconds
        self.marks: list[tuple[float, float, int]] = []


def run_setting(spec: dict) -> dict:
    """Train one setting for spec['warmup'] + timed steps; returns its figures. spec keys: name,
    method (sft|dpo), shape, model_dir, batch, max_length, data (chat|random|full), knobs
    (gradient_checkpointing, padding_free, packing, attention, liger, compile, compact_head),
    warmup, min_steps, seconds, threads, lora (r, alpha, dropout, target_modules, lr), out."""
    cuda = torch.cuda.is_available()
    knobs = spec["knobs"]
    if not cuda:
        torch.set_num_threads(spec.get("threads", 2))
    if knobs.get("compact_head"):
        from kaizenlm.retrain.speed import score_labelled_positions_only

        score_labelled_positions_only()
    attention = knobs.get("attention")
    if attention == "sdpa_varlen":
        from kaizenlm.retrain.speed import register_sdpa_varlen, varlen_available

        if not varlen_available():
            return {"skipped": "sdpa_varlen needs CUDA and torch.nn.attention.varlen"}
        register_sdpa_varlen()
    if knobs.get("liger"):
        if not cuda:
            return {"skipped": "Liger Kernel needs a CUDA GPU (Triton)"}
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return {"skipped": "liger-kernel is not installed"}
    if knobs.get("compile") and not cuda:
        return {"skipped": "torch.compile is measured on the GPU only"}

    dtype = torch.bfloat16 if cuda else torch.float32
    started = time.perf_counter()
    model = make_model(spec["shape"], spec.get("model_dir"), dtype, "cuda" if cuda else "cpu", attention)
    config = model.config
    dpo = spec["method"] == "dpo"
    if spec["data"] == "chat":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"] or spec["tokenizer_dir"])
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        rows = chat_rows(spec["rows"], spec.get("seed", 0), dpo)
    else:
        tokenizer = synthetic_tokenizer(config.vocab_size)
        rows = random_rows(spec["rows"], config.vocab_size, spec["max_length"], spec.get("seed", 0),
                           full=spec["data"] == "full", dpo=dpo)
    trainer, timer = _trainer(spec, model, tokenizer, rows, cuda)
    factor = lora_factor(trainer.model)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    setup_s = time.perf_counter() - started
    result = trainer.train()
    w = spec["warmup"]
    if len(timer.marks) <= w:
        return {"error": f"only {len(timer.marks)} steps ran (warm-up {w})"}
    (t0, c0, n0), (t1, c1, n1) = timer.marks[w - 1], timer.marks[-1]
    steps = len(timer.marks) - w
    tokens_per_s = (n1 - n0) / (t1 - t0)
    flops_per_token = _flops_per_token(trainer, config, factor, dpo)
    achieved = tokens_per_s * flops_per_token
    peak = next((v for k, v in PEAK_BF16.items() if cuda and k in torch.cuda.get_device_name()), None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        # CPU seconds of this process only: not a figure for a multi-process run
        "tokens_per_cpu_s": round((n1 - n0) / max(c1 - c0, 1e-9), 2) if "WORLD_SIZE" not in os.environ else None,
        "step_s": round((t1 - t0) / steps, 4),
        "timed_steps": steps,
        "tokens_per_step": round((n1 - n0) / steps, 1),
        "model_tflops_per_s": round(achieved / 1e12, 3),
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "setup_s": round(setup_s, 1),
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "losses": [round(x, 4) for x in losses],
        "train_loss": round(result.training_loss, 4),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _trainer(spec: dict, model, tokenizer, rows: list[dict], cuda: bool):
    from datasets import Dataset
    from peft import LoraConfig

    knobs, lora = spec["knobs"], spec["lora"]
    timer = StepTimer(spec["warmup"], spec["min_steps"], spec["seconds"])
    common = dict(
        output_dir=str(Path(spec["out"]) / spec["name"]), max_steps=spec.get("max_steps", 10_000),
        per_device_train_batch_size=spec["batch"], learning_rate=lora["lr"], lr_scheduler_type="cosine",
        warmup_steps=spec.get("lr_warmup_steps", 0), logging_steps=1, save_strategy="no", report_to="none",
        # padding-free and packed batches hold no pad at all; "non_padding" would skip every token equal to
        # the pad id, which for many chat models is the end-of-turn token
        include_num_input_tokens_seen="all" if knobs.get("padding_free") or knobs.get("packing") else "non_padding",
        use_cpu=not cuda, bf16=cuda, dataloader_num_workers=0,
        disable_tqdm=True, seed=spec.get("seed", 0), data_seed=spec.get("seed", 0),
        gradient_checkpointing=knobs.get("gradient_checkpointing", True), max_length=spec["max_length"],
        use_liger_kernel=bool(knobs.get("liger")), torch_compile=bool(knobs.get("compile")),
        ddp_find_unused_parameters=False,
    )
    peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=list(lora["target_modules"]), bias="none", task_type="CAUSAL_LM")
    if spec["method"] == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=0.1)
        return DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[timer.callback]), timer
    from trl import SFTConfig, SFTTrainer

    from kaizenlm.retrain.training import truncate_tokenized

    sft = dict(common)
    if knobs.get("packing"):
        sft.update(packing=True, packing_strategy="bfd")
    elif knobs.get("padding_free"):
        sft.update(padding_free=True, max_length=None)
    trainer = SFTTrainer(model=model, args=SFTConfig(**sft), train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[timer.callback])
    if knobs.get("padding_free") and not knobs.get("packing"):
        trainer.train_dataset = truncate_tokenized(trainer.train_dataset, spec["max_length"])
    return trainer, timer


def _flops_per_token(trainer, config, factor: float, dpo: bool) -> float:
    """Mean model FLOPs per real token over the training documents (NeMo's formula, per document)."""
    ds = trainer.train_dataset
    if dpo:
        lengths = [len(p) + len(c) for p, c in zip(ds["prompt_ids"], ds["chosen_ids"], strict=True)]
        lengths += [len(p) + len(r) for p, r in zip(ds["prompt_ids"], ds["rejected_ids"], strict=True)]
        per_doc = [full_flops(config, s) * (factor + 1 / 3) for s in lengths]  # + the reference forward
    else:
        if "seq_lengths" in ds.column_names:  # packed rows: the documents inside them
            lengths = [s for row in ds["seq_lengths"] for s in row]
        else:
            lengths = [len(ids) for ids in ds["input_ids"]]
        per_doc = [full_flops(config, s) * factor for s in lengths]
    return math.fsum(per_doc) / max(sum(lengths), 1)


def main(spec_path: str) -> int:
    """Child entry point: run the setting in spec_path; rank 0 prints one line "RESULT {json}"."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = run_setting(spec)
    except torch.cuda.OutOfMemoryError as e:
        result = {"error": f"out of memory: {str(e)[:200]}", "oom": True}
    result["processes"] = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
