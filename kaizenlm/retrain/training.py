"""What the SFT and DPO recipes share: input rows, the run directory, hardware choices,
tiny-model overrides, the base model and its LoRA config, the training arguments both
trainers take, callbacks, checkpoint resume, TensorBoard, and saving the adapter and the
metrics file.

Run directory of one recipe run:

    <run_dir>/adapter/          the LoRA adapter (peft save_pretrained) + tokenizer
    <run_dir>/checkpoints/      Trainer checkpoints; a rerun resumes from the newest
    <run_dir>/tensorboard/      TensorBoard event files (train/eval loss, grad norm, lr)
    <run_dir>/metrics.json      training metrics and health summary
    <run_dir>/train.log         the run's log
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from kaizenlm.base.model import inference_dtype_name  # noqa: E402
from kaizenlm.config import LoraDPOConfig, LoraSFTConfig, RetrainConfig  # noqa: E402

if TYPE_CHECKING:
    from kaizenlm.retrain.monitoring import HealthMonitor

log = logging.getLogger("kaizenlm.retrain")

def is_embedded_base(path: str | Path) -> bool:
    """True when the base directory holds the embedded SmolLM2 kaizenlm converted (or its registered copy)."""
    from kaizenlm.base.embedded import EMBEDDED_NAME
    from kaizenlm.base.model import base_marker

    return base_marker(path).get("name") == EMBEDDED_NAME


def load_rows(rows: list[dict] | str | Path) -> list[dict]:
    """Rows from a list, a Parquet snapshot or a JSON-lines file."""
    if isinstance(rows, list):
        return rows
    path = Path(rows)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_rows(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded train/validation split; at least one validation row when val_fraction > 0."""
    if val_fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(rows) * val_fraction))
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


def apply_overrides(cfg, overrides: dict):
    """Replace the fields of cfg still at their class default by the override values."""
    defaults = type(cfg)()
    changes = {k: v for k, v in overrides.items() if getattr(cfg, k) == getattr(defaults, k)}
    return dataclasses.replace(cfg, **changes)


def training_precision(precision: str) -> str:
    """retrain.precision resolved: "auto" is bf16 where the hardware computes it natively (a CUDA
    GPU with bf16, a CPU with AVX512-BF16 or AMX), the same probe as inference's, else fp32."""
    if precision != "auto":
        return precision
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16" if inference_dtype_name("auto", device) == "bfloat16" else "fp32"


