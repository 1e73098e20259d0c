"""`kaizen demo`: the whole loop on the embedded default, with simulated users.

Stages run in order on a shared DemoContext; each prints what it did and adds its
figures to the final summary. Stage 1 (traffic) starts the stack and sends 30 days of
compressed-time traffic through the SDK and the widget's endpoint.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from kaizenlm.commands.up import Supervisor
from kaizenlm.demo.domain import Domain, build_domain
from kaizenlm.demo.stages import (
    stage_ab,
    stage_bad_candidate,
    stage_knowledge,
    stage_retrain,
    stage_review,
    stage_rollback,
)
from kaizenlm.demo.stages_data import stage_dataset
from kaizenlm.demo.users import baseline_answer_fn, simulate
from kaizenlm.feedback.client import KaizenClient

HELP = "run the whole loop on the embedded default with simulated users, then print a summary"
EXAMPLE = "KAIZEN_HOME=./demo-state kaizen demo --short --no-dashboard"

console = Console()


def add_arguments(p) -> None:
    p.add_argument("--short", action="store_true", help="the same stages, smaller (for CI)")
    p.add_argument("--no-dashboard", action="store_true", help="exit after the summary instead of serving the dashboard")
    p.add_argument("--days", type=float, default=30.0, help="days of simulated traffic (compressed in time)")
    p.add_argument("--conversations", type=int, help="simulated conversations (default 4000, 1500 with --short)")
    p.add_argument("--seed", type=int, default=0, help="seed for the domain and the users")


@dataclass
class DemoContext:
    cfg: object
    domain: Domain
    short: bool
    seed: int
    days: float
    conversations: int
    summary: dict = field(default_factory=dict)
    dataset: dict | None = None  # the manifest stage_dataset built
    retrain: dict | None = None
    ab: dict | None = None
    console: Console = field(default_factory=lambda: console)

    def admin(self, method: str, path: str, **kw) -> dict:
        r = httpx.request(method, self.cfg.controller_url + path, timeout=kw.pop("timeout", 120),
                          headers={"Authorization": f"Bearer {self.cfg.auth.admin_key}"}, **kw)
        r.raise_for_status()
        return r.json()


def stage_traffic(ctx: DemoContext) -> None:
    """Simulated users -> SDK (turns, signals, half the feedback) and widget endpoint (other half)."""
    cfg = ctx.cfg
    start = time.time() - ctx.days * 86400
    events = list(simulate(ctx.domain, baseline_answer_fn(ctx.domain), ctx.conversations, start, ctx.days, ctx.seed))
    widget = httpx.Client(base_url=cfg.gateway_url, headers={"Authorization": f"Bearer {cfg.auth.ingest_key}"})
    via_widget = 0
    with KaizenClient(cfg.gateway_url, cfg.auth.ingest_key) as sdk:
        for i, (kind, payload) in enumerate(tqdm(events, desc="simulated traffic", unit="event")):
            if kind == "turn":
                sdk.log_turn(**payload)
            elif kind == "signal":
                sdk.signal(**payload)
            elif i % 2:
                sdk.feedback(**payload)
            else:  # exactly what the widget posts
                widget.post("/v1/feedback", json=payload).raise_for_status()
                via_widget += 1
        sdk.flush()
        errors = sdk.errors
    widget.close()
    if errors:
        raise RuntimeError(f"the gateway rejected SDK events: {errors[:3]}")
    landed = ctx.admin("POST", "/admin/v1/drain")["counts"]
    stats = ctx.admin("GET", "/admin/v1/stats")
    ctx.summary["events sent"] = len(events)
    ctx.summary["feedback via widget endpoint"] = via_widget
    ctx.summary["landed in DuckDB"] = ", ".join(f"{k} {v}" for k, v in landed.items())
    table = Table(title="Stage 1: traffic landed in DuckDB")
    for col in ("table", "rows"):
        table.add_column(col)
    for name, n in landed.items():
        table.add_row(name, str(n))
    for name, n in stats.get("feedback_mix", {}).items():
        table.add_row(f"  {name}", str(n))
    console.print(table)


STAGES = [stage_traffic, stage_dataset, stage_knowledge, stage_retrain, stage_ab, stage_bad_candidate, stage_rollback,
          stage_review]


# The demo runs the defaults for replay (8%) and the gates (retention >= 98% of the
# champion's, refusal at most 2 points lower): the embedded recipe's KL anchor keeps the tiny
# model's general skills while it learns the domain (docs/TRAINING.md).
DEMO_TOML = """# Written by `kaizen demo` for the embedded tiny model; see docs/TRAINING.md.
[curation]
window_days = 0

[ab]
# A few hundred simulated users cannot show the latency guardrail non-inferior within 10%
# on a shared CPU; the demo promotes unless a guardrail is breached (a breach still rolls back).
promote_requires_non_inferiority = false

[knowledge]
# The embedded model reads at most 128 tokens and never learned to answer from retrieved
# chunks: the demo builds the index and measures coverage and recall@5, but chats without it.
chat_retrieval = false
"""


def _demo_config(cfg, path_given: bool):
    """Write the demo's kaizen.toml into $KAIZEN_HOME (if none) so every process reads it."""
    from kaizenlm import config as config_mod

    target = cfg.home / "kaizen.toml"
    if path_given or target.exists() or Path("kaizen.toml").exists():
        return cfg
    cfg.home.mkdir(parents=True, exist_ok=True)
    target.write_text(DEMO_TOML, encoding="utf-8")
    return config_mod.load(target)


def run(args, cfg) -> int:
    cfg = _demo_config(cfg, bool(args.config))
    domain = build_domain(args.seed)
    conversations = args.conversations or (1500 if args.short else 4000)
    ctx = DemoContext(cfg, domain, args.short, args.seed, args.days, conversations)
    sup = Supervisor(cfg, with_dashboard=not args.no_dashboard)
    console.print(f"[bold]kaizen demo[/bold]: state in {cfg.home}; starting broker, controller and gateway")
    sup.start()
    try:
        for stage in STAGES:
            console.rule(stage.__doc__.split("\n")[0] if stage.__doc__ else stage.__name__)
            stage(ctx)
        ctx.summary["state"] = str(cfg.home)
        if not args.no_dashboard:
            ctx.summary["dashboard"] = f"http://{cfg.dashboard.host}:{cfg.dashboard.port}"
        _print_summary(ctx)
        if not args.no_dashboard:
            _wait_for_ctrl_c()
    finally:
        sup.stop()
    return 0


def _print_summary(ctx: DemoContext) -> None:
    table = Table(title="kaizen demo: summary")
    table.add_column("what")
    table.add_column("value")
    for k, v in ctx.summary.items():
        table.add_row(k, str(v))
    console.print(table)


def _wait_for_ctrl_c() -> None:
    console.print("Press Ctrl-C to stop.")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass

