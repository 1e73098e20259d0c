"""The quarterly review: a Markdown report with PNG plots over a window of DuckDB data.

    path = write_review(con, cfg, since, until)      # -> $KAIZEN_HOME/reviews/<date>/report.md

It reads only DuckDB (and the coverage.json stored with the newest knowledge version), so
the controller runs it on its own connection and the CLI on the file when no controller
runs. Three steps, each a plain function:

1. `collect(con, cfg, since, until)` -> a JSON-able dict of numbers per section;
2. `recommend(data, cfg)` -> the RULES, each evaluated: fired or not, and the numbers;
3. `render(data, recommendations, plots)` -> Markdown; `make_plots` writes the PNGs.

review.json next to report.md holds the same numbers for scripts and the dashboard.

Evaluation metrics are read from each version's `metrics` JSON (nested dicts are
flattened; the last key counts) under the names in METRIC_KEYS, e.g. `domain_score`,
`retention`, `general_score`, `refusal_rate`. Where a version has a general-skill score
but no retention, retention is that score over the base model's (docs/SCHEDULE.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from kaizenlm.config import Config

# Metric names per concept, first found wins (flattened metrics: the last component of a dotted key).
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "domain": ("domain_score", "domain", "domain_exam", "exam"),
    "retention": ("retention",),
    "general": ("general_score", "general", "general_skills"),
    "refusal": ("refusal_rate", "refusal", "out_of_scope_refusal"),
    "coverage": ("coverage",),
}
REWARD_GATE_REASON = "low_reward"  # curation's 'answers' step: reward below curation.sft_min_reward
PLOT_NAMES = ("traffic_reward", "evaluations", "forgetting", "snapshots", "filters")
CONTEXT_VERSIONS = 3  # versions before the window shown for trends
TOP_CLUSTERS = 10


# ---------------------------------------------------------------- windows


def last_quarter(now: datetime) -> tuple[datetime, datetime]:
    """The calendar quarter (UTC) before the one `now` is in: [since, until)."""
    now = now.astimezone(UTC)
    start_month = 3 * ((now.month - 1) // 3) + 1
    until = datetime(now.year, start_month, 1, tzinfo=UTC)
    month, year = start_month - 3, now.year
    if month < 1:
        month, year = month + 12, year - 1
    return datetime(year, month, 1, tzinfo=UTC), until


def parse_date(text: str, name: str) -> datetime:
    """An ISO date or date-time (UTC unless it says otherwise)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--{name} '{text}' is not a date; use ISO 8601, e.g. 2025-01-01 or 2025-01-01T00:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def resolve_window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """--since/--until (either may be left out) -> [since, until); both left out: the last quarter."""
    default_since, default_until = last_quarter(now)
    if since is None and until is None:
        return default_since, default_until
    end = parse_date(until, "until") if until else now.astimezone(UTC)
    start = parse_date(since, "since") if since else _months_before(end, 3)
    if start >= end:
        raise ValueError(f"--since {start.date()} is not before --until {end.date()}")
    return start, end


def _months_before(when: datetime, months: int) -> datetime:
    month, year = when.month - months, when.year
    while month < 1:
        month, year = month + 12, year - 1
    return when.replace(year=year, month=month, day=min(when.day, 28))


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
    """(DataFrame turn_id, reward, has_feedback, has_explicit; source). The rewards module when it
    works, else thumbs/rating only (latest of each), so the review never depends on it."""
    try:
        from kaizenlm.feedback.rewards import Window, reward_frame

        frame = reward_frame(con, Window(since=since, until=until), cfg.rewards)
        frame["has_feedback"] = (frame["n_feedback"] + frame["n_signals"]) > 0
        return frame[["turn_id", "reward", "has_feedback", "has_explicit"]], "rewards"
    except Exception:  # the rewards module is absent or broken: fall back, and say so in the report
        frame = con.execute(
            """
            WITH latest AS (
                SELECT turn_id,
                    arg_max(thumbs, (ts, event_id)) FILTER (WHERE thumbs IS NOT NULL) AS thumbs,
                    arg_max(rating, (ts, event_id)) FILTER (WHERE rating IS NOT NULL) AS rating
                FROM feedback GROUP BY turn_id)
            SELECT t.turn_id, greatest(-1.0, least(1.0, coalesce(l.thumbs, 0) * 0.6
                       + coalesce((l.rating - 3) / 2.0, 0) * 0.6)) AS reward,
                   (l.turn_id IS NOT NULL) AS has_feedback,
                   (l.thumbs IS NOT NULL OR l.rating IS NOT NULL) AS has_explicit
            FROM (SELECT DISTINCT turn_id FROM turns WHERE ts >= ? AND ts < ?) t LEFT JOIN latest l USING (turn_id)
            """, [since, until]).df()
        return frame, "thumbs_rating"


