"""LoRA SFT recipe: supervised fine-tuning of a LoRA adapter on {prompt, response} rows.

    train_sft(base_path, rows, run_dir, cfg, run) -> metrics

TRL's SFTTrainer does the training; this file decides what goes in: conversational
prompt/completion rows (loss on the answer only), a LoRA adapter on the configured
modules and the KL anchor (anchor.py). What it shares with lora_dpo.py comes from
training.py: the cosine schedule with warm-up, gradient clipping, validation loss with
early stopping, checkpoints a rerun resumes from, TensorBoard logs and the health monitor. The
defaults (`[sft]` in kaizen.toml) suit real models; the embedded SmolLM2-135M needs a higher
learning rate and LoRA on every linear layer, which EMBEDDED_OVERRIDES sets (see
docs/TRAINING.md for the measurements behind it).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl import SFTTrainer  # noqa: E402

from kaizenlm.base.model import as_messages  # noqa: E402
from kaizenlm.config import LoraSFTConfig, RetrainConfig  # noqa: E402
from kaizenlm.retrain import launch, shared_prefix, training  # noqa: E402
from kaizenlm.retrain.anchor import AnchorLoss, setup_anchor  # noqa: E402
from kaizenlm.retrain.monitoring import NonFiniteLossError  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# What the embedded SmolLM2-135M-Instruct needs to learn a deployment's facts in a few epochs
# on CPU: LoRA on every linear layer and a learning rate well above the real-model default
# (3e-5 barely moves a 135M model in three epochs). Measurements: docs/TRAINING.md.
EMBEDDED_OVERRIDES = {
    "learning_rate": 1e-3,
    # Two passes over a month of a few hundred rows teach the held-out phrasings (0.875 of the
    # benchmark's exam for seed 0 against 0.951 after three) in two thirds of the time, and drift
    # less (docs/TRAINING.md "Learning speed and forgetting").
    "epochs": 2.0,
    # A month of a small deployment's corrections is a few dozen rows: 3 passes are ~25 steps,
    # too few to learn the values (the demo's --short retrain: domain 0.19 after 3 passes + DPO,
    # 0.54 after 7, but retention 0.986 against the gate's 0.98; 5 passes keep more margin;
    # docs/TRAINING.md "Small snapshots").
    "min_steps": 45,
    "max_epochs": 8.0,
    "batch_size": 8,
    "target_modules": list(ALL_LINEAR),
    # No LoRA dropout: on CPU its Bernoulli masks (one per adapted layer and forward pass,
    # 420 a step) were 16% of a step's time; replay and the KL anchor do the regularizing
    # (docs/TRAINING.md "Training speed and scale").
    "lora_dropout": 0.0,
    "warmup_ratio": 0.05,
    "max_length": 256,
    "early_stopping_patience": 2,
    "evals_per_epoch": 1,
    # The KL anchor holds general skills: without it the demo's retrain kept 0.84-0.90 of the
    # base's multiple-choice accuracy, with weight 10 on 8 of 64 general prompts per step 0.99
    # (docs/TRAINING.md "Replay and anchor data"). The base's own answers, so no generation.
    # The first 32 answer tokens of each row hold as much for ~7.3 s per step instead of ~8.5.
    # 4 rows per step hold as much as 8 (demo retrain, 63 steps + DPO: 0.987 against 0.986 and
    # 0.993; learning benchmark: 0.993 against 0.989) for ~1 s less a step.
    "anchor_weight": 10.0,
    "anchor_batch_size": 4,
    "anchor_answer_tokens": 32,
    "anchor_pool_size": 64,
    "anchor_perturb_copies": 0,
}


def resolve_config(cfg: LoraSFTConfig, base_path: str | Path) -> LoraSFTConfig:
    """The config this run uses: the embedded overrides on untouched keys when the base is the embedded model."""
    return training.apply_overrides(cfg, EMBEDDED_OVERRIDES) if training.is_embedded_base(base_path) else cfg


def train_sft(
    base_path: str | Path,
    rows: list[dict] | str | Path,
    run_dir: str | Path,
    cfg: LoraSFTConfig | None = None,
    run: RetrainConfig | None = None,
    eval_rows: list[dict] | str | Path | None = None,
    anchor_rows: list[dict] | None = None,
) -> dict:
    """Train a LoRA adapter on SFT rows; write <run_dir>/adapter and metrics.json; return the metrics.

    rows: {prompt, response} dicts, or a Parquet/JSONL file of them. eval_rows: validation
    rows (default: a `val_fraction` split of rows). anchor_rows: general rows {messages,
    response} from anchor.select for the KL anchor (used when cfg.anchor_weight > 0; a None
    response is answered by the base first). A rerun with the same run_dir resumes from the
    newest checkpoint. Raises NonFiniteLossError if the loss becomes NaN/inf.
    """
    run = run or RetrainConfig()
    if launch.should_launch(run):  # retrain.processes > 1: this same call in N processes, under accelerate
        return launch.run_recipe("sft", run_dir, run, base_path=base_path, rows=rows, cfg=cfg, eval_rows=eval_rows,
                                 anchor_rows=anchor_rows)
    cfg = resolve_config(cfg or LoraSFTConfig(), base_path)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = training.attach_log_file(run_dir)
    try:
        started = time.perf_counter()
        hw = training.hardware(run)
        model, tokenizer = training.load_base(base_path, hw)
        chat = tokenizer.chat_template is not None
        all_rows = training.load_rows(rows)
        if not all_rows:
            raise ValueError("train_sft: no training rows")
        train_ds, val_ds = _setup_data(all_rows, training.load_rows(eval_rows) if eval_rows is not None else None,
                                       cfg, run.seed, chat)
        cfg = _setup_epochs(cfg, len(train_ds), hw)
        args = _setup_training_args(cfg, run, hw, run_dir, len(train_ds), val_ds is not None)
        monitor, callbacks = training.callbacks(cfg, run, run_dir, val_ds is not None, name=f"sft {run_dir.name}")
        anchor = setup_anchor(anchor_rows, cfg, model, tokenizer, chat, run.seed)
        trainer = AnchoredSFTTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
            processing_class=tokenizer, peft_config=training.lora_config(cfg), callbacks=callbacks,
        )
        trainer.anchor = anchor
        hw = {**hw, "shared_prefix": hw["padding_free"] and shared_prefix.usable(model)}
        trainer.shared_prefix = hw["shared_prefix"]
        if hw["padding_free"]:  # TRL leaves truncation to us in padding-free mode
            trainer.train_dataset = training.truncate_tokenized(trainer.train_dataset, cfg.max_length)
            trainer.eval_dataset = training.truncate_tokenized(trainer.eval_dataset, cfg.max_length)
        resume = training.last_checkpoint(run_dir / "checkpoints")
        training.log.info("sft: %d train / %d val rows, %s, resume from %s, cfg %s",
                          len(train_ds), len(val_ds) if val_ds else 0, hw, resume, asdict(cfg))
        result = trainer.train(resume_from_checkpoint=resume)
        if monitor.non_finite:
            raise NonFiniteLossError(
                f"SFT run {run_dir} stopped: {monitor.non_finite}. No adapter was saved; check the data and "
                f"lower sft.learning_rate (now {cfg.learning_rate}).")
        return training.finish(trainer, monitor, run_dir, tokenizer, {
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
            "prefix_tokens_saved": trainer.prefix_tokens_saved,
            "config": asdict(cfg),
            "anchor_rows": len(anchor.rows) if anchor else 0,
            "anchor_kl_last": anchor.last_kl if anchor else None,
        })
    finally:
        training.detach_log_file(handler)


def _setup_data(rows: list[dict], eval_rows: list[dict] | None, cfg: LoraSFTConfig, seed: int, chat: bool):
    """Prompt/completion datasets: chat messages when the tokenizer has a chat template, else plain text."""
    from datasets import Dataset

    if eval_rows is None:
        rows, eval_rows = training.split_rows(rows, cfg.val_fraction, seed)

    def convert(row: dict) -> dict:
        if chat:
            return {"prompt": as_messages(row["prompt"]),
                    "completion": [{"role": "assistant", "content": row["response"]}]}
        return {"prompt": str(row["prompt"]), "completion": " " + row["response"]}

    train = Dataset.from_list([convert(r) for r in rows])
    val = Dataset.from_list([convert(r) for r in eval_rows]) if eval_rows else None
    return train, val


def _setup_epochs(cfg: LoraSFTConfig, n_train: int, hw: dict) -> LoraSFTConfig:
    """cfg with epochs raised so the run takes at least cfg.min_steps optimizer steps (capped
    at cfg.max_epochs): a few dozen corrections are too few steps to learn from in 3 passes."""
    per_epoch = training.steps_per_epoch(cfg, hw, n_train)
    epochs = max(cfg.epochs, min(math.ceil(cfg.min_steps / per_epoch), cfg.max_epochs))
    if epochs != cfg.epochs:
        training.log.info("sft: %d rows make %d steps per epoch; %g epochs instead of %g to reach min_steps %d",
                          n_train, per_epoch, epochs, cfg.epochs, cfg.min_steps)
    return replace(cfg, epochs=float(epochs))


def _setup_training_args(cfg: LoraSFTConfig, run: RetrainConfig, hw: dict, run_dir: Path, n_train: int, has_val: bool):
    """The arguments both recipes share (training.common_args) plus SFT's own."""
    from trl import SFTConfig

    args = training.common_args(cfg, run, hw, run_dir, n_train, has_val)
    if hw["padding_free"]:  # rows concatenated without pads; max_length is then applied by truncate_tokenized
        args.update(padding_free=True, max_length=None)
    return SFTConfig(**args, weight_decay=cfg.weight_decay, dataset_num_proc=None)


class AnchoredSFTTrainer(AnchorLoss, SFTTrainer):
    """TRL's SFTTrainer with the KL anchor (off while `anchor` is None) and, when `shared_prefix`
    is on, padding-free batches computed with their rows' common prefix once (shared_prefix.py)."""

    shared_prefix: bool = False
    prefix_tokens_saved: int = 0  # training tokens the shared layout did not compute again

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        shared = shared_prefix.shared_batch(inputs) if self.shared_prefix and not return_outputs else None
        if shared is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        batch, tokens = shared
        counted = self._total_train_tokens
        loss = super().compute_loss(model, batch, return_outputs, num_items_in_batch)
        if model.training:  # TRL counts a batch's tokens from its attention mask, here a 4-D one
            import torch

            local = torch.tensor(tokens, device=batch["input_ids"].device)
            self._total_train_tokens = counted + self.accelerator.gather_for_metrics(local).sum().item()
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            self.prefix_tokens_saved += tokens - batch["input_ids"].shape[1]
        return loss
