"""Builders for the feedback/curation tests: an event log written straight into a DuckDB file
through the real schema validation (make_envelope) and the real store (insert_events)."""

from __future__ import annotations

import itertools
from pathlib import Path

from kaizenlm.config import Config, CurationConfig, PathsConfig
from kaizenlm.ingest import store
from kaizenlm.ingest.events import make_envelope

T0 = 1_700_000_000.0
_IDS = itertools.count(1)  # one sequence for all logs: ids never collide across logs


class EventLog:
    """Turns, feedback and signals with increasing timestamps (1 s apart unless given)."""

    def __init__(self, t0: float = T0) -> None:
        self.envelopes: list[dict] = []
        self.t = t0

    def _ts(self, ts: float | None) -> float:
        if ts is None:
            self.t += 1.0
            return self.t
        return ts

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(_IDS):07d}"

    def turn(self, prompt: str, response: str, *, turn_id: str | None = None, conversation_id: str | None = None,
             user_id: str = "u1", ts: float | None = None, history: list[dict] | None = None,
             system: str | None = "You are a helpful support assistant.", model_version: str = "m1",
             topic: str | None = None, experiment_id: str | None = None, variant: str | None = None,
             latency_ms: float | None = None) -> str:
        turn_id = turn_id or self._id("t")
        messages = ([{"role": "system", "content": system}] if system else []) + list(history or [])
        messages.append({"role": "user", "content": prompt})
        self.envelopes.append(make_envelope("turn", {
            "turn_id": turn_id, "conversation_id": conversation_id or f"c-{turn_id}", "user_id": user_id,
            "model_version": model_version, "messages": messages, "response": response, "topic": topic,
            "experiment_id": experiment_id, "variant": variant, "latency_ms": latency_ms,
        }, event_id=self._id("e"), ts=self._ts(ts)))
        return turn_id

    def feedback(self, turn_id: str, *, ts: float | None = None, event_id: str | None = None, **fields) -> None:
        self.envelopes.append(make_envelope("feedback", {"turn_id": turn_id, **fields},
                                            event_id=event_id or self._id("e"), ts=self._ts(ts)))

    def signal(self, kind: str, *, turn_id: str | None = None, conversation_id: str | None = None,
               ts: float | None = None, user_id: str | None = None) -> None:
        payload = {"kind": kind, "user_id": user_id}
        if turn_id:
            payload["turn_id"] = turn_id
        if conversation_id:
            payload["conversation_id"] = conversation_id
        self.envelopes.append(make_envelope("signal", payload, event_id=self._id("e"), ts=self._ts(ts)))

    def write(self, con) -> dict[str, int]:
        con.execute("BEGIN")
        inserted = store.insert_events(con, self.envelopes)
        con.execute("COMMIT")
        self.envelopes = []
        return inserted


def make_config(home: Path, **curation) -> Config:
    """A config in `home` whose curation replays the demo's general rows (unless replay_path is given)."""
    if "replay_path" not in curation:
        curation["replay_path"] = str(demo_replay_file(Path(home).parent / "replay.jsonl"))
    return Config(paths=PathsConfig(home=str(home)), curation=CurationConfig(**curation))


def demo_replay_file(path: Path) -> Path:
    """The demo's general-skills training rows as a replay file (what `kaizen demo` configures)."""
    from kaizenlm.demo.general import general_skills, write_general_jsonl

    return write_general_jsonl(path, general_skills(0)[0])


def open_store(cfg: Config):
    return store.connect(cfg.duckdb_path)


def demo_envelopes(n_conversations: int = 300, seed: int = 0, days: float = 10.0, t0: float = T0) -> list[dict]:
    """The simulated users of `kaizen demo` (kaizenlm/demo/users.py), as envelopes: real demo
    traffic (topics, regenerates, corrections, PII in comments) without a running stack."""
    from kaizenlm.demo.domain import build_domain
    from kaizenlm.demo.users import baseline_answer_fn, simulate

    domain = build_domain(seed)
    out = []
    for i, (kind, payload) in enumerate(simulate(domain, baseline_answer_fn(domain), n_conversations, t0, days, seed)):
        payload = dict(payload)
        ts = payload.pop("ts")
        out.append(make_envelope(kind, payload, event_id=f"demo-{seed}-{i:07d}", ts=ts))
    return out
