"""Per-turn reward from explicit and implicit feedback, with a confidence.

The reward of a turn is ``clip(sum(weight * evidence), -1, 1)`` over:

- explicit: the latest thumbs (+1/-1), the latest 1-5 rating scaled to -1..1 ((r - 3) / 2),
  and whether the user sent a correction (the answer was wrong);
- implicit: how often each signal kind (regenerate, copy, edit, abandon, completed,
  follow_up) was seen for the turn, each count capped at ``signal_cap``, and latency:
  0 up to ``latency_target_ms``, rising linearly to 1 at twice that.

A turn with no evidence (no thumbs, rating, correction or signal) has **no** reward: NaN in
frames, None from `turn_reward`. It is not 0, because 0 means "users reacted, and the
reactions cancel out". Latency is not evidence of what the user thought: it moves the reward
of a turn that has evidence, but never gives a silent turn a reward. A comment alone carries
no score (its sentiment is unknown), so it does not count as evidence either.

The confidence of a reward is ``1 - prod(1 - c)`` over its pieces of evidence: each explicit
piece (thumbs, rating, correction) counts ``explicit_confidence``, each implicit signal kind
seen counts ``implicit_confidence`` (repeats of a kind add nothing). 0 without evidence.

"Latest" means the greatest (ts, event_id), so a user who changes a thumbs-down to a
thumbs-up counts once, as up, and ties break the same way everywhere. A signal with only a
conversation_id counts for the conversation's latest turn at or before the signal.

Weights live in the ``[rewards]`` section of kaizen.toml. The same definition serves
curation (which answers become training data) and the A/B primary metric: features are
built in SQL for bulk work (`reward_frame`) or in Python for one turn (`turn_features`),
and both go through the one `combine` function. `calibration` compares the implicit-only
reward with explicit ratings where a turn has both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import numpy as np
import pandas as pd

from kaizenlm.config import RewardsConfig
from kaizenlm.ingest.events import SIGNAL_KINDS

COUNT_COLUMNS = tuple(f"n_{k}" for k in SIGNAL_KINDS)
EXPLICIT_FEATURES = ("thumbs", "rating", "has_correction")
FEATURES = (*EXPLICIT_FEATURES, *COUNT_COLUMNS, "latency_ms")


def as_datetime(value: datetime | float | str | None) -> datetime | None:
    """A timezone-aware UTC datetime from a datetime, epoch seconds or an ISO-8601 string/date."""
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"not a date or time: {value!r} (use ISO 8601, e.g. 2025-01-31 or 2025-01-31T12:00)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    """Which data a computation sees: turns with since <= ts < until, and only events
    ingested at or before as_of (so a rebuild later sees exactly the same data)."""

    since: datetime | None = None
    until: datetime | None = None
    as_of: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until", "as_of"):
            object.__setattr__(self, name, as_datetime(getattr(self, name)))
        if self.since and self.until and self.since >= self.until:
            raise ValueError(f"empty window: since {self.since.isoformat()} is not before until {self.until.isoformat()}")

    def ingested(self, alias: str) -> tuple[str, list]:
        """SQL condition (and its parameters) for 'ingested by as_of'."""
        return (f"{alias}.ingested_at <= ?", [self.as_of]) if self.as_of else ("TRUE", [])

    def turns(self, alias: str) -> tuple[str, list]:
        """SQL condition (and its parameters) for 'a turn of this window'."""
        cond, params = self.ingested(alias)
        parts = [cond]
        if self.since:
            parts.append(f"{alias}.ts >= ?")
            params.append(self.since)
        if self.until:
            parts.append(f"{alias}.ts < ?")
            params.append(self.until)
        return " AND ".join(parts), params

    def to_json(self) -> dict:
        return {k: (v.isoformat() if v else None) for k, v in (("since", self.since), ("until", self.until), ("as_of", self.as_of))}


def _columns(features: Mapping[str, object]) -> dict[str, np.ndarray]:
    return {name: np.atleast_1d(np.asarray(features.get(name, np.nan), dtype=float))
            for name in FEATURES}


def has_evidence(features: Mapping[str, object]) -> np.ndarray:
    """Bool per turn: it has explicit feedback or at least one implicit signal."""
    f = _columns(features)
    evidence = ~np.isnan(f["thumbs"]) | ~np.isnan(f["rating"]) | (np.nan_to_num(f["has_correction"]) > 0)
    for kind in SIGNAL_KINDS:
        evidence = evidence | (np.nan_to_num(f[f"n_{kind}"]) > 0)
    return evidence


def latency_penalty(latency_ms: np.ndarray, weights: RewardsConfig) -> np.ndarray:
    """0 up to the target latency, 1 at twice the target and beyond (0 where unknown)."""
    over = (np.asarray(latency_ms, dtype=float) - weights.latency_target_ms) / weights.latency_target_ms
    return np.clip(np.nan_to_num(over, nan=0.0), 0.0, 1.0)


def combine(features: Mapping[str, object], weights: RewardsConfig, explicit: bool = True) -> np.ndarray:
    """Rewards (float array in -1..1, NaN where a turn has no evidence) from feature columns
    (arrays, Series or scalars).

    thumbs and rating are NaN (or None) where absent; has_correction is 0/1; n_<kind> counts;
    latency_ms may be missing. With ``explicit=False`` only the implicit part counts (and only
    implicit signals are evidence): the reward that `calibration` checks against ratings.
    """
    f = _columns(features)
    score = np.zeros_like(f["thumbs"])
    if explicit:
        thumbs = np.nan_to_num(f["thumbs"], nan=0.0)
        rating = np.where(np.isnan(f["rating"]), 0.0, (f["rating"] - 3.0) / 2.0)
        score = weights.thumbs * thumbs + weights.rating * rating + weights.correction * np.nan_to_num(f["has_correction"])
    for kind in SIGNAL_KINDS:
        score = score + getattr(weights, kind) * np.minimum(np.nan_to_num(f[f"n_{kind}"]), weights.signal_cap)
    score = score + weights.latency * latency_penalty(f["latency_ms"], weights)
    evidence = has_evidence(f) if explicit else implicit_evidence(f)
    return np.where(evidence, np.clip(score, -1.0, 1.0), np.nan)


def implicit_evidence(features: Mapping[str, object]) -> np.ndarray:
    """Bool per turn: at least one implicit signal."""
    f = _columns(features)
    evidence = np.zeros(len(f["thumbs"]), dtype=bool)
    for kind in SIGNAL_KINDS:
        evidence = evidence | (np.nan_to_num(f[f"n_{kind}"]) > 0)
    return evidence


def confidence(features: Mapping[str, object], weights: RewardsConfig) -> np.ndarray:
    """Confidence in 0..1 of each turn's reward: 1 - prod(1 - c) over its pieces of evidence."""
    f = _columns(features)
    n_explicit = (~np.isnan(f["thumbs"])).astype(int) + (~np.isnan(f["rating"])).astype(int) \
        + (np.nan_to_num(f["has_correction"]) > 0).astype(int)
    n_implicit = sum((np.nan_to_num(f[f"n_{kind}"]) > 0).astype(int) for kind in SIGNAL_KINDS)
    return 1.0 - (1.0 - weights.explicit_confidence) ** n_explicit * (1.0 - weights.implicit_confidence) ** n_implicit


