"""Aggregate read endpoints the dashboard needs, mounted by the controller.

    GET /admin/v1/dashboard/trends?days=30&bucket=day          traffic, satisfaction and reward per time bucket
    GET /admin/v1/dashboard/low_reward_turns?max_reward=0&...   the worst turns, with their feedback (Feedback explorer)
    GET /admin/v1/dashboard/conversations/{conversation_id}     every turn of a conversation with its feedback,
                                                                signals and reward
    GET /admin/v1/dashboard/training/{version_id}               the training runs' metrics stored with an adapter
    GET /admin/v1/dashboard/knowledge/{version_id}/coverage     the coverage report stored with a knowledge version

The dashboard reads only the controller's HTTP API (it never opens DuckDB), and the
per-row endpoints (/admin/v1/turns, /feedback) would make it fetch every row to draw a
trend; these do the aggregation next to the data. Rewards come from
kaizenlm.feedback.rewards: `reward_frame` (SQL, bulk) for trends and lists and
`turn_reward` (its streaming twin) for one conversation, so every number matches the
curation and A/B definitions. Every endpoint needs the admin key.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd
from fastapi import APIRouter, HTTPException, Query, Request

from kaizenlm.auth import Admin
from kaizenlm.feedback.rewards import Window, reward_frame, turn_reward
from kaizenlm.ingest.events import SIGNAL_KINDS
from kaizenlm.registry.versions import find_version

router = APIRouter(prefix="/admin/v1/dashboard", tags=["dashboard"])

COVERAGE_FILE = "coverage.json"  # written into a knowledge artifact by kaizenlm.knowledge.refresh
TRAINING_RUNS_DIR = "runs"  # <adapter artifact>/runs/{sft,dpo}/metrics.json, kept by kaizenlm.retrain.retrain_job
_FREQ = {"hour": "h", "day": "D"}
MAX_BUCKETS = 2000  # a trend is a chart: more points than pixels help nobody


def _num(x: object, digits: int = 4) -> float | None:
    """A JSON-safe rounded float (NaN and missing become null)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, digits)


def _iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None or pd.isna(epoch_s) else datetime.fromtimestamp(float(epoch_s), UTC).isoformat()


