"""LoRA DPO recipe: preference tuning of the SFT adapter on {prompt, chosen, rejected} pairs.

    train_dpo(base_path, sft_adapter, pairs, run_dir, cfg, run) -> metrics

The SFT adapter is loaded trainable on top of the base; TRL's DPOTrainer copies it into a
frozen "ref" adapter, so the reference policy is the SFT model (not the bare base) and no
second model is held in memory. Only the trained "default" adapter is saved. The KL anchor
comes from anchor.py; everything else (schedule, clipping, validation + early stopping,
checkpoints, TensorBoard, health monitor) from training.py, as for lora_sft.py. With
sft_adapter=None a fresh LoRA adapter is trained against the base model. On CPU, TRL's padded
preference batches compute the prompt tokens all their rows share once (shared_prefix.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl import DPOTrainer  # noqa: E402

from kaizenlm.base.model import as_messages  # noqa: E402
from kaizenlm.config import LoraDPOConfig, LoraSFTConfig, RetrainConfig  # noqa: E402
from kaizenlm.retrain import launch, lora_sft, shared_prefix, training  # noqa: E402
from kaizenlm.retrain.anchor import AnchorLoss, setup_anchor  # noqa: E402
from kaizenlm.retrain.monitoring import NonFiniteLossError  # noqa: E402

# What the embedded SmolLM2-135M-Instruct needs for a visible preference shift in one epoch on
# CPU; the SFT term (RPO) keeps the chosen answers likely while the rejected ones are pushed
# down (plain DPO at this rate degrades greedy answers). Measurements: docs/TRAINING.md.
EMBEDDED_OVERRIDES = {
    "learning_rate": 2e-4,
    "sft_loss_weight": 1.0,
    "epochs": 1.0,
    "batch_size": 8,
    "warmup_ratio": 0.05,
    "max_length": 256,
    "early_stopping_patience": 2,
    "evals_per_epoch": 1,
    "anchor_weight": 10.0,  # as lora_sft.EMBEDDED_OVERRIDES: DPO drifts too
    "anchor_batch_size": 4,
    "anchor_answer_tokens": 32,
}


def resolve_config(cfg: LoraDPOConfig, base_path: str | Path) -> LoraDPOConfig:
    """The config this run uses: the embedded overrides on untouched keys when the base is the embedded model."""
    return training.apply_overrides(cfg, EMBEDDED_OVERRIDES) if training.is_embedded_base(base_path) else cfg


def train_dpo(
    base_path: str | Path,
    sft_adapter: str | Path | None,
    pairs: list[dict] | str | Path,
    run_dir: str | Path,
    cfg: LoraDPOConfig | None = None,
    run: RetrainConfig | None = None,
    eval_pairs: list[dict] | str | Path | None = None,
    anchor_rows: list[dict] | None = None,
) -> dict:
    """Train the SFT adapter further with DPO; write <run_dir>/adapter and metrics.json; return the metrics.

    pairs: {prompt, chosen, rejected} dicts (other keys such as `source` are ignored), or a
    Parquet/JSONL file of them. anchor_rows: as for train_sft (the KL anchor to the base,
    used when cfg.anchor_weight > 0). A rerun with the same run_dir resumes from the newest
    checkpoint. Raises NonFiniteLossError if the loss becomes NaN/inf.
    """
    run = run or RetrainConfig()
    if launch.should_launch(run):  # retrain.processes > 1: this same call in N processes, under accelerate
        return launch.run_recipe("dpo", run_dir, run, base_path=base_path, sft_adapter=sft_adapter, pairs=pairs,
                                 cfg=cfg, eval_pairs=eval_pairs, anchor_rows=anchor_rows)
    cfg = resolve_config(cfg or LoraDPOConfig(), base_path)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = training.attach_log_file(run_dir)
    try:
        started = time.perf_counter()
        hw = training.hardware(run)
        model, tokenizer, peft_config = _setup_model(base_path, sft_adapter, hw)
        chat = tokenizer.chat_template is not None
        rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in training.load_rows(pairs)]
        if not rows:
            raise ValueError("train_dpo: no preference pairs")
        val_rows = None
        if eval_pairs is not None:
            val_rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in training.load_rows(eval_pairs)]
        train_ds, val_ds = _setup_data(rows, val_rows, cfg, run.seed, chat)
        if 0 < cfg.max_pairs < len(train_ds):
            training.log.info("dpo: %d of %d pairs (dpo.max_pairs)", cfg.max_pairs, len(train_ds))
            train_ds = train_ds.shuffle(seed=run.seed).select(range(cfg.max_pairs))
        args = _setup_training_args(cfg, run, hw, run_dir, len(train_ds), val_ds is not None)
        monitor, callbacks = training.callbacks(cfg, run, run_dir, val_ds is not None, name=f"dpo {run_dir.name}")
        anchor = setup_anchor(anchor_rows, cfg, model, tokenizer, chat, run.seed)
        trainer = AnchoredDPOTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
        )
        trainer.anchor = anchor
        hw = {**hw, "shared_prefix": shared_prefix.usable(model)}
        trainer.shared_prefix = hw["shared_prefix"]
        margin_rows = (val_rows if val_rows is not None else [dict(r) for r in (val_ds or [])])[:64]
        margin_before = _margin(trainer.model, tokenizer, margin_rows)
        resume = training.last_checkpoint(run_dir / "checkpoints")
        training.log.info("dpo: %d train / %d val pairs, %s, sft adapter %s, resume from %s, cfg %s",
                          len(train_ds), len(val_ds) if val_ds else 0, hw, sft_adapter, resume, asdict(cfg))
        result = trainer.train(resume_from_checkpoint=resume)
        if monitor.non_finite:
            raise NonFiniteLossError(
                f"DPO run {run_dir} stopped: {monitor.non_finite}. No adapter was saved; check the pairs and "
                f"lower dpo.learning_rate (now {cfg.learning_rate}).")
        final_eval = trainer.evaluate() if val_ds is not None else {}
        return training.finish(trainer, monitor, run_dir, tokenizer, {
            "method": "lora_dpo",
            "base": str(base_path),
            "sft_adapter": str(sft_adapter) if sft_adapter else None,
            "train_pairs": len(train_ds),
            "val_pairs": len(val_ds) if val_ds else 0,
            "resumed_from": resume,
            "steps": result.global_step,
            "epochs_run": trainer.state.epoch,
            "train_runtime_s": round(time.perf_counter() - started, 1),
            "eval_reward_margin": final_eval.get("eval_rewards/margins"),
            "pref_margin_before": margin_before,
            "pref_margin_after": _margin(trainer.model, tokenizer, margin_rows),
            "eval_reward_accuracy": final_eval.get("eval_rewards/accuracies"),
            "trainable_params": sum(p.numel() for n, p in trainer.model.named_parameters()
                                    if p.requires_grad and ".ref." not in n),
            "hardware": hw,
            "prefix_tokens_saved": trainer.prefix_tokens_saved,
            "config": asdict(cfg),
            "anchor_rows": len(anchor.rows) if anchor else 0,
            "anchor_kl_last": anchor.last_kl if anchor else None,
        })
    finally:
        training.detach_log_file(handler)


def _setup_model(base_path: str | Path, sft_adapter: str | Path | None, hw: dict):
    """Base + SFT adapter (trainable). Without an SFT adapter the trainer gets a fresh LoRA
    config of the SFT recipe's shape."""
    from peft import PeftModel

    model, tokenizer = training.load_base(base_path, hw)
    if sft_adapter is None:
        return model, tokenizer, training.lora_config(lora_sft.resolve_config(LoraSFTConfig(), base_path))
    model = PeftModel.from_pretrained(model, str(sft_adapter), is_trainable=True)
    return model, tokenizer, None