def turn_features(feedback: Iterable[Mapping], signals: Iterable[Mapping], latency_ms: float | None = None) -> dict:
    """Features of one turn from its feedback and (already attributed) signal events.

    Each event is a mapping with its payload fields plus ``ts`` (epoch seconds) and ``event_id``.
    Returns the FEATURES plus ``correction`` (latest text or None), ``n_feedback`` and ``n_signals``.
    """
    feedback, signals = list(feedback), list(signals)

    def latest(field: str):
        present = [(e["ts"], e["event_id"], e[field]) for e in feedback if e.get(field) not in (None, "")]
        return max(present)[2] if present else None

    thumbs, rating, correction = latest("thumbs"), latest("rating"), latest("correction")
    out = {
        "thumbs": float("nan") if thumbs is None else float(thumbs),
        "rating": float("nan") if rating is None else float(rating),
        "has_correction": 0 if correction is None else 1,
        "correction": correction,
        "n_feedback": len(feedback),
        "n_signals": len(signals),
        "latency_ms": float("nan") if latency_ms is None else float(latency_ms),
    }
    for kind in SIGNAL_KINDS:
        out[f"n_{kind}"] = sum(1 for s in signals if s["kind"] == kind)
    return out


def turn_reward(feedback: Iterable[Mapping], signals: Iterable[Mapping], weights: RewardsConfig,
                latency_ms: float | None = None) -> float | None:
    """The reward of one turn, or None when it has no evidence (see the module docstring);
    the streaming twin of `reward_frame`."""
    value = float(combine(turn_features(feedback, signals, latency_ms), weights)[0])
    return None if np.isnan(value) else value


