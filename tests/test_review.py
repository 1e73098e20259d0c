"""Quarterly review: a DuckDB file seeded over Q1 2025 -> report.md with every section and
the right numbers, valid PNGs, rule-based recommendations on crafted data; an empty
database gets a 'no data yet' sentence per section; `kaizen review`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from kaizenlm import config as config_mod
from kaizenlm.cli import main
from kaizenlm.ingest.store import connect
from kaizenlm.jobs import history
from kaizenlm.review.collect import metric
from kaizenlm.review.report import last_quarter, resolve_window, write_review

SINCE, UNTIL = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add_turn(con, turn_id: str, ts: datetime, user: str, model_version: str = "adapter-0001", topic=None) -> None:
    con.execute(
        "INSERT INTO turns (event_id, ts, turn_id, conversation_id, user_id, model_version, messages, prompt, response, "
        "topic) VALUES (?, ?, ?, ?, ?, ?, '[]', 'q', 'a', ?)",
        [f"e-{turn_id}", ts, turn_id, f"c-{turn_id}", user, model_version, topic])


def add_thumbs(con, turn_id: str, ts: datetime, thumbs: int) -> None:
    con.execute("INSERT INTO feedback (event_id, ts, turn_id, thumbs) VALUES (?, ?, ?, ?)",
                [f"f-{turn_id}", ts, turn_id, thumbs])


def add_version(con, version_id: str, created: datetime, metrics: dict, parent=None, artifact_dir="/nowhere") -> None:
    kind, seq = version_id.rsplit("-", 1)
    con.execute(
        "INSERT INTO model_versions (version_id, kind, seq, parent_id, status, config, metrics, artifact_dir, "
        "artifact_hash, created_at) VALUES (?, ?, ?, ?, 'candidate', '{}', ?, ?, 'h', ?)",
        [version_id, kind, int(seq), parent, json.dumps(metrics), artifact_dir, created])


def seed_quarter(con, tmp_path) -> None:
    """12 weekly batches of 10 turns; rewards fall from +0.36 to -0.36 half-way; five adapters whose
    retention falls and whose domain score stalls; a snapshot; a knowledge version with coverage."""
    for week in range(12):
        monday = at(2025, 1, 6, 10) + timedelta(weeks=week)
        ups = 4 if week < 6 else 1
        for i in range(10):
            turn_id = f"t{week:02d}-{i}"
            add_turn(con, turn_id, monday + timedelta(minutes=i), f"u{i % 5}", topic="billing" if i < 3 else None)
            if i < 5:  # half the turns get a thumb: `ups` up, the rest down
                add_thumbs(con, turn_id, monday + timedelta(minutes=i, seconds=30), 1 if i < ups else -1)
    add_turn(con, "before", at(2024, 12, 20), "u9")  # outside the window
    add_turn(con, "after", at(2025, 4, 2), "u9")

    add_version(con, "base-0001", at(2024, 10, 1), {"general_score": 0.80, "domain_score": 0.30})
    add_version(con, "adapter-0001", at(2024, 12, 1), {"domain_score": 0.60, "retention": 0.99}, "base-0001")
    add_version(con, "adapter-0002", at(2025, 1, 31), {"eval": {"domain_score": 0.605, "retention": 0.97}}, "adapter-0001")
    add_version(con, "adapter-0003", at(2025, 2, 28), {"domain_score": 0.61, "retention": 0.95}, "adapter-0002")
    add_version(con, "adapter-0004", at(2025, 3, 31), {"domain_score": 0.612, "general_score": 0.736}, "adapter-0003")

    kdir = tmp_path / "k1"
    kdir.mkdir()
    (kdir / "coverage.json").write_text(json.dumps({
        "share_covered": 0.62, "n": 50, "n_covered": 31, "threshold": 0.3,
        "uncovered_clusters": [
            {"size": 9, "examples": ["How do I export invoices to CSV?", "export invoices csv"],
             "nearest_doc_id": "billing-faq", "nearest_score": 0.21},
            {"size": 4, "examples": ["Can I change my username?"], "nearest_doc_id": "account", "nearest_score": 0.18},
        ]}))
    add_version(con, "knowledge-0001", at(2025, 3, 3), {"coverage": 0.62, "chunks": 40}, artifact_dir=str(kdir))

    manifest = {"curation": {"turns": 123, "steps": {  # the shape of kaizenlm.datasets.curation.Funnel
        "candidates": [{"step": "context", "in": 123, "out": 120, "dropped": {"context_too_long": 3}}],
        "sft": [{"step": "answers", "in": 120, "out": 50, "dropped": {"low_reward": 70}},
                {"step": "deduplicate", "in": 50, "out": 40, "dropped": {"near_duplicate": 10}}],
        "dpo": [{"step": "pairs", "in": 40, "out": 40},
                {"step": "per_prompt_cap", "in": 40, "out": 10, "dropped": {"cluster_over_cap": 30}}]}}}
    con.execute(
        "INSERT INTO dataset_snapshots (snapshot_id, content_hash, created_at, as_of, path, counts, manifest) "
        "VALUES ('ds-aaaa', 'h', ?, ?, '/s', ?, ?)",
        [at(2025, 3, 1), at(2025, 3, 1),
         json.dumps({"sft_train": 40, "sft_eval": 2, "dpo_train": 10, "dpo_eval": 1}), json.dumps(manifest)])
    con.execute("INSERT INTO aliases (name, version_id) VALUES ('champion', 'adapter-0003')")
    con.execute("INSERT INTO alias_history (alias, from_version, to_version, action, reason, actor, ts) VALUES "
                "('champion', 'adapter-0002', 'adapter-0003', 'set', 'won A/B', 'abtest', ?)", [at(2025, 3, 10)])
    history.record_start(con, history.JobRun("weekly-1", "weekly", "schedule", "running", 1, at(2025, 3, 3, 3),
                                             at(2025, 3, 3, 3), log_path="/logs/weekly-1.log"))
    history.record_finish(con, "weekly-1", "failed", at(2025, 3, 3, 3, 1), 60.0, error="RuntimeError: no docs")


def seed_experiments(con) -> None:
    """Two experiments of the quarter (migration 5 tables), one ended on a guardrail, one on an SRM."""
    con.execute(
        "INSERT INTO experiments (experiment_id, alias, champion, challenger, split, config, status, started_at, "
        "ended_at, end_reason, actor) VALUES "
        "('exp-1', 'champion', 'adapter-0001', 'adapter-0002', 0.5, '{}', 'rolled_back', ?, ?, 'guardrail', 'ab'), "
        "('exp-2', 'champion', 'adapter-0001', 'adapter-0003', 0.5, '{}', 'ended', ?, ?, 'srm', 'ab'), "
        "('exp-old', 'champion', 'base-0001', 'adapter-0001', 0.5, '{}', 'ended', ?, ?, 'promote', 'ab')",
        [at(2025, 2, 1), at(2025, 2, 9), at(2025, 3, 1), at(2025, 3, 9), at(2024, 11, 1), at(2024, 12, 1)])
    looks = [("exp-1", at(2025, 2, 2), "continue", "collecting data", {"n_champion": 10, "n_challenger": 9}, []),
             ("exp-1", at(2025, 2, 9), "rollback", "guardrail breached: latency_p95",
              {"n_champion": 150, "n_challenger": 140, "primary": {"effect": -0.05, "ci_low": -0.2, "ci_high": 0.1}}, []),
             ("exp-2", at(2025, 3, 9), "keep_champion", "sample-ratio mismatch: counts [10, 30]",
              {"n_champion": 110, "n_challenger": 330, "primary": {"effect": 0.02, "ci_low": -0.1, "ci_high": 0.14}},
              ["srm"])]
    for exp, ts, action, reason, numbers, warnings in looks:
        con.execute("INSERT INTO experiment_decisions (experiment_id, ts, action, reason, numbers, warnings, applied, "
                    "actor) VALUES (?, ?, ?, ?, ?, ?, '{}', 'ab')",
                    [exp, ts, action, reason, json.dumps(numbers), json.dumps(warnings)])


@pytest.fixture
def cfg(tmp_path):
    return config_mod.from_dict({"paths": {"home": str(tmp_path / "home")}})


@pytest.fixture
def con(cfg):
    c = connect(cfg.duckdb_path)
    yield c
    c.close()


def section(report: str, number: int) -> str:
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", report, flags=re.S | re.M)
    assert match, f"section {number} missing"
    return match.group(0)


def test_windows():
    assert last_quarter(at(2025, 4, 1, 5)) == (at(2025, 1, 1), at(2025, 4, 1))
    assert last_quarter(at(2025, 2, 15)) == (at(2024, 10, 1), at(2025, 1, 1))
    assert resolve_window("2025-01-01", "2025-02-01", at(2025, 6, 1)) == (at(2025, 1, 1), at(2025, 2, 1))
    assert resolve_window(None, "2025-04-01", at(2025, 6, 1)) == (at(2025, 1, 1), at(2025, 4, 1))
    with pytest.raises(ValueError, match="not before"):
        resolve_window("2025-03-01", "2025-02-01", at(2025, 6, 1))
    with pytest.raises(ValueError, match="ISO 8601"):
        resolve_window("last tuesday", None, at(2025, 6, 1))
    assert metric({"eval": {"domain_score": 0.5}}, "domain") == 0.5 and metric({"exam": True}, "domain") is None


def test_report_sections_numbers_and_plots(cfg, con, tmp_path):
    seed_quarter(con, tmp_path)
    seed_experiments(con)
    path = write_review(con, cfg, SINCE, UNTIL, out_dir=tmp_path / "review")
    report = path.read_text()
    data = json.loads((path.parent / "review.json").read_text())
    assert report.startswith("# kaizenlm review: 2025-01-01 to 2025-04-01")

    traffic = section(report, 1)
    t = data["traffic"]
    assert (t["turns"], t["users"], t["feedback"], t["turns_with_explicit"]) == (120, 5, 60, 60)
    assert t["reward_source"] == "rewards"  # thumbs weigh 0.6 in [rewards]
    assert t["weeks"][0] == {"week": "2025-01-06", "turns": 10, "users": 5, "conversations": 10, "feedback": 5,
                             "thumbs_up": 4, "thumbs_down": 1, "mean_rating": None, "signals": 0,
                             "explicit_share": 0.5, "mean_reward": 0.36}
    assert t["weeks"][-1]["week"] == "2025-03-24" and t["weeks"][-1]["mean_reward"] == -0.36
    assert t["mean_reward"] == 0.0 and len(t["weeks"]) == 12
    assert "120 turns, 5 users, 10 conversations" not in traffic  # conversations are per turn here
    assert "120 turns, 5 users, 120 conversations, 60 feedback events" in traffic
    assert "| 2025-01-06 | 10 | 5 | 5 | 4 | 1 | – | 0 | 0.500 | 0.360 |" in traffic
    # billing = turns 0-2 of each week: 18 up in weeks 0-5; 6 up, 12 down in weeks 6-11 -> 7.2 / 36
    assert data["topics"] == [{"topic": "billing", "turns": 36, "mean_reward": pytest.approx(0.2, abs=1e-4)}]

    experiments = section(report, 2)
    assert "| 2025-03-10 00:00 | champion | adapter-0002 | adapter-0003 | set | won A/B | abtest |" in experiments
    assert "2 experiment(s) ran during the window; 3 analyses (continue: 1, keep_champion: 1, rollback: 1)" in experiments
    assert ("| exp-1 | adapter-0001 | adapter-0002 | 0.500 | 2025-02-01 | 2025-02-09 | rolled_back | rollback | -0.050 "
            "| -0.200 | 0.100 | 150 | 140 |") in experiments
    assert "| 2025-03-09 00:00 | exp-2 | keep_champion | sample-ratio mismatch: counts [10, 30] |" in experiments

    versions = section(report, 3)
    shown = [v["version_id"] for v in data["versions"]["models"]]
    assert shown == ["base-0001", "adapter-0001", "adapter-0002", "adapter-0003", "adapter-0004"]
    assert data["versions"]["models_in_window"] == 3
    assert "| adapter-0003 | adapter | 2025-02-28 | yes | candidate | champion | 0.610 | 0.950 |" in versions
    assert data["versions"]["models"][2]["domain"] == 0.605  # read from nested metrics

    forgetting = section(report, 4)
    a4 = data["versions"]["models"][-1]
    assert a4["retention"] == 0.92 and a4["retention_source"] == "general_score / base-0001"
    assert "| adapter-0004 | 2025-03-31 | 0.920 | 0.080 | general_score / base-0001 |" in forgetting

    volumes = section(report, 5)
    assert data["data"]["landed"] == {"turns": 120, "feedback": 60, "signals": 0, "dlq": 0}
    assert "| ds-aaaa | 2025-03-01 | 123 | 40 | 2 | 10 | 1 |" in volumes
    assert [(r["filter"], r["removed"]) for r in data["data"]["removals"]] == [
        ("sft: answers / low_reward", 70), ("dpo: per_prompt_cap / cluster_over_cap", 30),
        ("sft: deduplicate / near_duplicate", 10), ("candidates: context / context_too_long", 3)]
    assert "| sft: answers / low_reward | 70 |" in volumes

    topics = section(report, 6)
    assert "knowledge-0001 covers 62.0% of 50 recent questions" in topics
    assert "| 1 | 9 | How do I export invoices to CSV? / export invoices csv | billing-faq | 0.210 |" in topics

    jobs = section(report, 7)
    assert "weekly: last run weekly-1 failed: RuntimeError: no docs" in jobs

    recs = {r["rule"]: r for r in data["recommendations"]}
    fired = {name for name, r in recs.items() if r["fired"]}
    assert fired == {"retention_down", "retention_below_gate", "domain_flat", "reward_down", "coverage_low",
                     "filter_dominant", "snapshot_small", "jobs_failing", "challengers_lose", "srm"}
    assert recs["filter_dominant"]["numbers"] == ("ds-aaaa: 'dpo: per_prompt_cap / cluster_over_cap' removed 30 of "
                                                  "the 40 rows that reached it (75%)")
    assert recs["srm"]["numbers"] == "1 of 2 final decision(s) flagged a sample-ratio mismatch"
    assert recs["retention_down"]["numbers"] == ("retention adapter-0002 0.970 -> adapter-0003 0.950 -> "
                                                 "adapter-0004 0.920; curation.replay_fraction = 0.08")
    assert recs["domain_flat"]["numbers"].endswith("gains per cycle +0.005, +0.002 (flat: < +0.010)")
    assert recs["reward_down"]["numbers"] == "mean reward first 3 weeks +0.360, last 3 weeks -0.360 (-0.720)"
    assert recs["feedback_sparse"]["fired"] is False and recs["no_new_model"]["fired"] is False
    advice = section(report, 8)
    assert "raise the replay ratio" in advice and "consider a larger base model" in advice
    assert "retention adapter-0002 0.970 -> adapter-0003 0.950 -> adapter-0004 0.920" in advice

    assert set(data["plots"]) == {"traffic_reward", "evaluations", "forgetting", "snapshots", "filters"}
    for name in data["plots"].values():
        assert f"]({name})" in report
        with Image.open(path.parent / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 100
            img.verify()


def test_no_rule_fires_on_a_healthy_quarter(cfg, con, tmp_path):
    for i in range(30):
        add_turn(con, f"t{i}", at(2025, 2, 3, 9) + timedelta(days=i % 7, minutes=i), f"u{i % 3}")
        add_thumbs(con, f"t{i}", at(2025, 2, 3, 10) + timedelta(days=i % 7, minutes=i), 1)
    add_version(con, "base-0001", at(2024, 10, 1), {"general_score": 0.8})
    add_version(con, "adapter-0001", at(2025, 1, 10), {"domain_score": 0.5, "retention": 0.99}, "base-0001")
    add_version(con, "adapter-0002", at(2025, 2, 10), {"domain_score": 0.6, "retention": 0.995}, "adapter-0001")
    add_version(con, "adapter-0003", at(2025, 3, 10), {"domain_score": 0.7, "retention": 0.999}, "adapter-0002")
    path = write_review(con, cfg, SINCE, UNTIL, out_dir=tmp_path / "r")
    data = json.loads((path.parent / "review.json").read_text())
    assert [r["rule"] for r in data["recommendations"] if r["fired"]] == []
    assert "No rule fired" in section(path.read_text(), 8)


def test_empty_database_says_what_to_do_in_every_section(cfg, con):
    path = write_review(con, cfg, SINCE, UNTIL)
    assert path == cfg.home / "reviews" / datetime.now(UTC).strftime("%Y-%m-%d") / "report.md"
    report = path.read_text()
    assert "No turns in this window yet" in section(report, 1)
    assert "No A/B experiment ran during this window" in section(report, 2)
    assert "No alias moved in this window" in section(report, 2)
    assert "No model version registered yet" in section(report, 3)
    assert "No retention measured yet" in section(report, 4)
    assert "No dataset snapshot was built in this window" in section(report, 5)
    assert "No knowledge version yet" in section(report, 6)
    assert "No scheduled run in this window" in section(report, 7)
    assert "Not enough data to check" in section(report, 8)
    assert list(path.parent.glob("*.png")) == []


def test_cli_review(kaizen_env, capsys, tmp_path):
    cfg = config_mod.load(env=kaizen_env)
    con = connect(cfg.duckdb_path)
    seed_quarter(con, tmp_path)
    con.close()
    out = tmp_path / "cli-review"
    assert main(["review", "--since", "2025-01-01", "--until", "2025-04-01", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["report"] == str(out / "report.md") and (out / "report.md").is_file()
    assert "forgetting.png" in printed["plots"]
    assert any("raise the replay ratio" in r["recommendation"] for r in printed["recommendations"])
    assert main(["review", "--since", "2025-05-01", "--until", "2025-04-01"]) == 2
    assert "is not before" in capsys.readouterr().err