def traffic(con: duckdb.DuckDBPyConnection, since: datetime, until: datetime, rewards, reward_source: str) -> dict:
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
        "reward_source": reward_source, "weeks": weeks, "by_model_version": by_version[:10],
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
    rewards, reward_source = _turn_rewards(con, cfg, since, until)
    v = versions(con, since, until)
    return {
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gates": {"min_retention": cfg.eval.min_retention},
        "traffic": traffic(con, since, until, rewards, reward_source),
        "topics": topic_rewards(con, since, until, rewards), "experiments": experiments(con, since, until), "versions": v,
        "data": data_volumes(con, since, until), "coverage": uncovered_topics(v["latest_knowledge"], con),
        "jobs": job_summary(con, since, until),
    }


# ---------------------------------------------------------------- recommendations


NO_DATA = None  # a rule's check returns this when the data cannot decide


@dataclass(frozen=True)
class Rule:
    name: str
    condition: str
    recommendation: str
    check: Callable[[dict, Config], tuple[bool, str] | None]
    """(fired, the numbers it looked at), or None when there is not enough data."""


def _series(data: dict, concept: str) -> list[tuple[str, float]]:
    return [(v["version_id"], v[concept]) for v in data["versions"]["models"]
            if v["kind"] != "base" and v[concept] is not None]


def _fmt_series(series: list[tuple[str, float]]) -> str:
    return " -> ".join(f"{vid} {x:.3f}" for vid, x in series)


def _retention_down(data: dict, cfg: Config) -> tuple[bool, str] | None:
    s = _series(data, "retention")[-3:]
    if len(s) < 3:
        return NO_DATA
    fired = s[0][1] > s[1][1] > s[2][1] and s[0][1] - s[2][1] >= 0.005
    return fired, f"retention {_fmt_series(s)}; curation.replay_fraction = {cfg.curation.replay_fraction:g}"


def _retention_below_gate(data: dict, cfg: Config) -> tuple[bool, str] | None:
    s = _series(data, "retention")
    if not s:
        return NO_DATA
    vid, last = s[-1]
    return last < cfg.eval.min_retention, f"{vid} retention {last:.3f} vs gate eval.min_retention {cfg.eval.min_retention:g}"


def _domain_flat(data: dict, cfg: Config) -> tuple[bool, str] | None:
    s = _series(data, "domain")[-3:]
    if len(s) < 3:
        return NO_DATA
    gains = [b[1] - a[1] for a, b in zip(s, s[1:], strict=False)]
    fired = all(g < 0.01 for g in gains)
    return fired, f"domain {_fmt_series(s)}; gains per cycle {', '.join(f'{g:+.3f}' for g in gains)} (flat: < +0.010)"


def _reward_down(data: dict, cfg: Config) -> tuple[bool, str] | None:
    weeks = [w for w in data["traffic"]["weeks"] if w["mean_reward"] is not None]
    if len(weeks) < 6:
        return NO_DATA
    first = sum(w["mean_reward"] for w in weeks[:3]) / 3
    last = sum(w["mean_reward"] for w in weeks[-3:]) / 3
    return last - first <= -0.1, f"mean reward first 3 weeks {first:+.3f}, last 3 weeks {last:+.3f} ({last - first:+.3f})"


def _feedback_sparse(data: dict, cfg: Config) -> tuple[bool, str] | None:
    t = data["traffic"]
    if t["turns"] < 100:
        return NO_DATA
    return t["explicit_share"] < 0.02, f"{t['turns_with_explicit']} of {t['turns']} turns ({t['explicit_share']:.1%}) have thumbs, rating or correction"


def _coverage_low(data: dict, cfg: Config) -> tuple[bool, str] | None:
    c = data["coverage"]
    if not c or c.get("share_covered") is None:
        return NO_DATA
    return c["share_covered"] < 0.8, f"{c['version_id']} covers {c['share_covered']:.1%} of recent questions"