def _since(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def _turn_rewards(request: Request, since: datetime) -> pd.DataFrame:
    """One row per turn since `since`: the reward features and reward, plus when and by which model."""
    cur = request.app.state.db.cursor()
    try:
        rewards = reward_frame(cur, Window(since=since), request.app.state.cfg.rewards)
        turns = cur.execute(
            "SELECT turn_id, epoch(ts) AS ts, conversation_id, user_id, model_version, variant, prompt, response "
            "FROM turns WHERE ts >= ? QUALIFY row_number() OVER (PARTITION BY turn_id ORDER BY ts, event_id) = 1",
            [since]).df()
    finally:
        cur.close()
    return turns.merge(rewards, on="turn_id", how="inner")


def _bucket_start(ts: pd.Series, bucket: str) -> pd.Series:
    moments = pd.to_datetime(ts, unit="s", utc=True)
    if bucket == "week":  # ISO weeks: buckets start on Mondays
        days = moments.dt.floor("D")
        return days - pd.to_timedelta(days.dt.weekday, unit="D")
    return moments.dt.floor(_FREQ[bucket])


def _all_buckets(since: datetime, bucket: str) -> pd.DatetimeIndex:
    """Every bucket from `since` to now, so quiet periods show as zeros instead of gaps."""
    first = _bucket_start(pd.Series([since.timestamp()]), bucket).iloc[0]
    step = "7D" if bucket == "week" else _FREQ[bucket]
    return pd.date_range(first, datetime.now(UTC), freq=step)


def _summarise(group: pd.DataFrame) -> dict:
    rewarded = group["reward"].notna()
    up, down = int((group["thumbs"] == 1).sum()), int((group["thumbs"] == -1).sum())
    return {
        "turns": len(group),
        "conversations": int(group["conversation_id"].nunique()),
        "users": int(group["user_id"].nunique()),
        "rewarded_turns": int(rewarded.sum()),
        "thumbs_up": up,
        "thumbs_down": down,
        "thumbs_up_share": _num(up / (up + down)) if up + down else None,
        "ratings": int(group["rating"].notna().sum()),
        "mean_rating": _num(group["rating"].mean()) if group["rating"].notna().any() else None,
        "corrections": int(group["has_correction"].sum()),
        "mean_reward": _num(group["reward"].mean()) if rewarded.any() else None,
        "mean_confidence": _num(group.loc[rewarded, "confidence"].mean()) if rewarded.any() else None,
    }


@router.get("/trends")
def trends(request: Request, _: Admin, days: int = Query(30, ge=1, le=3650),
           bucket: Literal["hour", "day", "week"] = "day") -> dict:
    """Per bucket (UTC), by the turn's time: traffic, thumbs, ratings, corrections and reward.

    Thumbs and ratings are each turn's latest (as in the reward). `mean_reward` averages
    over the turns that have a reward (some evidence: a turn nobody reacted to has none),
    `rewarded_turns` counts them. `by_model` splits turns and mean reward per model_version.
    """
    if days * {"hour": 24, "day": 1, "week": 1 / 7}[bucket] > MAX_BUCKETS:
        raise HTTPException(400, f"{days} days by {bucket} is more than {MAX_BUCKETS} buckets; pick a coarser bucket "
                                 "or a shorter window")
    since = _since(days)
    frame = _turn_rewards(request, since)
    frame["start"] = _bucket_start(frame["ts"], bucket) if len(frame) else pd.Series(dtype="datetime64[ns, UTC]")
    groups = dict(tuple(frame.groupby("start"))) if len(frame) else {}
    items = [{"start": start.isoformat(), **_summarise(groups.get(start, frame.iloc[0:0]))}
             for start in _all_buckets(since, bucket)]
    by_model = [
        {"start": start.isoformat(), "model_version": model or "unknown", "turns": len(g),
         "mean_reward": _num(g["reward"].mean()) if g["reward"].notna().any() else None}
        for (start, model), g in frame.fillna({"model_version": "unknown"}).groupby(["start", "model_version"])
    ] if len(frame) else []
    return {"days": days, "bucket": bucket, "since": since.isoformat(), "totals": _summarise(frame),
            "items": items, "by_model": by_model}


@router.get("/low_reward_turns")
def low_reward_turns(request: Request, _: Admin, limit: int = Query(50, ge=1, le=1000),
                     days: int = Query(30, ge=1, le=3650), max_reward: float = Query(0.0, ge=-1.0, le=1.0),
                     model_version: str | None = None, with_comment: bool = False, with_correction: bool = False,
                     include_unrated: bool = False, q: str | None = None) -> dict:
    """Turns of the last `days` with reward <= max_reward, worst first (newest first among equals).

    A turn without evidence has no reward and is left out, unless include_unrated, which
    adds (after the rated ones) those that got some feedback event all the same, e.g. only a
    comment. `q` matches prompt, response, comment or correction (case-insensitive).
    `model_versions` lists the versions seen in the window (for a filter).
    """
    since = _since(days)
    frame = _turn_rewards(request, since)
    cur = request.app.state.db.cursor()
    try:
        comments = cur.execute(
            "SELECT turn_id, arg_max(comment, (ts, event_id)) AS comment FROM feedback "
            "WHERE comment IS NOT NULL AND comment <> '' AND turn_id IN (SELECT turn_id FROM turns WHERE ts >= ?) "
            "GROUP BY turn_id", [since]).df()
    finally:
        cur.close()
    frame = frame.merge(comments, on="turn_id", how="left")
    versions = sorted(frame["model_version"].dropna().unique().tolist())
    keep = frame["reward"] <= max_reward + 1e-9
    if include_unrated:
        keep |= frame["reward"].isna() & ((frame["n_feedback"] + frame["n_signals"]) > 0)
    if model_version:
        keep &= frame["model_version"] == model_version
    if with_comment:
        keep &= frame["comment"].notna()
    if with_correction:
        keep &= frame["has_correction"] == 1
    if q:
        text = frame[["prompt", "response", "comment", "correction"]].fillna("").agg(" ".join, axis=1)
        keep &= text.str.contains(q, case=False, regex=False)
    hits = frame[keep].sort_values(["reward", "ts"], ascending=[True, False], na_position="last")
    items = [_low_reward_item(row) for row in hits.head(limit).to_dict("records")]
    return {"total": len(hits), "limit": limit, "days": days, "max_reward": max_reward, "model_versions": versions,
            "items": items}


def _low_reward_item(row: dict) -> dict:
    signals = {kind: int(row[f"n_{kind}"]) for kind in SIGNAL_KINDS if row[f"n_{kind}"]}
    return {
        "turn_id": row["turn_id"], "conversation_id": row["conversation_id"], "user_id": row["user_id"],
        "ts": _iso(row["ts"]), "model_version": row["model_version"], "variant": row["variant"],
        "prompt": row["prompt"], "response": row["response"], "reward": _num(row["reward"]),
        "confidence": _num(row["confidence"]),
        "thumbs": None if pd.isna(row["thumbs"]) else int(row["thumbs"]),
        "rating": None if pd.isna(row["rating"]) else int(row["rating"]),
        "comment": None if pd.isna(row["comment"]) else row["comment"],
        "correction": None if pd.isna(row["correction"]) else row["correction"],
        "signals": signals,
    }


def _records(cur, sql: str, params: list) -> list[dict]:
    result = cur.execute(sql, params)
    cols = [d[0] for d in result.description]
    return [dict(zip(cols, row, strict=True)) for row in result.fetchall()]


@router.get("/conversations/{conversation_id}")
def conversation(request: Request, conversation_id: str, _: Admin) -> dict:
    """Every turn of a conversation (oldest first) with its messages, feedback, signals and reward.

    A signal that names only the conversation counts for its latest turn at or before the
    signal, as in the reward; one that precedes every turn is listed under `unattributed_signals`.
    """
    cur = request.app.state.db.cursor()
    try:
        turns = _records(cur, """
            SELECT turn_id, epoch(ts) AS ts, event_id, user_id, model_version, variant, experiment_id, messages,
                   response, retrieved_doc_ids, latency_ms, prompt_tokens, completion_tokens, topic
            FROM turns WHERE conversation_id = ?
            QUALIFY row_number() OVER (PARTITION BY turn_id ORDER BY ts, event_id) = 1
            ORDER BY ts, event_id""", [conversation_id])
        if not turns:
            raise HTTPException(404, f"no turns in conversation '{conversation_id}'; pick one from the Feedback "
                                     "explorer's list or from /admin/v1/turns")
        ids = [t["turn_id"] for t in turns]
        feedback = _records(cur, "SELECT event_id, epoch(ts) AS ts, turn_id, thumbs, rating, comment, correction "
                                 "FROM feedback WHERE list_contains(?, turn_id) ORDER BY ts, event_id", [ids])
        signals = _records(cur, "SELECT event_id, epoch(ts) AS ts, turn_id, conversation_id, kind, value "
                                "FROM signals WHERE list_contains(?, turn_id) OR conversation_id = ? "
                                "ORDER BY ts, event_id", [ids, conversation_id])
    finally:
        cur.close()
    by_turn: dict[str, dict] = {t["turn_id"]: {**t, "feedback": [], "signals": []} for t in turns}
    for f in feedback:
        by_turn[f["turn_id"]]["feedback"].append(f)
    unattributed = []
    for s in signals:
        target = s["turn_id"] if s["turn_id"] in by_turn else _latest_turn_before(turns, s["ts"])
        (by_turn[target]["signals"] if target else unattributed).append(s)
    weights = request.app.state.cfg.rewards
    out = []
    for t in by_turn.values():
        reward = turn_reward(t["feedback"], t["signals"], weights, latency_ms=t["latency_ms"])
        out.append({**t, "ts": _iso(t["ts"]), "messages": json.loads(t["messages"]),
                    "retrieved_doc_ids": json.loads(t["retrieved_doc_ids"] or "[]"), "reward": _num(reward),
                    "feedback": [{**f, "ts": _iso(f["ts"])} for f in t["feedback"]],
                    "signals": [{**s, "ts": _iso(s["ts"])} for s in t["signals"]]})
    return {"conversation_id": conversation_id, "user_id": turns[0]["user_id"], "turns": out,
            "unattributed_signals": [{**s, "ts": _iso(s["ts"])} for s in unattributed]}


def _latest_turn_before(turns: list[dict], ts: float) -> str | None:
    earlier = [t for t in turns if t["ts"] <= ts]
    return earlier[-1]["turn_id"] if earlier else None


@router.get("/training/{version_id}")
def training_runs(request: Request, version_id: str, _: Admin) -> dict:
    """The training runs stored with an adapter: {version_id, runs: {sft: metrics, dpo: metrics}}.

    The monthly retrain keeps each recipe's metrics.json (loss and gradient-norm curves,
    health warnings) under the artifact's runs/<recipe>/ (kaizenlm.retrain.retrain_job).
    """
    version = _version(request, version_id, "adapter")
    runs_dir = Path(version.artifact_dir) / TRAINING_RUNS_DIR
    runs = {}
    for path in sorted(runs_dir.glob("*/metrics.json")):
        try:
            runs[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a broken file is left out; the other recipe still shows
    if not runs:
        raise HTTPException(404, f"adapter '{version_id}' has no training run logs ({runs_dir}/*/metrics.json); "
                                 "adapters trained by the monthly retrain keep them")
    return {"version_id": version_id, "runs": runs}


def _version(request: Request, version_id: str, kind: str):
    cur = request.app.state.db.cursor()
    try:
        version = find_version(cur, version_id)
    finally:
        cur.close()
    if version is None or version.kind != kind:
        raise HTTPException(404, f"no {kind} version '{version_id}'; `kaizen registry list --kind {kind}` lists them")
    return version


@router.get("/knowledge/{version_id}/coverage")
def knowledge_coverage(request: Request, version_id: str, _: Admin) -> dict:
    """The coverage report (share covered, uncovered question clusters) built with a knowledge version."""
    version = _version(request, version_id, "knowledge")
    path = Path(version.artifact_dir) / COVERAGE_FILE
    if not path.is_file():
        raise HTTPException(404, f"knowledge version '{version_id}' has no {COVERAGE_FILE}; "
                                 "the next `kaizen knowledge refresh` writes one")
    return {"version_id": version_id, **json.loads(path.read_text(encoding="utf-8"))}
