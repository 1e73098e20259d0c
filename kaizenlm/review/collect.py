"""The review's numbers: queries over the window [since, until) of a DuckDB connection.

`collect(con, cfg, since, until)` returns every number of the review as a JSON-able dict,
one key per section: traffic (per week and per serving version, with the per-turn reward of
kaizenlm.feedback.rewards), topics, experiments and decisions, model versions with their
evaluation metrics, data volumes and curation filters, knowledge coverage, scheduled jobs.

Evaluation metrics are read from each version's `metrics` JSON (nested dicts are
flattened; the last key counts) under the names in METRIC_KEYS, e.g. `domain_score`,
`retention`, `general_score`, `refusal_rate`. Where a version has a general-skill score
but no retention, retention is that score over the base model's (docs/SCHEDULE.md).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from kaizenlm.config import Config
from kaizenlm.feedback.rewards import Window, reward_frame

# Metric names per concept, first found wins (flattened metrics: the last component of a dotted key).
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "domain": ("domain_score", "domain", "domain_exam", "exam"),
    "retention": ("retention",),
    "general": ("general_score", "general", "general_skills"),
    "refusal": ("refusal_rate", "refusal", "out_of_scope_refusal"),
    "coverage": ("coverage",),
}
REWARD_SOURCE = "rewards"  # traffic.reward_source in review.json: the reward is kaizenlm.feedback.rewards
CONTEXT_VERSIONS = 3  # versions before the window shown for trends
TOP_CLUSTERS = 10


# ---------------------------------------------------------------- small helpers


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    result = con.execute(sql, params or [])
    cols = [d[0] for d in result.description]
    return [dict(zip(cols, row, strict=True)) for row in result.fetchall()]


def _flatten(metrics: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def metric(metrics: dict, concept: str) -> float | None:
    """The first number among METRIC_KEYS[concept] in (flattened) metrics, else None."""
    flat = _flatten(metrics or {})
    by_leaf = {}
    for key, value in flat.items():
        by_leaf.setdefault(key.rsplit(".", 1)[-1], value)
    for name in METRIC_KEYS[concept]:
        value = flat.get(name, by_leaf.get(name))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _round(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(float(x), n)


def _json_value(v: object) -> object:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


# ---------------------------------------------------------------- 1. traffic and rewards


def _turn_rewards(con: duckdb.DuckDBPyConnection, cfg: Config, since: datetime, until: datetime):
    """DataFrame turn_id, reward, has_feedback, has_explicit of the window's turns: the per-turn
    reward of kaizenlm.feedback.rewards (`reward_frame`, weights from [rewards]), the one reward
    formula curation and the A/B tests use too."""
    frame = reward_frame(con, Window(since=since, until=until), cfg.rewards)
    frame["has_feedback"] = (frame["n_feedback"] + frame["n_signals"]) > 0
    return frame[["turn_id", "reward", "has_feedback", "has_explicit"]]


def traffic(con: duckdb.DuckDBPyConnection, since: datetime, until: datetime, rewards) -> dict:
    """Per ISO week (Monday, UTC): turns, users, feedback, thumbs, ratings, mean reward.

    `rewards`: DataFrame turn_id, reward, has_feedback, has_explicit (from _turn_rewards)."""
    window = [since, until]
    turns = con.execute(
        """SELECT turn_id, strftime(date_trunc('week', ts AT TIME ZONE 'UTC'), '%Y-%m-%d') AS week, user_id, conversation_id,
                  model_version
           FROM turns WHERE ts >= ? AND ts < ?
           QUALIFY row_number() OVER (PARTITION BY turn_id ORDER BY ts, event_id) = 1""", window).df()
    if turns.empty:
        return {"turns": 0, "weeks": [], "by_model_version": []}
    frame = turns.merge(rewards, on="turn_id", how="left")
    frame["has_feedback"] = frame["has_feedback"].fillna(False).astype(bool)
    frame["has_explicit"] = frame["has_explicit"].fillna(False).astype(bool)
    feedback = {r["week"]: r for r in _rows(con, """
        SELECT strftime(date_trunc('week', t.ts AT TIME ZONE 'UTC'), '%Y-%m-%d') AS week, count(*) AS feedback,
               count(*) FILTER (WHERE f.thumbs = 1) AS thumbs_up, count(*) FILTER (WHERE f.thumbs = -1) AS thumbs_down,
               avg(f.rating) AS mean_rating, count(f.rating) AS ratings
        FROM feedback f JOIN (SELECT turn_id, min(ts) AS ts FROM turns WHERE ts >= ? AND ts < ? GROUP BY turn_id) t
             USING (turn_id)
        GROUP BY 1""", window)}
    signals = dict(con.execute(
        """SELECT strftime(date_trunc('week', ts AT TIME ZONE 'UTC'), '%Y-%m-%d'), count(*) FROM signals
           WHERE ts >= ? AND ts < ? GROUP BY 1""", window).fetchall())
    weeks = []
    for week, g in frame.groupby("week", sort=True):
        rated = g[g["has_feedback"]]
        fb = feedback.get(week, {})
        weeks.append({
            "week": week, "turns": int(len(g)), "users": int(g["user_id"].nunique()),
            "conversations": int(g["conversation_id"].nunique()), "feedback": int(fb.get("feedback", 0)),
            "thumbs_up": int(fb.get("thumbs_up", 0)), "thumbs_down": int(fb.get("thumbs_down", 0)),
            "mean_rating": _round(fb.get("mean_rating"), 3), "signals": int(signals.get(week, 0)),
            "explicit_share": _round(g["has_explicit"].mean(), 4),
            "mean_reward": _round(rated["reward"].mean(), 4) if len(rated) else None,
        })
    rated = frame[frame["has_feedback"]]
    by_version = []
    for version, g in frame.groupby(frame["model_version"].fillna("(none)"), sort=True):
        r = g[g["has_feedback"]]
        by_version.append({"model_version": version, "turns": int(len(g)),
                           "mean_reward": _round(r["reward"].mean(), 4) if len(r) else None})
    by_version.sort(key=lambda v: -v["turns"])
    return {
        "turns": int(len(frame)), "users": int(frame["user_id"].nunique()),
        "conversations": int(frame["conversation_id"].nunique()),
        "feedback": sum(w["feedback"] for w in weeks), "signals": sum(w["signals"] for w in weeks),
        "turns_with_feedback": int(frame["has_feedback"].sum()), "turns_with_explicit": int(frame["has_explicit"].sum()),
        "explicit_share": _round(frame["has_explicit"].mean(), 4),
        "mean_reward": _round(rated["reward"].mean(), 4) if len(rated) else None,
        "reward_source": REWARD_SOURCE, "weeks": weeks, "by_model_version": by_version[:10],
    }


def topic_rewards(con: duckdb.DuckDBPyConnection, since: datetime, until: datetime, reward_by_turn) -> list[dict]:
    """Traffic and mean reward per `turns.topic` (when the gateway or SDK sets it), most traffic first."""
    rows = con.execute("SELECT turn_id, topic FROM turns WHERE ts >= ? AND ts < ? AND topic IS NOT NULL",
                       [since, until]).df()
    if rows.empty:
        return []
    rows = rows.drop_duplicates("turn_id").merge(reward_by_turn, on="turn_id", how="left")
    out = []
    for topic, g in rows.groupby("topic"):
        rated = g[g["has_feedback"].fillna(False).astype(bool)]
        out.append({"topic": topic, "turns": int(len(g)), "mean_reward": _round(rated["reward"].mean(), 4)
                    if len(rated) else None})
    return sorted(out, key=lambda t: (-t["turns"], t["topic"]))[:TOP_CLUSTERS]


# ---------------------------------------------------------------- 2. experiments and decisions


def experiments(con: duckdb.DuckDBPyConnection, since: datetime, until: datetime) -> dict:
    """Experiments that ran during the window with their latest look, every decision row of the
    window (migration 5), and the alias moves (promotions, rollbacks) of the window."""
    moves = [{k: _json_value(v) for k, v in r.items()} for r in _rows(con, """
        SELECT seq, strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M') AS ts, alias, from_version, to_version, action,
               reason, actor
        FROM alias_history WHERE ts >= ? AND ts < ? ORDER BY seq""", [since, until])]
    exps = _rows(con, """
        SELECT experiment_id, alias, champion, challenger, split, status, end_reason,
               strftime(started_at AT TIME ZONE 'UTC', '%Y-%m-%d') AS started,
               strftime(ended_at AT TIME ZONE 'UTC', '%Y-%m-%d') AS ended
        FROM experiments WHERE started_at < ? AND (ended_at IS NULL OR ended_at >= ?)
        ORDER BY started_at, experiment_id""", [until, since])
    decisions = _rows(con, """
        SELECT experiment_id, strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M') AS ts, action, reason, numbers, warnings
        FROM experiment_decisions WHERE ts >= ? AND ts < ? ORDER BY ts, seq""", [since, until])
    by_action: dict[str, int] = {}
    latest: dict[str, dict] = {}
    for d in decisions:
        by_action[d["action"]] = by_action.get(d["action"], 0) + 1
        d["warnings"] = json.loads(d["warnings"]) if d["warnings"] else []
        numbers = json.loads(d.pop("numbers")) if d["numbers"] else {}
        primary = numbers.get("primary") or {}
        d.update({"effect": primary.get("effect"), "ci_low": primary.get("ci_low"), "ci_high": primary.get("ci_high"),
                  "p_value": primary.get("p_value"), "n_champion": numbers.get("n_champion"),
                  "n_challenger": numbers.get("n_challenger")})
        latest[d["experiment_id"]] = d
    for e in exps:
        look = latest.get(e["experiment_id"], {})
        e.update({k: look.get(k) for k in ("action", "effect", "ci_low", "ci_high", "p_value", "n_champion",
                                           "n_challenger")})
    final = [d for d in decisions if d["action"] != "continue"]
    return {"alias_moves": moves, "experiments": exps, "final": final, "by_action": by_action,
            "looks": len(decisions), "srm": sum("srm" in d["warnings"] for d in final)}


# ---------------------------------------------------------------- 3./4. versions, evaluations, forgetting


def versions(con: duckdb.DuckDBPyConnection, since: datetime, until: datetime) -> dict:
    """Model versions (base, adapter) up to `until` with their evaluation numbers; knowledge versions apart."""
    rows = _rows(con, """
        SELECT version_id, kind, parent_id, status, metrics, snapshot_id, tainted, note,
               epoch_us(created_at) AS created_us
        FROM model_versions WHERE created_at < ? ORDER BY created_at, kind, seq""", [until])
    aliases: dict[str, list[str]] = {}
    for name, version_id in con.execute("SELECT name, version_id FROM aliases ORDER BY name").fetchall():
        aliases.setdefault(version_id, []).append(name)
    since_us = since.timestamp() * 1e6
    models, knowledge = [], []
    for r in rows:
        m = json.loads(r["metrics"]) if r["metrics"] else {}
        entry = {"version_id": r["version_id"], "kind": r["kind"], "parent_id": r["parent_id"], "status": r["status"],
                 "created_at": datetime.fromtimestamp(r["created_us"] / 1e6, UTC).strftime("%Y-%m-%d"),
                 "in_window": r["created_us"] >= since_us, "aliases": aliases.get(r["version_id"], []),
                 "snapshot_id": r["snapshot_id"], "tainted": bool(r["tainted"])}
        entry.update({c: _round(metric(m, c)) for c in ("domain", "retention", "general", "refusal", "coverage")})
        (knowledge if r["kind"] == "knowledge" else models).append(entry)
    _fill_retention(models)
    first_in = next((i for i, v in enumerate(models) if v["in_window"]), len(models))
    shown = models[max(0, first_in - CONTEXT_VERSIONS):]
    return {"models": shown, "knowledge": [k for k in knowledge if k["in_window"]],
            "latest_knowledge": knowledge[-1] if knowledge else None, "models_in_window": len(models) - first_in}


def _fill_retention(models: list[dict]) -> None:
    """retention = general score / the base model's, where a version reports a general score only."""
    by_id = {v["version_id"]: v for v in models}
    for v in models:
        v["retention_source"] = "metrics" if v["retention"] is not None else None
        if v["retention"] is not None or v["general"] is None or v["kind"] == "base":
            continue
        root = v
        while root["parent_id"] in by_id and root["kind"] != "base":
            root = by_id[root["parent_id"]]
        if root["kind"] == "base" and root["general"]:
            v["retention"] = _round(v["general"] / root["general"])
            v["retention_source"] = f"general_score / {root['version_id']}"


