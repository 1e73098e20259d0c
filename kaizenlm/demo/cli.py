"""`kaizen demo`: the whole loop on the embedded default, with simulated users (kaizenlm/demo/run.py);
`kaizen base build|show`: the demo's tiny base model (kaizenlm/demo/tiny_base.py)."""

from __future__ import annotations

import json
from pathlib import Path

from kaizenlm.base.model import default_base_dir
from kaizenlm.command import Command
from kaizenlm.errors import UsageError

HELP = "run the whole loop on the embedded default with simulated users, then print a summary"
EXAMPLE = "KAIZEN_HOME=./demo-state kaizen demo --short --no-dashboard"


def add_arguments(p) -> None:
    p.add_argument("--short", action="store_true", help="the same stages, smaller (for CI)")
    p.add_argument("--no-dashboard", action="store_true", help="exit after the summary instead of serving the dashboard")
    p.add_argument("--days", type=float, default=30.0, help="days of simulated traffic (compressed in time)")
    p.add_argument("--conversations", type=int, help="simulated conversations (default 4000, 1500 with --short)")
    p.add_argument("--seed", type=int, default=0, help="seed for the domain and the users")


def run(args, cfg) -> int:
    from kaizenlm.demo import run as demo_run  # torch, transformers: only when the demo runs

    return demo_run.run(args, cfg)


BASE_HELP = "build the embedded tiny base model (tokenizer + LLaMA-shaped model) from the generated corpus"
BASE_EXAMPLE = "kaizen base build --out ~/.kaizen/models/base-embedded --seed 0"


def add_base_arguments(p) -> None:
    p.add_argument("action", choices=["build", "show"], help="build: train and save the embedded base; show: print its build metrics")
    p.add_argument("--out", help="output directory (default: <home>/models/base-embedded)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: retrain.seed)")
    p.add_argument("--steps", type=int, default=None, help="override base.steps (fewer steps: faster, weaker)")
    p.add_argument("--force", action="store_true", help="rebuild even if the output directory holds a model")


def run_base(args, cfg) -> int:
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
    from kaizenlm.demo.tiny_base import build_base

    base_cfg = cfg.base if args.steps is None else dataclasses.replace(
        cfg.base, steps=args.steps, warmup_steps=min(cfg.base.warmup_steps, args.steps))
    seed = cfg.retrain.seed if args.seed is None else args.seed
    print(f"building the embedded base model into {out} (log: {out / 'build.log'})")
    metrics = build_base(out, base_cfg, seed)
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}))
    return 0


DEMO = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
BASE = Command(help=BASE_HELP, example=BASE_EXAMPLE, add_arguments=add_base_arguments, run=run_base)
