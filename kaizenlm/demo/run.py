"""`kaizen demo`: the whole loop on the embedded default, with simulated users.

Stages run in order on a shared DemoContext; each prints what it did and adds its figures
to the final summary. The stack (`kaizen up`) serves the embedded SmolLM2-135M-Instruct from
the start; stage 1 has simulated users ask it questions through the gateway and react to its
real answers (docs/DEMO.md).
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
from kaizenlm.demo.inputs import write_demo_suite
from kaizenlm.demo.stages import (
    stage_ab,
    stage_bad_candidate,
    stage_knowledge,
    stage_retrain,
    stage_review,
    stage_rollback,
    stage_side_by_side,
)
from kaizenlm.demo.stages_data import stage_dataset, wait_for_general_answers
from kaizenlm.demo.traffic import run_traffic
from kaizenlm.demo.users import Behaviour

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
    side_by_side: list | None = None  # (question, base answer, candidate answer) rows
    console: Console = field(default_factory=lambda: console)

    def admin(self, method: str, path: str, **kw) -> dict:
        r = httpx.request(method, self.cfg.controller_url + path, timeout=kw.pop("timeout", 120),
                          headers={"Authorization": f"Bearer {self.cfg.auth.admin_key}"}, **kw)
        r.raise_for_status()
        return r.json()


def stage_traffic(ctx: DemoContext) -> None:
    """Simulated users ask the real model through the gateway and react to its real answers."""
    # The controller's first start has the base answer the general prompts in a child process;
    # on 2 cores that and the gateway's answers slow each other down several times over
    # (oversubscribed threads), so the users start once it is done.
    wait_for_general_answers(ctx)
    cfg = ctx.cfg
    result = run_traffic(ctx.domain, cfg.gateway_url, cfg.auth.ingest_key, cfg.auth.widget_key, ctx.conversations,
                         ctx.seed, DEMO_BEHAVIOUR)
    landed = ctx.admin("POST", "/admin/v1/drain")["counts"]
    stats = ctx.admin("GET", "/admin/v1/stats")
    ctx.summary["conversations (chats incl. regenerates)"] = f"{result['conversations']} ({result['chats']})"
    ctx.summary["base answered right"] = f"{result['right_first_time']} of {result['conversations']}"
    ctx.summary["feedback events (via widget key + token)"] = f"{result['feedback_events']} ({result['via_widget']})"
    ctx.summary["landed in DuckDB"] = ", ".join(f"{k} {v}" for k, v in landed.items())
    table = Table(title="Stage 1: traffic landed in DuckDB")
    for col in ("table", "rows"):
        table.add_column(col)
    for name, n in landed.items():
        table.add_row(name, str(n))
    for name, n in stats.get("feedback_mix", {}).items():
        table.add_row(f"  {name}", str(n))
    console.print(table)
    for question, answer in result["examples"]:
        console.print(f"  [dim]{question}[/dim] -> {answer}")


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

    def start(self, timeout_s: float = 900.0) -> None:
        """Start `kaizen up` and wait until it says it is up: broker, controller and gateway
        answer and the base model serves as champion (the first start converts it)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "KAIZEN_HOME": str(self.cfg.home), "KAIZEN_BROKER_PORT": str(self.cfg.kafka.broker_port),
               "KAIZEN_GATEWAY_PORT": str(self.cfg.gateway.port),
               "KAIZEN_CONTROLLER_PORT": str(self.cfg.controller.port), "KAIZEN_REGISTER_BASE": "true"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        with tqdm(desc="starting the stack (first start: converting the base model)", unit="s", mininterval=10) as bar:
            while "kaizenlm up:" not in self._log_since(offset):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"`kaizen up` did not start (see {self.log_path}):\n"
                                       f"{self._log_since(offset)[-2000:]}")
                time.sleep(1.0)
                bar.update(1)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