def _reward_sql(window: Window) -> tuple[str, list]:
    scope_cond, scope_params = window.turns("t")
    all_cond, all_params = window.ingested("t")
    fb_cond, fb_params = window.ingested("f")
    sig_cond, sig_params = window.ingested("s")
    counts = ",\n            ".join(f"count(*) FILTER (WHERE kind = '{k}') AS n_{k}" for k in SIGNAL_KINDS)
    coalesced = ", ".join(f"coalesce(sg.n_{k}, 0)::INTEGER AS n_{k}" for k in SIGNAL_KINDS)
    sql = f"""
    WITH scope AS (
        SELECT t.turn_id, t.latency_ms FROM turns t WHERE {scope_cond}
        QUALIFY row_number() OVER (PARTITION BY t.turn_id ORDER BY t.ts, t.event_id) = 1
    ),
    known_turns AS (SELECT t.turn_id, t.conversation_id, t.ts FROM turns t WHERE {all_cond}),
    fb AS (
        SELECT f.turn_id,
            arg_max(f.thumbs, (f.ts, f.event_id)) FILTER (WHERE f.thumbs IS NOT NULL) AS thumbs,
            arg_max(f.rating, (f.ts, f.event_id)) FILTER (WHERE f.rating IS NOT NULL) AS rating,
            arg_max(f.correction, (f.ts, f.event_id)) FILTER (WHERE f.correction IS NOT NULL AND f.correction <> '')
                AS correction,
            count(*) AS n_feedback
        FROM feedback f SEMI JOIN scope ON f.turn_id = scope.turn_id
        WHERE {fb_cond}
        GROUP BY f.turn_id
    ),
    attributed AS (
        SELECT s.turn_id, s.kind FROM signals s WHERE s.turn_id IS NOT NULL AND {sig_cond}
        UNION ALL
        SELECT kt.turn_id, cs.kind
        FROM (SELECT s.conversation_id, s.ts, s.kind FROM signals s WHERE s.turn_id IS NULL AND {sig_cond}) cs
        ASOF JOIN known_turns kt ON cs.conversation_id = kt.conversation_id AND cs.ts >= kt.ts
    ),
    sg AS (
        SELECT a.turn_id,
            {counts},
            count(*) AS n_signals
        FROM attributed a SEMI JOIN scope ON a.turn_id = scope.turn_id
        GROUP BY a.turn_id
    )
    SELECT scope.turn_id, scope.latency_ms::DOUBLE AS latency_ms, fb.thumbs::DOUBLE AS thumbs, fb.rating::DOUBLE AS rating,
        (fb.correction IS NOT NULL)::INTEGER AS has_correction, fb.correction,
        coalesce(fb.n_feedback, 0)::INTEGER AS n_feedback, coalesce(sg.n_signals, 0)::INTEGER AS n_signals,
        {coalesced}
    FROM scope LEFT JOIN fb ON fb.turn_id = scope.turn_id LEFT JOIN sg ON sg.turn_id = scope.turn_id
    ORDER BY scope.turn_id
    """
    return sql, scope_params + all_params + fb_params + sig_params + sig_params