def _challengers_lose(data: dict, cfg: Config) -> tuple[bool, str] | None:
    final = data["experiments"]["final"]
    if len(final) < 2:
        return NO_DATA
    actions = [f"{d['experiment_id']} {d['action']}" for d in final]
    return not any(d["action"] == "promote" for d in final), f"final decisions: {', '.join(actions)}"


def _srm(data: dict, cfg: Config) -> tuple[bool, str] | None:
    e = data["experiments"]
    if not e["final"]:
        return NO_DATA
    return e["srm"] > 0, f"{e['srm']} of {len(e['final'])} final decision(s) flagged a sample-ratio mismatch"


def _filter_dominant(data: dict, cfg: Config) -> tuple[bool, str] | None:
    snaps = data["data"]["snapshots"]
    if not snaps:
        return NO_DATA
    s = snaps[-1]
    # The reward threshold drops every turn nobody reacted to, by design; judge the other filters.
    filters = [f for f in s["filters"] if f["reason"] != REWARD_GATE_REASON and f["in"] > 0]
    if not filters:
        return False, f"{s['snapshot_id']}: no filter besides the reward threshold removed anything"
    worst = max(filters, key=lambda f: (f["removed"] / f["in"], f["filter"]))
    share = worst["removed"] / worst["in"]
    return share > 0.5, (f"{s['snapshot_id']}: '{worst['filter']}' removed {worst['removed']} of the {worst['in']} "
                         f"rows that reached it ({share:.0%})")


def _snapshot_small(data: dict, cfg: Config) -> tuple[bool, str] | None:
    snaps = data["data"]["snapshots"]
    if not snaps:
        return NO_DATA
    s = snaps[-1]
    n = int(s["counts"].get("sft_train", 0))
    return n < 100, f"{s['snapshot_id']}: {n} SFT training rows (curation.sft_min_reward = {cfg.curation.sft_min_reward:g})"


def _no_new_model(data: dict, cfg: Config) -> tuple[bool, str] | None:
    if not data["traffic"]["turns"]:
        return NO_DATA
    n = data["versions"]["models_in_window"]
    return n == 0, f"{n} model version(s) registered in the window"


def _jobs_failing(data: dict, cfg: Config) -> tuple[bool, str] | None:
    j = data["jobs"]
    if not j["runs"]:
        return NO_DATA
    failed = j["failed_last"]
    return bool(failed), (f"last run failed: {', '.join(f['tier'] + ' (' + f['run_id'] + ')' for f in failed)}"
                          if failed else "every tier's last run succeeded")


RULES: tuple[Rule, ...] = (
    Rule("retention_down", "general-skill retention fell over the last 3 evaluated versions",
         "raise the replay ratio (curation.replay_fraction, e.g. +0.05) so general skills are rehearsed; "
         "check that curation.replay_path holds general data", _retention_down),
    Rule("retention_below_gate", "the newest version's retention is below the eval.min_retention gate",
         "raise the replay ratio, or train more gently (lower sft.learning_rate or sft.epochs)", _retention_below_gate),
    Rule("domain_flat", "domain score flat for two cycles (gain < 0.01 in each of the last two retrains)",
         "consider a larger base model (base.path), or more and better data (see the curation funnel)", _domain_flat),
    Rule("reward_down", "mean reward of the last 3 weeks is 0.1 or more below the first 3 weeks",
         "find what changed in those weeks (promotions, knowledge versions) and consider `kaizen rollback`", _reward_down),
    Rule("feedback_sparse", "fewer than 2% of turns carry explicit feedback (with 100+ turns)",
         "make feedback easier to give (widget placement, ask for a rating); curated data stays thin otherwise",
         _feedback_sparse),
    Rule("coverage_low", "the knowledge base covers under 80% of recent questions",
         "write documents for the top uncovered topics (section 6)", _coverage_low),
    Rule("challengers_lose", "two or more experiments ended this quarter and none promoted the challenger",
         "check that the evaluation gates predict the A/B metric; tighten curation (sft_min_reward, pair_margin)",
         _challengers_lose),
    Rule("srm", "an experiment stopped on a sample-ratio mismatch",
         "investigate assignment and logging before trusting further experiments", _srm),
    Rule("filter_dominant", "a curation filter (besides the reward threshold) removed more than half of the rows "
         "reaching it in the newest snapshot",
         "check that filter's threshold in [curation]; it may be discarding good data", _filter_dominant),
    Rule("snapshot_small", "the newest snapshot has fewer than 100 SFT training rows",
         "lower curation.sft_min_reward or widen curation.window_days, or collect more feedback", _snapshot_small),
    Rule("no_new_model", "no model version was registered in the window although there was traffic",
         "check the monthly tier (`kaizen jobs list`) and its logs", _no_new_model),
    Rule("jobs_failing", "a tier's last run in the window failed",
         "read that run's log (`kaizen jobs list` shows it) and rerun it with `kaizen jobs run TIER`", _jobs_failing),
)


