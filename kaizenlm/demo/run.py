"""`kaizen demo`: the whole loop on the embedded default, with simulated users.

Stages run in order on a shared DemoContext; each prints what it did and adds its
figures to the final summary. Stage 1 (traffic) starts the stack and sends 30 days of
compressed-time traffic through the SDK and the widget's endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from kaizenlm.demo.domain import Domain, build_domain
from kaizenlm.demo.inputs import write_demo_inputs
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

console = Console()


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
    # The widget's half goes out as the widget sends it: the public widget key, the turn's
    # feedback token (from the SDK's /v1/turns answers) and no timestamp (the gateway stamps it).
    widget = httpx.Client(base_url=cfg.gateway_url, headers={"Authorization": f"Bearer {cfg.auth.widget_key}"})
    for_widget = []
    with KaizenClient(cfg.gateway_url, cfg.auth.ingest_key) as sdk:
        for i, (kind, payload) in enumerate(tqdm(events, desc="simulated traffic", unit="event")):
            if kind == "turn":
                sdk.log_turn(**payload)
            elif kind == "signal":
                sdk.signal(**payload)
            elif i % 2:
                sdk.feedback(**payload)
            else:
                for_widget.append(payload)
        sdk.flush()
        for payload in for_widget:  # every turn's batch is in: its token is at hand
            body = {k: v for k, v in payload.items() if k != "ts"}
            body["feedback_token"] = sdk.feedback_token(payload["turn_id"])
            r = widget.post("/v1/feedback", json=body)
            while r.status_code == 429:  # one simulated user over gateway.rate_burst_per_user: wait, as a page would
                time.sleep(float(r.headers.get("retry-after", "1")))
                r = widget.post("/v1/feedback", json=body)
            r.raise_for_status()
        via_widget = len(for_widget)
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


class UpProcess:
    """`kaizen up` as a child process: the demo drives the stack through the same commands and
    HTTP routes a user would. Its log is $KAIZEN_HOME/logs/up.out; stop() is the ordered stop
    `kaizen up` does on Ctrl-C (gateways flush, the sink drains, then controller and broker)."""

    def __init__(self, cfg, config_path: str | None, with_dashboard: bool):
        self.cfg = cfg
        self.argv = [sys.executable, "-m", "kaizenlm.cli", *(["--config", config_path] if config_path else []), "up",
                     *(["--dashboard"] if with_dashboard else [])]
        self.log_path = cfg.home / "logs" / "up.out"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KAIZEN_HOME": str(self.cfg.home), "KAIZEN_BROKER_PORT": str(self.cfg.kafka.broker_port),
               "KAIZEN_GATEWAY_PORT": str(self.cfg.gateway.port),
               "KAIZEN_CONTROLLER_PORT": str(self.cfg.controller.port)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        for url in (self.cfg.controller_url, self.cfg.gateway_url):
            while not _answers(url + "/healthz"):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
                    raise RuntimeError(f"`kaizen up` did not start (see {self.log_path}):\n{tail}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


STAGES = [stage_traffic, stage_dataset, stage_knowledge, stage_retrain, stage_ab, stage_bad_candidate, stage_rollback,
          stage_review]


# The demo runs the defaults for replay (8%) and the gates (retention >= 98% of the
# champion's, refusal at most 2 points lower): the embedded recipe's KL anchor keeps the tiny
# model's general skills while it learns the domain (docs/TRAINING.md).
DEMO_TOML = """# Written by `kaizen demo` for the embedded tiny model; see docs/TRAINING.md.
[curation]
window_days = 0
# The demo's general-skills rows: replay against forgetting and the KL anchor's prompts.
replay_path = "{replay_path}"

[gateway]
# Pages that may embed the feedback widget: examples/widget.html served by
# `python -m http.server 8000 -d examples` (production: your own site's origin only).
cors_origins = ["http://127.0.0.1:8000", "http://localhost:8000"]
# Every simulated user posts from this one machine: no per-address limit (the per-user one stays).
rate_limit_per_address = 0.0

[eval]
# The demo's evaluation suite: its domain exam, held-out general skills and refusal exam.
suite_path = "{suite_path}"

[ab]
# A few hundred simulated users cannot show the latency guardrail non-inferior within 10%
# on a shared CPU; the demo promotes unless a guardrail is breached (a breach still rolls back).
promote_requires_non_inferiority = false

[knowledge]
# The embedded model reads at most 128 tokens and never learned to answer from retrieved
# chunks: the demo builds the index and measures coverage and recall@5, but chats without it.
chat_retrieval = false
"""


def _demo_config(cfg, path_given: bool, seed: int, domain: Domain):
    """Write the demo's inputs and its kaizen.toml into $KAIZEN_HOME (if none) so every process reads it."""
    from kaizenlm import config as config_mod

    suite_path, replay_path = write_demo_inputs(cfg.home / "demo", seed, domain)
    target = cfg.home / "kaizen.toml"
    if path_given or target.exists() or Path("kaizen.toml").exists():
        return cfg
    cfg.home.mkdir(parents=True, exist_ok=True)
    target.write_text(DEMO_TOML.format(suite_path=suite_path, replay_path=replay_path), encoding="utf-8")
    return config_mod.load(target)


def run(args, cfg) -> int:
    domain = build_domain(args.seed)
    cfg = _demo_config(cfg, bool(args.config), args.seed, domain)
    conversations = args.conversations or (1500 if args.short else 4000)
    ctx = DemoContext(cfg, domain, args.short, args.seed, args.days, conversations)
    stack = UpProcess(cfg, args.config, with_dashboard=not args.no_dashboard)
    console.print(f"[bold]kaizen demo[/bold]: state in {cfg.home}; starting broker, controller and gateway")
    stack.start()
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
        stack.stop()
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