# ---------------------------------------------------------------- 5. data volumes and filters


def data_volumes(con: duckdb.DuckDBPyConnection, since: datetime, until: datetime) -> dict:
    """Events landed in the window, and the dataset snapshots built in it with what each filter removed."""
    landed = {t: con.execute(f"SELECT count(*) FROM {t} WHERE ts >= ? AND ts < ?", [since, until]).fetchone()[0]
              for t in ("turns", "feedback", "signals")}
    landed["dlq"] = con.execute("SELECT count(*) FROM dlq WHERE ingested_at >= ? AND ingested_at < ?",
                                [since, until]).fetchone()[0]
    snapshots, removals = [], {}
    for r in _rows(con, """SELECT snapshot_id, strftime(created_at AT TIME ZONE 'UTC', '%Y-%m-%d') AS created,
                                  counts, manifest
                           FROM dataset_snapshots WHERE created_at >= ? AND created_at < ? ORDER BY created_at""",
                   [since, until]):
        manifest = json.loads(r["manifest"]) if r["manifest"] else {}
        curation = manifest.get("curation") or {}
        filters = []
        for output, steps in (curation.get("steps") or {}).items():
            for step in steps:
                for reason, n in (step.get("dropped") or {}).items():
                    key = f"{output}: {step.get('step')} / {reason}"
                    filters.append({"filter": key, "reason": reason, "in": int(step.get("in") or 0), "removed": int(n)})
                    removals[key] = removals.get(key, 0) + int(n)
        snapshots.append({"snapshot_id": r["snapshot_id"], "created": r["created"],
                          "counts": json.loads(r["counts"]) if r["counts"] else {},
                          "candidate_turns": curation.get("turns"), "filters": filters})
    ranked = sorted(removals.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"landed": landed, "snapshots": snapshots, "removals": [{"filter": k, "removed": n} for k, n in ranked]}


