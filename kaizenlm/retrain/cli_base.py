"""`kaizen base build`: train the embedded tokenizer + tiny base model (a few minutes on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

from kaizenlm.cli import UsageError

HELP = "build the embedded tiny base model (tokenizer + LLaMA-shaped model) from the generated corpus"
EXAMPLE = "kaizen base build --out ~/.kaizen/models/base-embedded --seed 0"


def default_base_dir(cfg) -> Path:
    """Where the embedded base lives unless base.path names another model."""
    return cfg.home / "models" / "base-embedded"


def resolve_base_path(cfg) -> Path:
    """The base model directory every retrain starts from (base.path, or the embedded build)."""
    return default_base_dir(cfg) if cfg.base.path == "embedded" else Path(cfg.base.path).expanduser()


def add_arguments(p) -> None:
    p.add_argument("action", choices=["build", "show"], help="build: train and save the embedded base; show: print its build metrics")
    p.add_argument("--out", help="output directory (default: <home>/models/base-embedded)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: retrain.seed)")
    p.add_argument("--steps", type=int, default=None, help="override base.steps (fewer steps: faster, weaker)")
    p.add_argument("--force", action="store_true", help="rebuild even if the output directory holds a model")


def run(args, cfg) -> int:
    import dataclasses

    out = Path(args.out).expanduser() if args.out else default_base_dir(cfg)
    if args.action == "show":
        marker = out / "kaizen_base.json"
        if not marker.is_file():
            raise UsageError(f"{out} holds no embedded base; run `kaizen base build`")
        print(marker.read_text(encoding="utf-8"))
        return 0
    if (out / "config.json").exists() and not args.force:
        raise UsageError(f"{out} already holds a model; pass --force to rebuild it")
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be >= 1")
    from kaizenlm.retrain.base_model import build_base

    base_cfg = cfg.base if args.steps is None else dataclasses.replace(
        cfg.base, steps=args.steps, warmup_steps=min(cfg.base.warmup_steps, args.steps))
    seed = cfg.retrain.seed if args.seed is None else args.seed
    print(f"building the embedded base model into {out} (log: {out / 'build.log'})")
    metrics = build_base(out, base_cfg, seed)
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}))
    return 0