def recommend(data: dict, cfg: Config) -> list[dict]:
    """Every rule, evaluated: {rule, condition, recommendation, fired (True/False/None = no data), numbers}."""
    out = []
    for rule in RULES:
        result = rule.check(data, cfg)
        fired, numbers = (None, "") if result is None else result
        out.append({"rule": rule.name, "condition": rule.condition, "recommendation": rule.recommendation,
                    "fired": fired, "numbers": numbers})
    return out


# ---------------------------------------------------------------- plots


def make_plots(data: dict, out_dir: Path) -> dict[str, str]:
    """PNG files for the sections that have data: {plot name: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    for name in PLOT_NAMES:  # a rerun into the same folder must not keep plots of data now gone
        (out_dir / f"{name}.png").unlink(missing_ok=True)

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=90)
        plt.close(fig)
        plots[name] = f"{name}.png"

    weeks = data["traffic"]["weeks"]
    if weeks:
        x = [w["week"][5:] for w in weeks]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(x, [w["turns"] for w in weeks], color="#9ecae1", label="turns")
        ax.set_ylabel("turns per week")
        ax.tick_params(axis="x", rotation=60)
        ax2 = ax.twinx()
        ax2.plot(x, [w["mean_reward"] if w["mean_reward"] is not None else float("nan") for w in weeks],
                 color="#d62728", marker="o", label="mean reward")
        ax2.set_ylim(-1, 1)
        ax2.set_ylabel("mean reward")
        ax.set_title("Traffic and reward per week")
        save(fig, "traffic_reward")
    models = [v for v in data["versions"]["models"] if v["domain"] is not None or v["retention"] is not None]
    if models:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ids = [v["version_id"] for v in models]
        for concept, color in (("domain", "#1f77b4"), ("retention", "#2ca02c"), ("refusal", "#9467bd")):
            ys = [v[concept] if v[concept] is not None else float("nan") for v in models]
            if any(y == y for y in ys):
                ax.plot(ids, ys, marker="o", color=color, label=concept)
        ax.set_title("Evaluations per model version")
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
        save(fig, "evaluations")
    retained = [v for v in data["versions"]["models"] if v["retention"] is not None and v["kind"] != "base"]
    if retained:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot([v["version_id"] for v in retained], [1 - v["retention"] for v in retained], marker="o",
                color="#ff7f0e", label="forgetting = 1 - retention")
        ax.axhline(1 - data["gates"]["min_retention"], color="grey", linestyle="--", label="gate (1 - min_retention)")
        ax.set_title("Forgetting over time")
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
        save(fig, "forgetting")
    snaps = data["data"]["snapshots"]
    if snaps:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        bottom = [0] * len(snaps)
        labels = [s["snapshot_id"][:11] for s in snaps]
        for table in ("sft_train", "sft_eval", "dpo_train", "dpo_eval"):
            vals = [int(s["counts"].get(table, 0)) for s in snaps]
            ax.bar(labels, vals, bottom=bottom, label=table)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_title("Dataset snapshots (rows)")
        ax.legend()
        save(fig, "snapshots")
    removals = data["data"]["removals"][:12]
    if removals:
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(removals) + 1.2))
        ax.barh([r["filter"] for r in reversed(removals)], [r["removed"] for r in reversed(removals)], color="#8c564b")
        ax.set_title("Removed by each curation filter")
        save(fig, "filters")
    return plots


# ---------------------------------------------------------------- Markdown


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _cell(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v) or "–"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _img(plots: dict, name: str, caption: str) -> list[str]:
    return [f"![{caption}]({plots[name]})", ""] if name in plots else []


def render(data: dict, recs: list[dict], plots: dict[str, str]) -> str:
    w = data["window"]
    t = data["traffic"]
    fired = [r for r in recs if r["fired"]]
    lines = [f"# kaizenlm review: {w['since'][:10]} to {w['until'][:10]}", "",
             f"Window: turns with `{w['since']}` <= ts < `{w['until']}`. Generated {data['generated_at']}.", "",
             "## Summary", "",
             f"- {t['turns']} turns from {t.get('users', 0)} users; mean reward "
             f"{_cell(t.get('mean_reward'))} over turns with feedback.",
             f"- {data['versions']['models_in_window']} model version(s) registered; "
             f"{len(data['experiments']['alias_moves'])} alias move(s).",
             f"- {len(fired)} recommendation(s), see section 8.", ""]
    lines += _render_traffic(data, plots)
    lines += _render_experiments(data)
    lines += _render_versions(data, plots)
    lines += _render_forgetting(data, plots)
    lines += _render_data(data, plots)
    lines += _render_topics(data)
    lines += _render_jobs(data)
    lines += _render_recommendations(recs)
    return "\n".join(lines).rstrip() + "\n"


def _render_traffic(data: dict, plots: dict) -> list[str]:
    t = data["traffic"]
    lines = ["## 1. Traffic and reward trends", ""]
    if not t["turns"]:
        return lines + ["No turns in this window yet. Send traffic through the gateway (or `kaizen demo`), "
                        "or review another window with `--since`/`--until`.", ""]
    source = ("per-turn reward from explicit and implicit feedback (kaizenlm.feedback.rewards)"
              if t["reward_source"] == "rewards" else "reward from thumbs and ratings only (rewards module unavailable)")
    lines += [f"{t['turns']} turns, {t['users']} users, {t['conversations']} conversations, {t['feedback']} feedback "
              f"events, {t['signals']} signals. {t['turns_with_feedback']} turns have feedback; "
              f"{t['turns_with_explicit']} ({t['explicit_share']:.1%}) explicit. Mean reward "
              f"{_cell(t['mean_reward'])}; {source}.", ""]
    lines += _img(plots, "traffic_reward", "turns and mean reward per week")
    lines += [_table(t["weeks"], [("week", "week (Mon)"), ("turns", "turns"), ("users", "users"),
                                  ("feedback", "feedback"), ("thumbs_up", "👍"), ("thumbs_down", "👎"),
                                  ("mean_rating", "mean rating"), ("signals", "signals"),
                                  ("explicit_share", "explicit share"), ("mean_reward", "mean reward")]), ""]
    lines += ["By serving model version:", "",
              _table(t["by_model_version"], [("model_version", "model version"), ("turns", "turns"),
                                             ("mean_reward", "mean reward")]), ""]
    if data["topics"]:
        lines += ["By topic (most traffic first):", "",
                  _table(data["topics"], [("topic", "topic"), ("turns", "turns"), ("mean_reward", "mean reward")]), ""]
    return lines


def _render_experiments(data: dict) -> list[str]:
    e = data["experiments"]
    lines = ["## 2. Experiments and decisions", ""]
    if e["experiments"]:
        counts = ", ".join(f"{a}: {n}" for a, n in sorted(e["by_action"].items())) or "none"
        lines += [f"{len(e['experiments'])} experiment(s) ran during the window; {e['looks']} analyses ({counts}).",
                  "Effect = challenger minus champion on the primary metric, with its always-valid CI, at the "
                  "latest analysis in the window.", "",
                  _table(e["experiments"], [("experiment_id", "experiment"), ("champion", "champion"),
                                            ("challenger", "challenger"), ("split", "split"), ("started", "started"),
                                            ("ended", "ended"), ("status", "status"), ("action", "latest decision"),
                                            ("effect", "effect"), ("ci_low", "CI low"), ("ci_high", "CI high"),
                                            ("n_champion", "n champion"), ("n_challenger", "n challenger")]), ""]
    else:
        lines += ["No A/B experiment ran during this window. The monthly tier starts one for each new candidate; "
                  "an operator can start one through the A/B admin API.", ""]
    if e["final"]:
        lines += ["Decisions that ended an experiment:", "",
                  _table(e["final"], [("ts", "time (UTC)"), ("experiment_id", "experiment"), ("action", "action"),
                                      ("reason", "reason")]), ""]
    if e["alias_moves"]:
        lines += ["Alias moves (promotions, tags, rollbacks):", "",
                  _table(e["alias_moves"], [("ts", "time (UTC)"), ("alias", "alias"), ("from_version", "from"),
                                            ("to_version", "to"), ("action", "action"), ("reason", "reason"),
                                            ("actor", "actor")]), ""]
    else:
        lines += ["No alias moved in this window: the champion stayed. Promote with `kaizen registry promote`, "
                  "or let an A/B decision do it.", ""]
    return lines


def _render_versions(data: dict, plots: dict) -> list[str]:
    v = data["versions"]
    lines = ["## 3. Model versions and evaluations", ""]
    if not v["models"]:
        return lines + ["No model version registered yet. Build the base model (`kaizen base build`) and let the "
                        "monthly tier retrain (`kaizen jobs run monthly`).", ""]
    lines += [f"{v['models_in_window']} version(s) registered in the window; up to {CONTEXT_VERSIONS} earlier "
              "ones are shown for the trend.", ""]
    lines += _img(plots, "evaluations", "evaluation scores per model version")
    lines += [_table(v["models"], [("version_id", "version"), ("kind", "kind"), ("created_at", "created"),
                                   ("in_window", "in window"), ("status", "status"), ("aliases", "aliases"),
                                   ("domain", "domain"), ("retention", "retention"), ("general", "general"),
                                   ("refusal", "refusal"), ("snapshot_id", "snapshot")]), ""]
    if not any(m["domain"] is not None or m["retention"] is not None for m in v["models"]):
        lines += ["No evaluation numbers recorded on these versions yet: the monthly tier's evaluate step "
                  "writes domain_score, retention and refusal_rate into the version's metrics.", ""]
    return lines


def _render_forgetting(data: dict, plots: dict) -> list[str]:
    retained = [m for m in data["versions"]["models"] if m["retention"] is not None and m["kind"] != "base"]
    lines = ["## 4. Forgetting over time", ""]
    if not retained:
        return lines + ["No retention measured yet: forgetting is 1 - retention (general-skill score relative to "
                        "the reference), measured by the monthly evaluation on the general-skills set.", ""]
    gate = data["gates"]["min_retention"]
    lines += [f"Forgetting = 1 - retention; the gate allows at most {1 - gate:.3f} (eval.min_retention = {gate:g}).",
              ""]
    lines += _img(plots, "forgetting", "forgetting per model version")
    rows = [{**m, "forgetting": _round(1 - m["retention"])} for m in retained]
    lines += [_table(rows, [("version_id", "version"), ("created_at", "created"), ("retention", "retention"),
                            ("forgetting", "forgetting"), ("retention_source", "from")]), ""]
    return lines


def _render_data(data: dict, plots: dict) -> list[str]:
    d = data["data"]
    landed = d["landed"]
    lines = ["## 5. Data volumes and curation filters", "",
             f"Landed in the window: {landed['turns']} turns, {landed['feedback']} feedback events, "
             f"{landed['signals']} signals; {landed['dlq']} messages went to the dead-letter queue.", ""]
    if not d["snapshots"]:
        return lines + ["No dataset snapshot was built in this window. `kaizen dataset build` (or the monthly tier) "
                        "builds one; its curation funnel then shows here.", ""]
    rows = [{"snapshot_id": s["snapshot_id"], "created": s["created"], "candidate_turns": s["candidate_turns"],
             **{k: s["counts"].get(k) for k in ("sft_train", "sft_eval", "dpo_train", "dpo_eval")}} for s in d["snapshots"]]
    lines += _img(plots, "snapshots", "rows per dataset snapshot")
    lines += [_table(rows, [("snapshot_id", "snapshot"), ("created", "created"), ("candidate_turns", "candidate turns"),
                            ("sft_train", "sft train"), ("sft_eval", "sft eval"), ("dpo_train", "dpo train"),
                            ("dpo_eval", "dpo eval")]), ""]
    if d["removals"]:
        lines += ["What each filter removed (summed over the window's snapshots):", ""]
        lines += _img(plots, "filters", "rows removed per curation filter")
        lines += [_table(d["removals"], [("filter", "output: step / reason"), ("removed", "removed")]), ""]
    return lines


def _render_topics(data: dict) -> list[str]:
    c = data["coverage"]
    lines = ["## 6. Top uncovered topics", ""]
    if c is None:
        return lines + ["No knowledge version yet. The weekly tier (`kaizen jobs run weekly` or "
                        "`kaizen knowledge refresh`) builds one with a coverage report of recent questions.", ""]
    share = "unknown" if c.get("share_covered") is None else f"{c['share_covered']:.1%}"
    lines += [f"{c['version_id']} covers {share} of {c.get('n') or 0} recent questions "
              f"(best chunk similarity >= {c.get('threshold', '?')}).", ""]
    if c.get("missing"):
        return lines + [f"Its coverage report {c['missing']} is missing; the next weekly refresh writes one.", ""]
    if not c["clusters"]:
        return lines + ["No uncovered questions: every recent question found a matching chunk.", ""]
    rows = [{"rank": i + 1, "size": cl["size"], "examples": " / ".join(cl["examples"]),
             "nearest": cl["nearest_doc_id"], "score": cl["nearest_score"]} for i, cl in enumerate(c["clusters"])]
    lines += [_table(rows, [("rank", "#"), ("size", "questions"), ("examples", "examples"),
                            ("nearest", "nearest document"), ("score", "similarity")]), ""]
    return lines


def _render_jobs(data: dict) -> list[str]:
    j = data["jobs"]
    lines = ["## 7. Scheduled jobs", ""]
    if not j["runs"]:
        return lines + ["No scheduled run in this window. The controller runs the tiers on their crons "
                        "([schedule] in kaizen.toml); `kaizen jobs list` shows them.", ""]
    lines += [_table(j["runs"], [("tier", "tier"), ("status", "status"), ("runs", "runs"),
                                 ("mean_duration_s", "mean duration (s)")]), ""]
    for f in j["failed_last"]:
        lines += [f"- {f['tier']}: last run {f['run_id']} failed: {f['error']} (log: {f['log_path']})"]
    return lines + ([""] if j["failed_last"] else [])


def _render_recommendations(recs: list[dict]) -> list[str]:
    fired = [r for r in recs if r["fired"]]
    quiet = [r for r in recs if r["fired"] is False]
    unknown = [r for r in recs if r["fired"] is None]
    lines = ["## 8. Recommendations", ""]
    if fired:
        lines += [_table(fired, [("condition", "condition"), ("numbers", "numbers"),
                                 ("recommendation", "recommendation")]), ""]
    else:
        lines += ["No rule fired: nothing in this window calls for a change.", ""]
    if quiet:
        lines += ["Checked, did not fire:", ""] + [f"- {r['condition']}: {r['numbers']}" for r in quiet] + [""]
    if unknown:
        lines += ["Not enough data to check: " + "; ".join(r["condition"] for r in unknown) + ".", ""]
    return lines


# ---------------------------------------------------------------- entry point


def write_review(con: duckdb.DuckDBPyConnection, cfg: Config, since: datetime | None = None,
                 until: datetime | None = None, out_dir: str | Path | None = None) -> Path:
    """Collect, plot and render the review of [since, until) (default: the last calendar quarter).

    Writes report.md, review.json and the PNGs into out_dir (default
    $KAIZEN_HOME/reviews/<today>/); returns the path of report.md.
    """
    now = datetime.now(UTC)
    if since is None or until is None:
        default_since, default_until = last_quarter(now)
        since, until = since or default_since, until or default_until
    out = Path(out_dir).expanduser() if out_dir else cfg.home / "reviews" / now.strftime("%Y-%m-%d")
    out.mkdir(parents=True, exist_ok=True)
    data = collect(con, cfg, since, until)
    recs = recommend(data, cfg)
    plots = make_plots(data, out)
    (out / "review.json").write_text(json.dumps({**data, "recommendations": recs, "plots": plots}, indent=2,
                                                default=_json_value) + "\n", encoding="utf-8")
    report = out / "report.md"
    report.write_text(render(data, recs, plots), encoding="utf-8")
    return report


def run_quarterly(ctx) -> dict:
    """The scheduler's quarterly tier: the review report over the calendar quarter before the
    fire time (ctx: kaizenlm.jobs.scheduler.JobContext)."""
    since, until = last_quarter(ctx.scheduled_for or ctx.started_at)
    ctx.progress(0.1, f"review {since.date()} .. {until.date()}")
    path = write_review(ctx.db, ctx.cfg, since, until)
    ctx.log.info("review written to %s", path)
    return {"report": str(path), "since": since.isoformat(), "until": until.isoformat()}