# ---------------------------------------------------------------- 6. uncovered topics


def uncovered_topics(latest_knowledge: dict | None, con: duckdb.DuckDBPyConnection) -> dict | None:
    """The coverage report stored with the newest knowledge version: share covered, top uncovered clusters."""
    if latest_knowledge is None:
        return None
    (artifact_dir,) = con.execute("SELECT artifact_dir FROM model_versions WHERE version_id = ?",
                                  [latest_knowledge["version_id"]]).fetchone()
    path = Path(artifact_dir) / "coverage.json"
    if not path.is_file():
        return {"version_id": latest_knowledge["version_id"], "share_covered": latest_knowledge["coverage"],
                "n": None, "clusters": [], "missing": str(path)}
    report = json.loads(path.read_text(encoding="utf-8"))
    clusters = [{"size": c.get("size"), "examples": (c.get("examples") or [])[:3],
                 "nearest_doc_id": c.get("nearest_doc_id"), "nearest_score": c.get("nearest_score")}
                for c in (report.get("uncovered_clusters") or [])[:TOP_CLUSTERS]]
    return {"version_id": latest_knowledge["version_id"], "share_covered": _round(report.get("share_covered")),
            "n": report.get("n"), "threshold": report.get("threshold"), "clusters": clusters}


# ---------------------------------------------------------------- scheduled jobs


