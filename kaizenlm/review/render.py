"""The review's Markdown: `render(data, recommendations, plots)` -> report.md, one section per topic."""

from __future__ import annotations

from kaizenlm.review.collect import CONTEXT_VERSIONS, _round


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
    source = "per-turn reward from explicit and implicit feedback (kaizenlm.feedback.rewards)"
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