def _setup_data(pairs: list[dict], eval_pairs: list[dict] | None, cfg: LoraDPOConfig, seed: int, chat: bool):
    """Preference datasets: chat messages when the tokenizer has a chat template, else plain text."""
    from datasets import Dataset

    if eval_pairs is None:
        pairs, eval_pairs = training.split_rows(pairs, cfg.val_fraction, seed)

    def convert(row: dict) -> dict:
        if chat:
            return {"prompt": as_messages(row["prompt"]),
                    "chosen": [{"role": "assistant", "content": row["chosen"]}],
                    "rejected": [{"role": "assistant", "content": row["rejected"]}]}
        return {"prompt": str(row["prompt"]), "chosen": " " + row["chosen"], "rejected": " " + row["rejected"]}

    train = Dataset.from_list([convert(r) for r in pairs])
    val = Dataset.from_list([convert(r) for r in eval_pairs]) if eval_pairs else None
    return train, val


def _setup_training_args(cfg: LoraDPOConfig, run: RetrainConfig, hw: dict, run_dir: Path, n_train: int, has_val: bool):
    """The arguments both recipes share (training.common_args) plus DPO's own: beta and the
    loss, sigmoid DPO plus, with sft_loss_weight > 0, an SFT term on the chosen answers (RPO)."""
    from trl import DPOConfig

    return DPOConfig(
        **training.common_args(cfg, run, hw, run_dir, n_train, has_val),
        beta=cfg.beta,
        loss_type=["sigmoid", "sft"] if cfg.sft_loss_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, cfg.sft_loss_weight] if cfg.sft_loss_weight > 0 else None,
    )


def _margin(model, tokenizer, rows: list[dict]) -> float | None:
    """Mean log p(chosen) - log p(rejected) of the policy on validation pairs (None without any;
    None on ranks other than 0 of a multi-process run, whose metrics nobody reads)."""
    if not rows or not launch.is_main_process():
        return None
    from kaizenlm.eval.evaluate import preference_margin

    def text(x):  # dataset rows hold chat messages; the margin wants the answer text
        return x[-1]["content"] if isinstance(x, list) else x

    was_training = model.training
    model.eval()
    try:
        return preference_margin(model, tokenizer, [{"prompt": r["prompt"], "chosen": text(r["chosen"]),
                                                     "rejected": text(r["rejected"])} for r in rows])
    finally:
        model.train(was_training)


class AnchoredDPOTrainer(AnchorLoss, DPOTrainer):
    """TRL's DPOTrainer with the KL anchor to the base (off while `anchor` is None) and, when
    `shared_prefix` is on, the policy's and the reference's forward passes computing the prefix
    their batch's rows share once (shared_prefix.fused_calls_shared)."""

    shared_prefix: bool = False
    prefix_tokens_saved: int = 0  # the policy's real tokens the shared layout did not compute again

    def _compute_loss(self, model, inputs, return_outputs):
        if not self.shared_prefix:
            return super()._compute_loss(model, inputs, return_outputs)
        with shared_prefix.fused_calls_shared(self.accelerator.unwrap_model(model)) as saved:
            result = super()._compute_loss(model, inputs, return_outputs)
        if model.training:
            self.prefix_tokens_saved += saved["tokens"]
        return result
