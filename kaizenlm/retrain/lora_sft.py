"""LoRA SFT recipe: supervised fine-tuning of a LoRA adapter on {prompt, response} rows.

    train_sft(base_path, rows, run_dir, cfg, run) -> metrics

TRL's SFTTrainer does the training; this file decides what goes in: conversational
prompt/completion rows (loss on the answer only), a LoRA adapter on the configured
modules, a cosine schedule with warm-up, gradient clipping, validation loss with early
stopping, checkpoints a rerun resumes from, TensorBoard logs and the health monitor. The
defaults (`[sft]` in kaizen.toml) suit real models; the embedded tiny model needs a much
higher learning rate, more epochs and LoRA on every linear layer, which TINY_OVERRIDES
sets (see docs/TRAINING.md for the measurements behind it).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kaizenlm.config import LoraSFTConfig, RetrainConfig  # noqa: E402
from kaizenlm.retrain import training  # noqa: E402
from kaizenlm.retrain.monitoring import HealthMonitor, NonFiniteLossError  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# What the embedded 0.56M-parameter model needs to learn 48 facts in a few minutes on CPU
# while keeping as much of its general skills as it can. The base already answers made-up
# facts in the domain's template ("recall") and has seen every word of the documents
# ("vocabulary"), so LoRA on the linear layers learns the facts (exam 0.76 at 8% replay);
# a LoRA on embed_tokens learns faster (0.96) but rewrites the shared chat-template tokens
# and keeps only 0.2-0.5 of the general skills. A higher learning rate trades retention for
# exam score (3e-3: 0.90 / 0.68; 5e-4: 0.18 / 0.86). Measurements: docs/TRAINING.md.
TINY_OVERRIDES = {
    "learning_rate": 1e-3,
    "epochs": 16.0,
    "batch_size": 16,
    "target_modules": list(ALL_LINEAR),
    "lora_dropout": 0.0,
    "warmup_ratio": 0.03,
    "max_length": 128,
    "early_stopping_patience": 3,
    "evals_per_epoch": 1,
}


def resolve_config(cfg: LoraSFTConfig, base_path: str | Path) -> LoraSFTConfig:
    """The config this run uses: tiny overrides on untouched keys when the base is the embedded model."""
    return training.apply_overrides(cfg, TINY_OVERRIDES) if training.is_embedded_base(base_path) else cfg


def _setup_model(base_path: str | Path, hw: dict):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if hw["bf16"] else torch.float16 if hw["fp16"] else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype)
    return model, tokenizer


def _setup_lora(cfg: LoraSFTConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
    )


def _setup_data(rows: list[dict], eval_rows: list[dict] | None, cfg: LoraSFTConfig, seed: int, chat: bool):
    """Prompt/completion datasets: chat messages when the tokenizer has a chat template, else plain text."""
    from datasets import Dataset

    if eval_rows is None:
        rows, eval_rows = training.split_rows(rows, cfg.val_fraction, seed)

    def convert(row: dict) -> dict:
        if chat:
            return {"prompt": training.as_messages(row["prompt"]),
                    "completion": [{"role": "assistant", "content": row["response"]}]}
        return {"prompt": str(row["prompt"]), "completion": " " + row["response"]}

    train = Dataset.from_list([convert(r) for r in rows])
    val = Dataset.from_list([convert(r) for r in eval_rows]) if eval_rows else None
    return train, val


def _setup_training_args(cfg: LoraSFTConfig, run: RetrainConfig, hw: dict, run_dir: Path, n_train: int, has_val: bool):
    from trl import SFTConfig

    per_epoch = training.steps_per_epoch(n_train, cfg.batch_size, cfg.grad_accum)
    eval_every = max(1, per_epoch // cfg.evals_per_epoch)
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 16),
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type="cosine",
        warmup_steps=round(cfg.warmup_ratio * per_epoch * cfg.epochs),
        max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        bf16=hw["bf16"],
        fp16=hw["fp16"],
        gradient_checkpointing=hw["gradient_checkpointing"],
        use_cpu=hw["device"] == "cpu",
        eval_strategy="steps" if has_val else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=run.keep_checkpoints,
        load_best_model_at_end=has_val and cfg.early_stopping_patience > 0,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, min(10, eval_every // 2)),
        logging_nan_inf_filter=False,  # a NaN must reach the health monitor, not be averaged away
        report_to="none",  # TensorBoard is attached explicitly, to write into the run directory
        seed=run.seed,
        data_seed=run.seed,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=False,
    )


def _setup_callbacks(cfg: LoraSFTConfig, run: RetrainConfig, run_dir: Path, has_val: bool, name: str):
    from transformers import EarlyStoppingCallback

    monitor = HealthMonitor(run.max_loss_gap, run.grad_norm_min, run.grad_norm_max, run_name=name)
    callbacks = [monitor, training.tensorboard_callback(run_dir / "tensorboard")]
    if has_val and cfg.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return monitor, callbacks


def train_sft(
    base_path: str | Path,
    rows: list[dict] | str | Path,
    run_dir: str | Path,
    cfg: LoraSFTConfig | None = None,
    run: RetrainConfig | None = None,
    eval_rows: list[dict] | str | Path | None = None,
) -> dict:
    """Train a LoRA adapter on SFT rows; write <run_dir>/adapter and metrics.json; return the metrics.

    rows: {prompt, response} dicts, or a Parquet/JSONL file of them. eval_rows: validation
    rows (default: a `val_fraction` split of rows). A rerun with the same run_dir resumes
    from the newest checkpoint. Raises NonFiniteLossError if the loss becomes NaN/inf.
    """
    from trl import SFTTrainer

    run = run or RetrainConfig()
    cfg = resolve_config(cfg or LoraSFTConfig(), base_path)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = training.attach_log_file(run_dir)
    try:
        started = time.perf_counter()
        hw = training.hardware(run)
        model, tokenizer = _setup_model(base_path, hw)
        chat = tokenizer.chat_template is not None
        all_rows = training.load_rows(rows)
        if not all_rows:
            raise ValueError("train_sft: no training rows")
        train_ds, val_ds = _setup_data(all_rows, training.load_rows(eval_rows) if eval_rows is not None else None,
                                       cfg, run.seed, chat)
        args = _setup_training_args(cfg, run, hw, run_dir, len(train_ds), val_ds is not None)
        monitor, callbacks = _setup_callbacks(cfg, run, run_dir, val_ds is not None, name=f"sft {run_dir.name}")
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
            processing_class=tokenizer, peft_config=_setup_lora(cfg), callbacks=callbacks,
        )
        resume = training.last_checkpoint(run_dir / "checkpoints")
        training.log.info("sft: %d train / %d val rows, %s, resume from %s, cfg %s",
                          len(train_ds), len(val_ds) if val_ds else 0, hw, resume, asdict(cfg))
        result = trainer.train(resume_from_checkpoint=resume)
        if monitor.non_finite:
            raise NonFiniteLossError(
                f"SFT run {run_dir} stopped: {monitor.non_finite}. No adapter was saved; check the data and "
                f"lower sft.learning_rate (now {cfg.learning_rate}).")
        return _finish(trainer, monitor, run_dir, tokenizer, {
            "method": "lora_sft",
            "base": str(base_path),
            "train_rows": len(train_ds),
            "val_rows": len(val_ds) if val_ds else 0,
            "resumed_from": resume,
            "steps": result.global_step,
            "epochs_run": trainer.state.epoch,
            "train_runtime_s": round(time.perf_counter() - started, 1),
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "hardware": hw,
            "config": asdict(cfg),
        })
    finally:
        training.detach_log_file(handler)


def _finish(trainer, monitor: HealthMonitor, run_dir: Path, tokenizer, metrics: dict) -> dict:
    """Save the adapter (the best one when early stopping kept the best) and write metrics.json."""
    adapter_dir = run_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    trainer.model.save_pretrained(str(adapter_dir), selected_adapters=["default"], save_embedding_layers=False)
    tokenizer.save_pretrained(str(adapter_dir))
    metrics.update(monitor.summary())
    # Short names the retrain job and the registry read.
    metrics.update(train_loss=metrics["final_train_loss"], eval_loss=metrics["final_eval_loss"],
                   loss_gap=metrics["final_loss_gap"], train_seconds=metrics["train_runtime_s"])
    metrics["best_checkpoint"] = trainer.state.best_model_checkpoint
    metrics["adapter_dir"] = str(adapter_dir)
    training.write_metrics(run_dir, metrics)
    return metrics