STAGES = [stage_traffic, stage_dataset, stage_retrain, stage_ab, stage_side_by_side, stage_knowledge,
          stage_bad_candidate, stage_rollback, stage_review]

# The base knows none of the domain's facts: most answers are wrong, and half of the users
# who get a wrong answer correct it (the SFT rows); the rest as in demo/users.py.
DEMO_BEHAVIOUR = Behaviour(correction_if_wrong=0.5)


# The demo runs the defaults for replay (8% of the SFT rows: the base's own answers to
# the shipped general prompts) and the gates (retention >= 98% of the champion's, refusal at
# most 2 points lower); docs/DEMO.md.
DEMO_TOML = """# Written by `kaizen demo` for the embedded SmolLM2-135M-Instruct; see docs/DEMO.md.
[curation]
window_days = 0

[gateway]
# Pages that may embed the feedback widget: examples/widget.html served by
# `python -m http.server 8000 -d examples` (production: your own site's origin only).
cors_origins = ["http://127.0.0.1:8000", "http://localhost:8000"]
# Every simulated user posts from this one machine: no per-address limit (the per-user one stays).
rate_limit_per_address = 0.0

[eval]
# The demo's evaluation suite: its domain exam, the shipped multiple-choice general questions
# and its refusal exam (kaizenlm/demo/inputs.py).
suite_path = "{suite_path}"
max_new_tokens = 24

[ab]
# A few hundred simulated users cannot show the latency guardrail non-inferior within 10%
# on a shared CPU; the demo promotes unless a guardrail is breached (a breach still rolls back).
promote_requires_non_inferiority = false
# The demo's candidate wins by a wide margin (the base knows none of the facts): 40 users an arm
# are enough for the always-valid interval to exclude zero, and an unclear run collects more.
min_samples_per_arm = 40

[serving]
max_new_tokens = 48

[dpo]
# 12 steps at most: the full demo mines ~170 pairs (22 steps), which moved the general skills to
# retention 0.982-0.984 against the gate's 0.98; --short's ~75 pairs are 10 steps either way.
max_pairs = 96
"""


def _demo_config(cfg, path_given: bool, seed: int, domain: Domain, short: bool):
    """Write the demo's inputs and its kaizen.toml into $KAIZEN_HOME (if none) so every process reads it."""
    from kaizenlm import config as config_mod

    # --short asks each fact once (48 exam rows, 24 refusal rows); the full demo all three phrasings.
    suite_path = write_demo_suite(cfg.home / "demo", seed, domain, per_fact=1 if short else None)
    target = cfg.home / "kaizen.toml"
    if path_given or target.exists() or Path("kaizen.toml").exists():
        return cfg
    cfg.home.mkdir(parents=True, exist_ok=True)
    target.write_text(DEMO_TOML.format(suite_path=suite_path), encoding="utf-8")
    return config_mod.load(target)


def run(args, cfg) -> int:
    domain = build_domain(args.seed)
    cfg = _demo_config(cfg, bool(args.config), args.seed, domain, args.short)
    conversations = args.conversations or (150 if args.short else 600)
    ctx = DemoContext(cfg, domain, args.short, args.seed, args.days, conversations)
    stack = UpProcess(cfg, args.config, with_dashboard=not args.no_dashboard)
    console.print(f"[bold]kaizen demo[/bold]: state in {cfg.home}; starting broker, controller and gateway")
    started = time.monotonic()
    stack.start()
    seconds = {"start": time.monotonic() - started}
    try:
        for stage in STAGES:
            console.rule(stage.__doc__.split("\n")[0] if stage.__doc__ else stage.__name__)
            name, stage_started = stage.__name__.removeprefix("stage_"), time.monotonic()
            stage(ctx)
            seconds[name] = time.monotonic() - stage_started
            console.print(f"[dim]({name} took {seconds[name]:.0f} s)[/dim]")
        ctx.summary["seconds per stage"] = ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        ctx.summary["seconds in all"] = f"{time.monotonic() - started:.0f}"
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

