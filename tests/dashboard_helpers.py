"""Seeding for the dashboard tests: a real stack (module-scoped), traffic through the SDK,
registry versions through RegistryClient, an A/B experiment with two analyses, all through
the running controller. `Seeded` holds what the pages must show, computed from the seed."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import Stack, free_port

from kaizenlm.config import RewardsConfig
from kaizenlm.feedback.client import KaizenClient
from kaizenlm.feedback.rewards import turn_reward
from kaizenlm.registry.client import RegistryClient

EXPERIMENT = "exp-dash"
CORRECTION = "The refund window is 30 days."
BAD_COMMENT = "That is not what the website says."
LATENCY_MS = 120.0
LOSS_GAP_WARNING = "loss gap: validation loss 1.6 exceeds training loss 1.4 by 0.2 at step 3"
COVERAGE = {"share_covered": 0.75, "n": 8, "n_covered": 6, "threshold": 0.3,
            "uncovered_clusters": [{"size": 2, "examples": ["Do you ship to Mars?", "Can I pay in gold?"],
                                    "nearest_doc_id": "shipping", "nearest_score": 0.21}]}


@contextlib.contextmanager
def module_stack(tmp_path: Path):
    """A started Stack in its own KAIZEN_HOME, with this process's environment pointing at it
    (KAIZEN_CONTROLLER_URL / KAIZEN_ADMIN_KEY: what AppTest's in-process dashboard reads)."""
    env = {"KAIZEN_HOME": str(tmp_path / "home"), "KAIZEN_BROKER_PORT": str(free_port()),
           "KAIZEN_GATEWAY_PORT": str(free_port()), "KAIZEN_CONTROLLER_PORT": str(free_port()),
           "KAIZEN_KAFKA_BOOTSTRAP": "embedded", "HF_HUB_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("KAIZEN_CONFIG", raising=False)
        mp.chdir(tmp_path)
        stack = Stack(env)
        mp.setenv("KAIZEN_CONTROLLER_URL", stack.cfg.controller_url)
        mp.setenv("KAIZEN_ADMIN_KEY", stack.cfg.auth.admin_key)
        try:
            yield stack.start()
        finally:
            stack.stop()


@dataclass
class Turn:
    turn_id: str
    conversation_id: str
    user_id: str
    prompt: str
    answer: str
    ts: float
    model_version: str = "base-0001"
    variant: str | None = None
    experiment_id: str | None = None
    feedback: list[dict] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)

    def reward(self, weights: RewardsConfig) -> float | None:
        """The streaming twin's reward (None: no evidence), for checking what the pages show."""
        fb = [{**f, "ts": self.ts + 10 + i, "event_id": f"e{i}"} for i, f in enumerate(self.feedback)]
        sigs = [{"kind": k, "ts": self.ts + 20 + i, "event_id": f"s{i}"} for i, k in enumerate(self.signals)]
        return turn_reward(fb, sigs, weights, latency_ms=LATENCY_MS)


@dataclass
class Seeded:
    turns: list[Turn]
    n_feedback: int
    n_signals: int
    weights: RewardsConfig

    def thumbs(self, value: int) -> int:
        return sum(1 for t in self.turns if any(f.get("thumbs") == value for f in t.feedback))

    def low_reward(self, max_reward: float = 0.0) -> list[Turn]:
        """Turns with feedback and reward <= max_reward, worst first (as the explorer lists them)."""
        rewarded = [t for t in self.turns if t.reward(self.weights) is not None]
        hits = [t for t in rewarded if t.reward(self.weights) <= max_reward + 1e-9]
        return sorted(hits, key=lambda t: (t.reward(self.weights), -t.ts))

    def mean_reward(self) -> float:
        rewards = [r for r in (t.reward(self.weights) for t in self.turns) if r is not None]
        return sum(rewards) / len(rewards)


def history_turns(now: float) -> list[Turn]:
    """12 single-turn conversations over the last 6 days, one follow-up turn, a four-way feedback pattern."""
    turns = []
    for i in range(12):
        t = Turn(f"turn-{i:02d}", f"conv-{i:02d}", f"user-{i % 5}", f"How long is the refund window? ({i})",
                 "It is 30 days." if i % 2 == 0 else "It is 5 days.", now - 3600 - i * 43200)
        if i % 4 == 0:
            t.feedback.append({"thumbs": 1, "rating": 5})
            t.signals.append("copy")
        elif i % 4 == 1:
            t.feedback.append({"thumbs": -1, "comment": BAD_COMMENT})
        elif i % 4 == 3:
            t.feedback.append({"rating": 2, **({"correction": CORRECTION} if i == 3 else {})})
            t.signals.append("regenerate")
        turns.append(t)
    follow = Turn("turn-05b", "conv-05", turns[5].user_id, "Are you sure?", "Yes, 30 days.", turns[5].ts + 60)
    follow.feedback.append({"thumbs": 1})
    turns.append(follow)
    return turns


def experiment_turns(now: float) -> list[Turn]:
    """8 users in the experiment: the challenger's answers get thumbs up, the champion's thumbs down."""
    turns = []
    for i in range(8):
        arm = "challenger" if i % 2 else "champion"
        t = Turn(f"exp-turn-{i}", f"exp-conv-{i}", f"exp-user-{i}", "What does the premium plan cost?",
                 "It costs 10 EUR a month.", now + i, model_version="adapter-0001" if i % 2 else "base-0001",
                 variant=arm, experiment_id=EXPERIMENT)
        t.feedback.append({"thumbs": 1 if i % 2 else -1})
        turns.append(t)
    return turns


def send(stack: Stack, turns: list[Turn]) -> tuple[int, int]:
    """Turns, feedback and turn-level signals through the SDK; returns (feedback, signals) sent."""
    n_fb = n_sig = 0
    with KaizenClient(stack.cfg.gateway_url, stack.cfg.auth.ingest_key) as sdk:
        for t in turns:
            extra = {k: v for k, v in (("variant", t.variant), ("experiment_id", t.experiment_id)) if v}
            sdk.log_turn(turn_id=t.turn_id, conversation_id=t.conversation_id, user_id=t.user_id,
                         messages=[{"role": "user", "content": t.prompt}], response=t.answer,
                         model_version=t.model_version, latency_ms=LATENCY_MS, ts=t.ts, **extra)
            for i, f in enumerate(t.feedback):
                sdk.feedback(t.turn_id, user_id=t.user_id, ts=t.ts + 10 + i, **f)
                n_fb += 1
            for i, kind in enumerate(t.signals):
                sdk.signal(kind, turn_id=t.turn_id, user_id=t.user_id, ts=t.ts + 20 + i)
                n_sig += 1
        assert sdk.flush(30) and not sdk.errors, sdk.errors
    return n_fb, n_sig


def register_versions(stack: Stack, root: Path) -> None:
    """base-0001 <- adapter-0001 <- adapter-0002, knowledge-0001 (with coverage.json), knowledge-0002 (without)."""
    def artifact(name: str, files: dict[str, str]) -> Path:
        d = root / name
        d.mkdir(parents=True)
        for fname, text in files.items():
            (d / fname).write_text(text)
        return d

    reg = RegistryClient(stack.cfg)
    assert reg.via == "controller"
    reg.register_version("base", artifact("base", {"config.json": "{}"}),
                         metrics={"domain_score": 0.41, "general_score": 0.80, "refusal_rate": 0.90})
    # The shapes kaizenlm.retrain.pipeline records: metrics (evaluation + training summary + gate)
    # and, in the artifact, each recipe's metrics.json with its curves under runs/<recipe>/.
    sft_run = {"train_loss_curve": [[1, 2.5], [2, 1.9], [3, 1.4]], "eval_loss_curve": [[2, 2.0], [3, 1.6]],
               "warnings": [LOSS_GAP_WARNING]}
    dpo_run = {"train_loss_curve": [[1, 0.69], [2, 0.55]], "eval_loss_curve": [[2, 0.6]], "warnings": []}
    a1 = artifact("a1", {"adapter_config.json": "{}"})
    for name, run in (("sft", sft_run), ("dpo", dpo_run)):
        (a1 / "runs" / name).mkdir(parents=True)
        (a1 / "runs" / name / "metrics.json").write_text(json.dumps(run))
    reg.register_version("adapter", a1, parent_id="base-0001", metrics={
        "domain_score": 0.62, "general_score": 0.79, "refusal_rate": 0.92,
        "training": {"sft": {"train_loss": 1.4, "eval_loss": 1.6, "warnings": [LOSS_GAP_WARNING]}, "dpo": None},
        "gate": {"passed": True, "reasons": ["pass: domain score 0.620 vs champion 0.410",
                                             "pass: general-skill retention 0.988", "pass: refusal rate 0.920"]}})
    reg.register_version("adapter", artifact("a2", {"adapter_config.json": "{\"r\": 8}"}), parent_id="adapter-0001",
                         metrics={"domain_score": 0.58, "general_score": 0.70, "refusal_rate": 0.91,
                                  "gate": {"passed": False, "reasons": ["pass: domain score 0.580 vs champion 0.410",
                                                                        "fail: general-skill retention 0.875"]}})
    reg.register_version("knowledge", artifact("k1", {"coverage.json": json.dumps(COVERAGE)}),
                         metrics={"chunks": 12, "documents": 3, "coverage": 0.75, "coverage_questions": 8,
                                  "index_type": "flat"})
    reg.register_version("knowledge", artifact("k2", {"index.txt": "no coverage report in this one"}),
                         parent_id="knowledge-0001", metrics={"chunks": 14, "documents": 4, "index_type": "flat"})
    reg.set_alias("champion", "base-0001", reason="first champion")
    reg.set_alias("knowledge", "knowledge-0001", reason="first index")


def admin(stack: Stack, method: str, path: str, **kw) -> dict:
    r = httpx.request(method, stack.cfg.controller_url + path, headers=stack.admin_headers, timeout=60, **kw)
    r.raise_for_status()
    return r.json()


def seed(stack: Stack, root: Path) -> Seeded:
    now = time.time()
    register_versions(stack, root)
    admin(stack, "POST", "/admin/v1/ab/experiments", json={"challenger": "adapter-0001", "experiment_id": EXPERIMENT})
    turns = history_turns(now) + experiment_turns(time.time() + 1)  # after the start: the arms count them
    n_fb, n_sig = send(stack, turns)
    counts = stack.drain()
    assert (counts["turns"], counts["feedback"], counts["signals"]) == (len(turns), n_fb, n_sig), counts
    for _ in range(2):  # two looks: the decision log and the charts have two points
        admin(stack, "POST", "/admin/v1/ab/analyse", json={"experiment_id": EXPERIMENT})
    return Seeded(turns, n_fb, n_sig, stack.cfg.rewards)