def reward_frame(con: duckdb.DuckDBPyConnection, window: Window, weights: RewardsConfig) -> pd.DataFrame:
    """One row per turn of the window: its features, ``correction``, ``reward`` (NaN: no
    evidence), ``confidence``, ``implicit_reward`` (NaN: no implicit signal) and ``has_explicit``."""
    sql, params = _reward_sql(window)
    frame = con.execute(sql, params).df()
    empty = np.zeros(0)
    frame["reward"] = combine(frame, weights) if len(frame) else empty
    frame["confidence"] = confidence(frame, weights) if len(frame) else empty
    frame["implicit_reward"] = combine(frame, weights, explicit=False) if len(frame) else empty
    frame["has_explicit"] = frame["thumbs"].notna() | frame["rating"].notna() | (frame["has_correction"] == 1)
    return frame


def summarize(frame: pd.DataFrame) -> dict:
    """Counts and the reward distribution of a `reward_frame` (what `kaizen dataset rewards` prints)."""
    rewards = frame["reward"].to_numpy(dtype=float) if len(frame) else np.zeros(0)
    with_feedback = (frame["n_feedback"] + frame["n_signals"] > 0).to_numpy() if len(frame) else np.zeros(0, bool)
    rewarded = ~np.isnan(rewards)
    out = {
        "turns": int(len(frame)),
        "with_feedback": int(with_feedback.sum()),
        "with_reward": int(rewarded.sum()),
        "without_reward": int((~rewarded).sum()),
        "with_explicit": int(frame["has_explicit"].sum()) if len(frame) else 0,
        "with_correction": int(frame["has_correction"].sum()) if len(frame) else 0,
        "positive": int((rewards > 0).sum()),
        "negative": int((rewards < 0).sum()),
    }
    rated = rewards[rewarded]
    out["mean_reward"] = round(float(rated.mean()), 4) if rated.size else None
    conf = frame["confidence"].to_numpy(dtype=float)[rewarded] if len(frame) else np.zeros(0)
    out["mean_confidence"] = round(float(conf.mean()), 4) if conf.size else None
    edges = np.linspace(-1.0, 1.0, 9)
    hist, _ = np.histogram(rated, bins=edges)
    out["histogram"] = [{"from": round(float(a), 2), "to": round(float(b), 2), "turns": int(n)}
                        for a, b, n in zip(edges[:-1], edges[1:], hist, strict=True)]
    return out


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of scores for a binary label (ties count half); None if one class is empty."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration(frame: pd.DataFrame, weights: RewardsConfig) -> dict:
    """How well the implicit-only reward predicts explicit ratings, on turns that have both.

    The explicit label of a turn is the sign of its explicit-only reward (thumbs, rating and
    correction with their weights; rating 3 alone is neutral and left out). ``agreement`` is the
    share of those turns whose implicit reward has the same sign (an implicit reward of exactly
    0 counts as a miss); ``auc`` is the probability that a random positive turn has a higher
    implicit reward than a random negative one (0.5 = no information).
    """
    if len(frame):
        explicit_only = {name: frame[name] for name in EXPLICIT_FEATURES}
        explicit_only.update({f"n_{k}": np.zeros(len(frame)) for k in SIGNAL_KINDS})
        explicit_reward = combine(explicit_only, weights)  # no latency column: no latency term
        implicit = frame["implicit_reward"].to_numpy(dtype=float)
    else:
        explicit_reward = implicit = np.zeros(0)
    both = ~np.isnan(implicit) & ~np.isnan(explicit_reward) & (np.nan_to_num(explicit_reward) != 0)
    label = explicit_reward[both] > 0
    score = implicit[both]
    agree = np.sign(score) == np.where(label, 1.0, -1.0)
    auc = _auc(score, label)
    return {
        "turns_with_both": int(both.sum()),
        "explicit_positive": int(label.sum()),
        "explicit_negative": int((~label).sum()),
        "agreement": round(float(agree.mean()), 4) if both.any() else None,
        "auc": round(auc, 4) if auc is not None else None,
        "implicit_only_turns": int((~np.isnan(implicit) & np.isnan(explicit_reward)).sum()),
    }
