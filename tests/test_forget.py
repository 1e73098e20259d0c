"""Right to be forgotten: `kaizen forget --user ID` deletes a user's turns, feedback and signals,
and marks the snapshots holding their data and the model versions built from those snapshots;
the dataset and forget admin API through a real controller."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from conftest import free_port
from fastapi.testclient import TestClient
from feedback_helpers import EventLog, make_config, open_store

from kaizenlm import config as config_mod
from kaizenlm.cli import main
from kaizenlm.datasets import service
from kaizenlm.datasets import snapshots as datasets
from kaizenlm.datasets.client import AdminClient
from kaizenlm.feedback.rewards import Window
from kaizenlm.registry import versions

GOOD = "Open Settings, then Billing, and choose Change plan. The new price applies from the next invoice."


def populate(log: EventLog) -> dict[str, list[str]]:
    """Three users; 'alice' rates, corrects, regenerates and leaves conversation-level signals."""
    turns: dict[str, list[str]] = {"alice": [], "bob": [], "carol": []}
    for user in turns:
        for i in range(4):
            t = log.turn(f"Question {i} from {user}: how do I change plan {i} for {user}?",
                         f"{GOOD} This is answer {i} for {user}.", user_id=user, conversation_id=f"{user}-c{i}")
            log.feedback(t, thumbs=1, user_id=user)
            log.signal("completed", conversation_id=f"{user}-c{i}", user_id=user)
            turns[user].append(t)
    wrong = log.turn("What is the refund window for alice?", "Seven days after the date of purchase.",
                     user_id="alice", conversation_id="alice-fix")
    log.feedback(wrong, correction="Thirty days after purchase, for every single plan.", user_id="alice")
    log.signal("regenerate", turn_id=wrong, user_id="alice")
    turns["alice"].append(wrong)
    # alice corrects one of bob's answers: her text sits on bob's turn
    log.feedback(turns["bob"][0], correction="Alice says: thirty days after purchase, for every plan.",
                 user_id="alice")
    return turns


@pytest.fixture
def world(tmp_path):
    cfg = make_config(tmp_path / "home", window_days=0, eval_fraction=0.0)
    con = open_store(cfg)
    log = EventLog()
    turns = populate(log)
    log.write(con)
    everything = datasets.build_snapshot(con, cfg, Window())
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "weights.bin").write_bytes(b"x")
    adapter = versions.register_version(con, "adapter", art, cfg.home, snapshot_id=everything.snapshot_id,
                                        snapshot_hash=everything.content_hash)
    child = versions.register_version(con, "adapter", art, cfg.home, parent_id=adapter.version_id)
    unrelated = versions.register_version(con, "adapter", art, cfg.home, snapshot_id="ds-0000000000000000")
    yield {"cfg": cfg, "con": con, "turns": turns, "snapshot": everything, "versions": (adapter, child, unrelated)}
    con.close()


def _count(con, table: str, where: str = "TRUE", params=()) -> int:
    return con.execute(f"SELECT count(*) FROM {table} WHERE {where}", list(params)).fetchall()[0][0]


def test_forget_deletes_the_users_rows_and_marks_what_was_built_from_them(world):
    cfg, con, turns = world["cfg"], world["con"], world["turns"]
    snap, (adapter, child, unrelated) = world["snapshot"], world["versions"]
    before = {t: _count(con, t) for t in ("turns", "feedback", "signals")}

    preview = service.forget(con, cfg, "alice", dry_run=True)
    assert preview["deleted"] == {"turns": 5, "feedback": 6, "signals": 5, "review_labels": 0, "review_assignments": 0, "review_items": 0}
    assert preview["snapshots"] == [snap.snapshot_id]
    assert preview["model_versions"] == sorted([adapter.version_id, child.version_id])
    assert {t: _count(con, t) for t in ("turns", "feedback", "signals")} == before  # a dry run changes nothing
    assert not versions.get_version(con, adapter.version_id).tainted

    report = service.forget(con, cfg, "alice")
    assert report["deleted"] == preview["deleted"] and report["snapshots"] == [snap.snapshot_id]
    assert report["model_versions"] == sorted([adapter.version_id, child.version_id])
    assert report["subject"] == service.subject_hash("alice") and "alice" not in report["subject"]
    # the rows are gone: her turns, all feedback on them, her feedback elsewhere, her signals
    assert _count(con, "turns", "user_id = 'alice'") == 0
    assert _count(con, "feedback", "user_id = 'alice' OR list_contains(?, turn_id)", [turns["alice"]]) == 0
    assert _count(con, "signals", "user_id = 'alice' OR conversation_id LIKE 'alice-%'") == 0
    # everyone else's stay
    assert _count(con, "turns") == before["turns"] - 5
    assert _count(con, "turns", "user_id = 'bob'") == 4 and _count(con, "feedback", "user_id = 'bob'") == 4
    # the snapshot is marked, on disk and in DuckDB, and refused for training
    manifest = datasets.read_manifest(snap.path)
    assert [f["subject"] for f in manifest["forgotten"]] == [report["subject"]]
    assert "alice" not in json.dumps(manifest["forgotten"])
    with pytest.raises(datasets.SnapshotError, match="forgotten"):
        datasets.open_snapshot(snap.path)
    assert service.list_snapshots(con)[0]["forgotten"] == 1
    # the versions built from it (and their descendants) are tainted; others are not
    assert versions.get_version(con, adapter.version_id).tainted and versions.get_version(con, child.version_id).tainted
    assert not versions.get_version(con, unrelated.version_id).tainted

    # a rebuild no longer holds her data
    fresh = datasets.build_snapshot(con, cfg, Window())
    assert fresh.snapshot_id != snap.snapshot_id
    assert datasets.snapshots_with_turns(cfg.snapshots_dir, turns["alice"]) == [snap.snapshot_id]
    assert "Alice says" not in json.dumps(datasets.open_snapshot(fresh.path)["dpo_train"].to_pylist())

    again = service.forget(con, cfg, "alice")
    assert again["deleted"] == {"turns": 0, "feedback": 0, "signals": 0, "review_labels": 0, "review_assignments": 0, "review_items": 0} and again["snapshots"] == []


def test_forget_covers_reviewers_copies_of_the_users_text(world):
    from kaizenlm.annotate import labels, queue, sources

    cfg, con, turns = world["cfg"], world["con"], world["turns"]
    # alice's corrected turn and bob's turn she corrected are review items; so are two of carol's answers
    fixes = sources.corrections(con)
    assert {r["turn_id"] for r in fixes} == {turns["alice"][-1], turns["bob"][0]}
    queue.enqueue(con, "correction", fixes)
    sample = [r for r in sources.sample(con, 100) if r["user_id"] == "carol"][:2]
    queue.enqueue(con, "sample", sample)
    queue.assign(con, ["rev1", "rev2"], overlap=1.0)
    for item in queue.list_items(con):
        verdict = {"verdict": "edit", "gold_answer": f"gold for {item['item_id']}"} if item["kind"] == "correction" \
            else {"verdict": "accept"}
        for who in ("rev1", "rev2"):
            labels.record_label(con, item["item_id"], who, label="correct", **verdict)
    assert _count(con, "review_items") == 4 and _count(con, "review_labels") == 8

    preview = service.forget(con, cfg, "alice", dry_run=True)
    assert (preview["deleted"]["review_items"], preview["deleted"]["review_labels"],
            preview["deleted"]["review_assignments"]) == (2, 4, 4)
    assert _count(con, "review_items") == 4  # a dry run changes nothing
    service.forget(con, cfg, "alice")
    left = con.execute("SELECT turn_id, user_id FROM review_items ORDER BY turn_id").fetchall()
    assert [u for _, u in left] == ["carol", "carol"]  # her turn and the turn with her correction are gone
    assert _count(con, "review_labels") == 4 and _count(con, "review_assignments") == 4
    assert _count(con, "review_labels", "gold_answer IS NOT NULL") == 0  # the gold answers written on her texts
    assert not con.execute("SELECT count(*) FROM review_items WHERE correction LIKE '%lice%' OR prompt LIKE '%alice%'"
                           ).fetchone()[0]


def test_forget_rejects_an_empty_user(world):
    with pytest.raises(ValueError, match="user_id is empty"):
        service.forget(world["con"], world["cfg"], "  ")


# ---------------------------------------------------------------------------------------------
# CLI, directly on the DuckDB file and through a running controller




@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAIZEN_CONFIG", raising=False)
    monkeypatch.setenv("KAIZEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAIZEN_CONTROLLER_PORT", str(free_port()))  # nobody listens there unless a test starts it
    (tmp_path / "kaizen.toml").write_text("[curation]\nwindow_days = 0\n")
    cfg = config_mod.load()
    con = open_store(cfg)
    log = EventLog()
    populate(log)
    log.write(con)
    con.close()
    return cfg


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_forget_command_on_the_duckdb_file(home, capsys):
    code, out, err = run(capsys, "dataset", "build")
    assert code == 0, err
    code, out, err = run(capsys, "forget", "--user", "alice", "--dry-run")
    assert code == 0 and out.startswith("would delete user alice: 5 turns, 6 feedback, 5 signals")
    code, out, err = run(capsys, "forget", "--user", "alice", "--json")
    report = json.loads(out)
    assert code == 0 and report["deleted"]["turns"] == 5 and len(report["snapshots"]) == 1
    code, out, _ = run(capsys, "dataset", "list")
    assert "FORGOTTEN" in out
    code, _, err = run(capsys, "forget", "--user", " ")
    assert code == 2 and "--user is empty" in err


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["forget", "--help"])
    assert exc.value.code == 0 and "kaizen forget --user" in capsys.readouterr().out


@pytest.fixture
def controller(home):
    from kaizenlm.server.controller import create_app

    app = create_app(home, start_sink=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=home.controller.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield app
    server.should_exit = True
    thread.join(timeout=15)


def test_cli_goes_through_a_running_controller(home, controller, capsys):
    assert AdminClient(home).via == "controller"  # the controller holds the DuckDB file now
    Path("exam.txt").write_text("Question 0 from carol: how do I change plan 0 for carol?\n")
    code, out, err = run(capsys, "dataset", "build", "--holdout", "exam.txt", "--json")
    assert code == 0, err
    built = json.loads(out)
    assert built["sources"]["holdout_files"] == [str(Path("exam.txt").resolve())]  # named absolutely for the controller
    assert built["curation"]["contaminated_turns"] >= 1
    code, out, _ = run(capsys, "dataset", "list", "--json")
    assert [r["snapshot_id"] for r in json.loads(out)] == [built["snapshot_id"]]
    code, out, _ = run(capsys, "dataset", "show", built["snapshot_id"][:8])
    assert code == 0 and f"snapshot {built['snapshot_id']}" in out and "pairs    correction" in out
    code, out, _ = run(capsys, "dataset", "rewards", "--json")
    # 13 turns, each with explicit feedback and a signal; bob's first (thumbs up +0.6, alice's
    # correction -0.6) nets an explicit reward of 0 and is left out; alice's corrected and
    # regenerated answer is the one negative, and its implicit reward agrees.
    calibration = json.loads(out)["calibration"]
    assert code == 0 and calibration["turns_with_both"] == 12
    assert (calibration["explicit_positive"], calibration["explicit_negative"]) == (11, 1)
    assert calibration["agreement"] == 1.0 and calibration["implicit_only_turns"] == 0
    code, out, err = run(capsys, "forget", "--user", "bob", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["deleted"]["turns"] == 4 and report["snapshots"] == [built["snapshot_id"]]
    assert report["sink_drained"] is None  # no sink runs in this test controller
    code, _, err = run(capsys, "dataset", "show", "ds-nothing")
    assert code == 2 and "no snapshot ds-nothing" in err


def test_admin_api_needs_the_admin_key_and_checks_input(home, controller):
    with TestClient(controller) as client:
        assert client.get("/admin/v1/datasets").status_code == 401
        assert client.post("/admin/v1/forget", json={"user_id": "bob"},
                           headers={"Authorization": "Bearer wrong"}).status_code == 401  # unknown key
        assert client.get("/admin/v1/datasets",
                          headers={"Authorization": f"Bearer {home.auth.ingest_key}"}).status_code == 403
        auth = {"Authorization": f"Bearer {home.auth.admin_key}"}
        r = client.post("/admin/v1/datasets/build", json={"since": "whenever"}, headers=auth)
        assert r.status_code == 400 and "not a date" in r.json()["detail"]
        r = client.post("/admin/v1/datasets/build", json={"curation": {"replay_fraction": 0.5}}, headers=auth)
        assert r.status_code == 400 and "curation.replay_fraction" in r.json()["detail"]
        r = client.post("/admin/v1/datasets/build", json={"curation": {"no_such_key": 1}}, headers=auth)
        assert r.status_code == 400 and "unknown curation key" in r.json()["detail"]
        r = client.post("/admin/v1/datasets/build", json={"dry_run": True, "curation": {"eval_fraction": 0.0}},
                        headers=auth)
        assert r.status_code == 200 and r.json()["counts"]["sft_eval"] == 0 and r.json()["dry_run"]
        assert client.get("/admin/v1/datasets/ds-nothing", headers=auth).status_code == 404
        assert client.post("/admin/v1/forget", json={"user_id": ""}, headers=auth).status_code == 422


def test_demo_dataset_stage_builds_through_the_admin_api(tmp_path):
    """`kaizen demo`'s stage_dataset on demo traffic, against the controller app in process."""
    from types import SimpleNamespace

    from feedback_helpers import demo_envelopes
    from rich.console import Console

    from kaizenlm.demo.domain import build_domain
    from kaizenlm.demo.stages_data import stage_dataset
    from kaizenlm.ingest import store
    from kaizenlm.server.controller import create_app

    cfg = make_config(tmp_path / "home")
    con = open_store(cfg)
    con.execute("BEGIN")
    store.insert_events(con, demo_envelopes(400))
    con.execute("COMMIT")
    con.close()
    with TestClient(create_app(cfg, start_sink=False)) as client:
        def admin(method, path, **kw):
            kw.pop("timeout", None)
            r = client.request(method, path, headers={"Authorization": f"Bearer {cfg.auth.admin_key}"}, **kw)
            r.raise_for_status()
            return r.json()

        ctx = SimpleNamespace(cfg=cfg, domain=build_domain(0), admin=admin, console=Console(record=True, width=140),
                              summary={}, dataset=None)
        stage_dataset(ctx)
    printed = ctx.console.export_text()
    for step in ("pii_scrub", "reward", "quality", "exact_dedup", "near_dedup", "topic_balance", "split",
                 "replay_mix", "margin", "dedup"):
        assert step in printed
    assert ctx.summary["dataset snapshot"] == ctx.dataset["snapshot_id"]
    assert ctx.dataset["pair_sources"]["regenerate"] > 0 and ctx.dataset["mix_ratio"]["replay_rows"] > 0
    # the support domain's own addresses are facts to learn, not personal data
    sft = datasets.open_snapshot(ctx.dataset["path"])["sft_train"].column("response").to_pylist()
    assert any("@kaizen.cloud" in r for r in sft)