def job_summary(con: duckdb.DuckDBPyConnection, since: datetime, until: datetime) -> dict:
    runs = _rows(con, """SELECT tier, status, count(*) AS runs, round(avg(duration_s), 1) AS mean_duration_s
                         FROM job_runs WHERE started_at >= ? AND started_at < ? GROUP BY 1, 2 ORDER BY 1, 2""",
                 [since, until])
    # A tier whose newest run in the window failed (retries exhausted or not yet retried).
    failed_last = _rows(con, """SELECT tier, run_id, error, log_path FROM job_runs
                                WHERE started_at >= ? AND started_at < ?
                                QUALIFY row_number() OVER (PARTITION BY tier ORDER BY started_at DESC) = 1
                                    AND status = 'failed' ORDER BY tier""", [since, until])
    return {"runs": runs, "failed_last": failed_last}


# ---------------------------------------------------------------- collect


def collect(con: duckdb.DuckDBPyConnection, cfg: Config, since: datetime, until: datetime) -> dict:
    """Every number of the review (JSON-able)."""
    rewards = _turn_rewards(con, cfg, since, until)
    v = versions(con, since, until)
    return {
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gates": {"min_retention": cfg.eval.min_retention},
        "traffic": traffic(con, since, until, rewards),
        "topics": topic_rewards(con, since, until, rewards), "experiments": experiments(con, since, until), "versions": v,
        "data": data_volumes(con, since, until), "coverage": uncovered_topics(v["latest_knowledge"], con),
        "jobs": job_summary(con, since, until),
    }
