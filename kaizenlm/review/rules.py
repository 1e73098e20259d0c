"""The review's recommendations: RULES evaluated on the collected numbers.

Each `Rule` has a condition, a recommendation and a check that returns (fired, the numbers it
looked at), or None when the data cannot decide; `recommend(data, cfg)` evaluates them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kaizenlm.config import Config

REWARD_GATE_REASON = "low_reward"  # curation's 'answers' step: reward below curation.sft_min_reward


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