def hardware(run: RetrainConfig) -> dict:
    """Device, precision, gradient checkpointing, padding-free batches and the attention kernel
    for this machine and config (the "auto" choices: docs/TRAINING.md "Training speed")."""
    from kaizenlm.retrain import launch, speed

    cuda = torch.cuda.is_available()
    precision = training_precision(run.precision)
    checkpointing = run.gradient_checkpointing == "on" or (run.gradient_checkpointing == "auto" and cuda)
    padding_free = run.padding_free == "on" or (run.padding_free == "auto" and not cuda)
    attention = run.attention
    if attention == "auto":
        attention = speed.SDPA_VARLEN if padding_free and speed.varlen_available() else None
    if attention == speed.SDPA_VARLEN:
        speed.register_sdpa_varlen()
    if not cuda:
        torch.set_num_threads(max(1, run.cpu_threads // launch.world_size()))  # N processes share the cores
        speed.score_labelled_positions_only()
    return {"device": "cuda" if cuda else "cpu", "bf16": precision == "bf16", "fp16": precision == "fp16",
            "gradient_checkpointing": checkpointing, "padding_free": padding_free, "attention": attention,
            "processes": launch.world_size()}


def load_base(base_path: str | Path, hw: dict):
    """The base model (in the precision `hw` chose) and its tokenizer, with a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if hw["bf16"] else torch.float16 if hw["fp16"] else torch.float32
    attention = {"attn_implementation": hw["attention"]} if hw.get("attention") else {}
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype, **attention)
    return model, tokenizer


def lora_config(cfg: LoraSFTConfig):
    """A fresh LoRA adapter's peft config from an SFT config's LoRA shape."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
    )


def common_args(cfg: LoraSFTConfig | LoraDPOConfig, run: RetrainConfig, hw: dict, run_dir: Path, n_train: int,
                has_val: bool) -> dict:
    """The training arguments SFTConfig and DPOConfig share (cfg: an SFT or DPO config): a cosine
    schedule with warm-up, clipping, `evals_per_epoch` evaluations with a checkpoint each,
    the best checkpoint kept when early stopping is on, seeded, TensorBoard attached by the caller."""
    per_epoch = steps_per_epoch(cfg, hw, n_train)
    eval_every = max(1, per_epoch // cfg.evals_per_epoch)
    return {
        "output_dir": str(run_dir / "checkpoints"),
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": max(cfg.batch_size, 16),
        "gradient_accumulation_steps": cfg.grad_accum,
        "lr_scheduler_type": "cosine",
        "warmup_steps": round(cfg.warmup_ratio * per_epoch * cfg.epochs),
        "max_grad_norm": cfg.max_grad_norm,
        "max_length": cfg.max_length,
        "bf16": hw["bf16"],
        "fp16": hw["fp16"],
        "gradient_checkpointing": hw["gradient_checkpointing"],
        "use_cpu": hw["device"] == "cpu",
        "eval_strategy": "steps" if has_val else "no",
        "eval_steps": eval_every,
        "save_strategy": "steps",
        "save_steps": eval_every,
        "save_total_limit": run.keep_checkpoints,
        "load_best_model_at_end": has_val and cfg.early_stopping_patience > 0,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "logging_steps": max(1, min(10, eval_every // 2)),
        "logging_nan_inf_filter": False,  # a NaN must reach the health monitor, not be averaged away
        "report_to": "none",  # TensorBoard is attached explicitly, to write into the run directory
        "seed": run.seed,
        "data_seed": run.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
        "ddp_find_unused_parameters": False,  # with N processes: every LoRA weight gets a gradient each step
    }


def callbacks(cfg: LoraSFTConfig | LoraDPOConfig, run: RetrainConfig, run_dir: Path, has_val: bool, name: str):
    """(health monitor, the trainer's callbacks): the monitor, TensorBoard into the run
    directory and, with a validation set and a patience, early stopping on the validation loss."""
    from transformers import EarlyStoppingCallback

    from kaizenlm.retrain.launch import is_main_process
    from kaizenlm.retrain.monitoring import HealthMonitor

    monitor = HealthMonitor(run.max_loss_gap, run.grad_norm_min, run.grad_norm_max, run_name=name)
    found = [monitor, *([tensorboard_callback(run_dir / "tensorboard")] if is_main_process() else [])]
    if has_val and cfg.early_stopping_patience > 0:
        found.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return monitor, found


def truncate_tokenized(dataset, max_length: int | None):
    """A tokenized TRL dataset with every row cut to max_length tokens (SFTTrainer truncates
    itself, except in padding-free mode without packing, where it leaves that to the caller)."""
    if dataset is None or max_length is None or not any(len(ids) > max_length for ids in dataset["input_ids"]):
        return dataset

    def cut(row: dict) -> dict:
        n = len(row["input_ids"])
        return {k: v[:max_length] for k, v in row.items() if isinstance(v, list) and len(v) == n}

    return dataset.map(cut)


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete Trainer checkpoint, to resume from; None for a fresh run.
    The Trainer writes trainer_state.json last, and a run killed while saving (a dead rank
    takes the others down) leaves a newer directory without it, or with half of it: those
    are removed, so the rerun saves them afresh instead of resuming from them."""
    if not checkpoint_dir.is_dir():
        return None
    prefix = "checkpoint-"  # the Trainer's PREFIX_CHECKPOINT_DIR, then the global step
    found = sorted((p for p in checkpoint_dir.glob(prefix + "*") if p.is_dir() and p.name[len(prefix):].isdigit()),
                   key=lambda p: int(p.name[len(prefix):]), reverse=True)
    for path in found:
        if _complete(path):
            return str(path)
        log.warning("removing the incomplete checkpoint %s (the run stopped while saving it)", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def tensorboard_callback(log_dir: Path):
    """TensorBoard logging into the run directory (Trainer's own default is a dated folder)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def finish(trainer, monitor: HealthMonitor, run_dir: Path, tokenizer, metrics: dict) -> dict:
    """Save the trained "default" adapter (the best one when early stopping kept the best) and
    the tokenizer into <run_dir>/adapter; add the monitor's summary to the metrics and write
    metrics.json; return the metrics. With N processes only rank 0 writes (every rank returns them)."""
    from kaizenlm.retrain.launch import is_main_process

    adapter_dir = run_dir / "adapter"
    if is_main_process():
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
    if is_main_process():
        write_metrics(run_dir, metrics)
    return metrics


def attach_log_file(run_dir: Path) -> logging.Handler:
    """train.log in the run directory (rank 0 only: the other ranks' output goes to the job log)."""
    from kaizenlm.retrain.launch import is_main_process

    if not is_main_process():
        return logging.NullHandler()
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("kaizenlm", "transformers.trainer"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("kaizenlm").setLevel(logging.INFO)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    for name in ("kaizenlm", "transformers.trainer"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def write_metrics(run_dir: Path, metrics: dict) -> Path:
    path = run_dir / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    return path


def steps_per_epoch(cfg: LoraSFTConfig | LoraDPOConfig, hw: dict, n_rows: int) -> int:
    """Optimizer steps in one pass over n_rows: every process takes cfg.batch_size rows per micro-step."""
    return max(1, -(-n_rows // (cfg.batch_size * hw.get("processes", 1) * cfg.grad_accum)))
