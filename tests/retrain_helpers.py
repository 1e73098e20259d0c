"""Test helpers for the retrain recipes: a tiny embedded base built in a second or two."""

from __future__ import annotations

from pathlib import Path

from tiny_base import TinyBaseConfig

from kaizenlm.config import LoraDPOConfig, LoraSFTConfig, RetrainConfig

TINY_BASE = TinyBaseConfig(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                            max_position=64, steps=4, batch_size=8, warmup_steps=1, rows_per_skill=20)
# fp32 on every CPU: "auto" trains in bf16 where the CPU computes it natively, and the unit tier
# compares runs step by step (tests/test_recipes.py trains in bf16 on purpose).
FAST_RUN = RetrainConfig(seed=0, cpu_threads=2, keep_checkpoints=5, precision="fp32")


def build_tiny_base(out_dir: Path) -> Path:
    from tiny_base import build_base

    build_base(out_dir, TINY_BASE, seed=0)
    return out_dir


def sft_cfg(**kw) -> LoraSFTConfig:
    """A few steps only: epochs small, one eval per epoch, no early stopping."""
    return LoraSFTConfig(**{"epochs": 2.0, "batch_size": 8, "learning_rate": 1e-2, "early_stopping_patience": 0,
                            "max_length": 64, **kw})


def dpo_cfg(**kw) -> LoraDPOConfig:
    return LoraDPOConfig(**{"epochs": 2.0, "batch_size": 8, "learning_rate": 1e-2, "early_stopping_patience": 0,
                            "max_length": 64, **kw})
