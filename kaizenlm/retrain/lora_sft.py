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

import contextlib
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl import SFTTrainer  # noqa: E402

from kaizenlm.base.model import as_messages  # noqa: E402
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
# exam score (3e-3: 0.90 / 0.68; 5e-4: 0.18 / 0.86) unless the KL anchor holds the general
# skills: with it, 3e-3 keeps retention at 0.97-1.00 and teaches more (exam ~0.84).
# Measurements: docs/TRAINING.md.
TINY_OVERRIDES = {
    "learning_rate": 3e-3,
    "anchor_weight": 5.0,
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
            return {"prompt": as_messages(row["prompt"]),
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
        anchor = setup_anchor(anchor_rows, cfg, model, tokenizer, chat, run.seed)
        trainer = AnchoredSFTTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
            processing_class=tokenizer, peft_config=_setup_lora(cfg), callbacks=callbacks,
        )
        trainer.anchor = anchor
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
            "anchor_rows": len(anchor.rows) if anchor else 0,
            "anchor_kl_last": anchor.last_kl if anchor else None,
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


# ---------------------------------------------------------------- the KL anchor

@dataclass
class Anchor:
    """Tokenized anchor rows (input ids, labels with the prompt masked) and the step's draw."""

    rows: list[tuple[list[int], list[int]]]
    weight: float
    batch_size: int
    pad_id: int
    rng: random.Random
    last_kl: float | None = None

    def draw(self, device):
        import torch

        batch = self.rng.sample(self.rows, min(self.batch_size, len(self.rows)))
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([x + [self.pad_id] * (width - len(x)) for x, _ in batch], device=device)
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch], device=device)
        return ids, labels, mask


def setup_anchor(rows: list[dict] | None, cfg, model, tokenizer, chat: bool, seed: int) -> Anchor | None:
    """The anchor rows (cfg: an SFT or DPO config), answered by the base where they have no
    response, tokenized; None when the anchor is off."""
    if cfg.anchor_weight <= 0:
        return None
    if not rows:
        training.log.warning("anchor_weight is %s but there are no anchor rows: training without the anchor",
                             cfg.anchor_weight)
        return None
    from peft import PeftModel

    from kaizenlm.retrain import anchor

    if not chat:
        rows = [{**r, "messages": anchor.prompt_key(r["messages"])} for r in rows]
    missing = sum(r["response"] is None for r in rows)
    with model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext():
        rows = anchor.answer_missing(rows, model, tokenizer)  # the base's answers, never an adapter's
    tokenized = [_tokenize_anchor_row(tokenizer, r, chat, cfg.max_length) for r in rows]
    training.log.info("anchor: %d rows (%d answered by the base), weight %s, %d per step",
                      len(rows), missing, cfg.anchor_weight, cfg.anchor_batch_size)
    return Anchor([t for t in tokenized if any(y != -100 for y in t[1])], cfg.anchor_weight, cfg.anchor_batch_size,
                  tokenizer.pad_token_id, random.Random(seed))


def _tokenize_anchor_row(tokenizer, row: dict, chat: bool, max_length: int) -> tuple[list[int], list[int]]:
    if chat:
        messages = as_messages(row["messages"])
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": row["response"]}],
                                             tokenize=False)
    else:
        prompt, full = row["messages"], f"{row['messages']} {row['response']}"
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    return f_ids, ([-100] * len(p_ids) + f_ids[len(p_ids):])[:max_length]


class AnchorLoss:
    """Mixin for a TRL trainer: in training steps, adds anchor.weight x mean KL(p_base || p_model)
    over the answer tokens of anchor.batch_size anchor rows. p_base is the same network with
    its adapters disabled, under no_grad. The logged train `loss` stays the trainer's own loss
    (the anchor is logged as `anchor_kl`), so the loss-gap monitor and early stopping (on the
    plain evaluation loss) read the same quantities as without the anchor."""

    anchor: Anchor | None = None
    _anchor_terms: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.anchor is None or not model.training or return_outputs:
            return loss
        kl = self._anchor_kl(model)
        self.anchor.last_kl = round(float(kl.detach()), 5)
        self._metrics["train"]["anchor_kl"].append(self.anchor.last_kl)
        # Each micro-batch adds its share, so one optimizer step carries weight x KL in all.
        self._anchor_terms = [*self._anchor_terms, self.anchor.weight * self.anchor.last_kl]
        return loss + self.anchor.weight * kl / self.args.gradient_accumulation_steps

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._anchor_terms:  # the mean step loss since the last log, minus the anchor's part
            logs["loss"] -= sum(self._anchor_terms) / len(self._anchor_terms)
            self._anchor_terms = []
        super().log(logs, start_time)

    def _anchor_kl(self, model):
        import torch

        ids, labels, mask = self.anchor.draw(next(model.parameters()).device)
        valid = (labels[:, 1:] != -100).float()
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float(), -1)
        with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
            base_logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        base_logp = torch.log_softmax(base_logits, -1)
        kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
        return (kl * valid).sum() / valid.sum().clamp(min=1)


class AnchoredSFTTrainer(AnchorLoss, SFTTrainer):
    """TRL's SFTTrainer with the KL anchor (off while `anchor` is None)."""
