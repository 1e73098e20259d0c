"""`kaizen demo`: the whole loop on the embedded default, with simulated users (kaizenlm/demo/run.py)."""

from __future__ import annotations

from kaizenlm.command import Command

HELP = "run the whole loop on the embedded default with simulated users, then print a summary"
EXAMPLE = "KAIZEN_HOME=./demo-state kaizen demo --short --no-dashboard"


def add_arguments(p) -> None:
    p.add_argument("--short", action="store_true", help="the same stages, smaller (for CI)")
    p.add_argument("--no-dashboard", action="store_true", help="exit after the summary instead of serving the dashboard")
    p.add_argument("--days", type=float, default=30.0, help="days of simulated traffic (compressed in time)")
    p.add_argument("--conversations", type=int, help="simulated conversations (default 600, 150 with --short)")
    p.add_argument("--seed", type=int, default=0, help="seed for the domain and the users")


def run(args, cfg) -> int:
    from kaizenlm.demo import run as demo_run  # torch, transformers: only when the demo runs

    return demo_run.run(args, cfg)


DEMO = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
