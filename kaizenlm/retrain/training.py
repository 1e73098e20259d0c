"""What the SFT and DPO recipes share: input rows, the run directory, hardware choices,
tiny-model overrides, checkpoint resume, TensorBoard and the metrics file.

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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from kaizenlm.config import RetrainConfig  # noqa: E402

log = logging.getLogger("kaizenlm.retrain")

EMBEDDED_MARKER = "kaizen_base.json"  # written by base_model.build_base next to the weights


def is_embedded_base(path: str | Path) -> bool:
    """True when the base directory holds the tiny model kaizenlm built itself."""
    return (Path(path) / EMBEDDED_MARKER).is_file()


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


def hardware(run: RetrainConfig) -> dict:
    """Device, precision and gradient checkpointing for this machine and config."""
    cuda = torch.cuda.is_available()
    precision = run.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    checkpointing = run.gradient_checkpointing == "on" or (run.gradient_checkpointing == "auto" and cuda)
    if not cuda:
        torch.set_num_threads(run.cpu_threads)
    return {"device": "cuda" if cuda else "cpu", "bf16": precision == "bf16", "fp16": precision == "fp16",
            "gradient_checkpointing": checkpointing}


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete Trainer checkpoint, to resume from; None for a fresh run."""
    from transformers.trainer_utils import get_last_checkpoint

    if not checkpoint_dir.is_dir():
        return None
    return get_last_checkpoint(str(checkpoint_dir))


def tensorboard_callback(log_dir: Path):
    """TensorBoard logging into the run directory (Trainer's own default is a dated folder)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def attach_log_file(run_dir: Path) -> logging.Handler:
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


def steps_per_epoch(n_rows: int, batch_size: int, grad_accum: int) -> int:
    return max(1, -(-n_rows // (batch_size * grad_accum)))
