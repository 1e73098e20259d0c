"""Dataset snapshots: content addressing, reproducibility, split, replay, integrity, atomicity."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from feedback_helpers import T0, EventLog, make_config, open_store

from kaizenlm.feedback import datasets
from kaizenlm.feedback.datasets import SnapshotError, build_snapshot
from kaizenlm.feedback.rewards import Window

TOPICS = ["password", "invoice", "refund", "plan", "export", "teammate", "login", "address", "receipt", "cancel",
          "upgrade", "storage", "api", "billing", "language", "avatar", "notifications", "backup", "trial", "seats"]


def populate(log: EventLog, n_topics: int = len(TOPICS)) -> None:
    """Per topic: a liked answer, a corrected answer and a regenerated-then-liked pair."""
    for i, topic in enumerate(TOPICS[:n_topics]):
        q = f"How does the {topic} feature work in my {i}th workspace?"
        liked = log.turn(q, f"The {topic} feature lives under Settings; open it and follow the steps shown there.",
                         user_id=f"u{i % 5}")
        log.feedback(liked, thumbs=1)
        q2 = f"What happens to my {topic} when I switch plans, case {i}?"
        wrong = log.turn(q2, f"Your {topic} is deleted.", user_id=f"u{i % 5}")
        log.feedback(wrong, correction=f"Your {topic} stays as it is; nothing is deleted when you switch plans.")
        q3 = f"Can I share my {topic} settings with a colleague, number {i}?"
        first = log.turn(q3, "I do not know.", conversation_id=f"r{i}", user_id=f"u{i % 5}")
        log.signal("regenerate", turn_id=first)
        second = log.turn(q3, f"Yes: open {topic}, press Share and pick your colleague from the list.",
                          conversation_id=f"r{i}", user_id=f"u{i % 5}")
        log.feedback(second, thumbs=1)


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path / "home", eval_fraction=0.3, window_days=0)


@pytest.fixture
def con(cfg):
    con = open_store(cfg)
    log = EventLog()
    populate(log)
    log.write(con)
    yield con
    con.close()


def test_build_writes_a_verified_snapshot(con, cfg):
    snap = build_snapshot(con, cfg, Window())
    assert snap.snapshot_id == f"ds-{snap.content_hash[:16]}" and not snap.reused
    assert snap.path == cfg.snapshots_dir / snap.snapshot_id
    assert sorted(p.name for p in snap.path.iterdir()) == sorted([f"{t}.parquet" for t in datasets.TABLES]
                                                                 + ["manifest.json"])
    assert datasets.verify(snap.path) == []
    tables = datasets.open_snapshot(snap.path)
    assert {k: t.num_rows for k, t in tables.items()} == snap.counts
    assert snap.counts["sft_train"] + snap.counts["sft_eval"] == 3 * len(TOPICS)
    assert snap.counts["dpo_train"] + snap.counts["dpo_eval"] == 2 * len(TOPICS)
    assert tables["sft_train"].schema == datasets.SFT_SCHEMA and tables["dpo_eval"].schema == datasets.DPO_SCHEMA
    manifest = json.loads((snap.path / "manifest.json").read_text())
    assert manifest["counts"] == snap.counts and manifest["window"]["as_of"]
    assert manifest["config"]["curation"]["eval_fraction"] == 0.3
    assert manifest["curation"]["dpo_sources"] == {"correction": 20, "regenerate": 20, "ranked": 0}
    assert "no replay data" in " ".join(manifest["warnings"])
    assert not [p for p in cfg.snapshots_dir.iterdir() if p.name.startswith(".tmp")]
    row = con.execute("SELECT snapshot_id, content_hash, counts FROM dataset_snapshots").fetchall()
    assert [(r[0], r[1], json.loads(r[2])) for r in row] == [(snap.snapshot_id, snap.content_hash, snap.counts)]


def test_same_data_same_snapshot(con, cfg):
    first = build_snapshot(con, cfg, Window())
    again = build_snapshot(con, cfg, Window())
    assert again.snapshot_id == first.snapshot_id and again.reused
    assert again.manifest["created_at"] == first.manifest["created_at"]
    assert len(list(cfg.snapshots_dir.iterdir())) == 1
    assert con.execute("SELECT count(*) FROM dataset_snapshots").fetchall() == [(1,)]
    # new feedback changes the content, and so the id
    log = EventLog(t0=T0 + 10_000)
    t = log.turn("Is there a dark mode for the mobile app?", "Yes: Settings, Appearance, Dark.")
    log.feedback(t, thumbs=1)
    log.write(con)
    assert build_snapshot(con, cfg, Window()).snapshot_id != first.snapshot_id


def test_as_of_makes_rebuilds_reproducible(con, cfg):
    cut = datetime.now(UTC)
    first = build_snapshot(con, cfg, Window(as_of=cut))
    log = EventLog(t0=T0 + 10_000)
    t = log.turn("Is there a dark mode for the mobile app?", "Yes: Settings, Appearance, Dark.")
    log.feedback(t, thumbs=1)
    log.write(con)
    con.execute("UPDATE turns SET ingested_at = ?::TIMESTAMPTZ + INTERVAL 1 MINUTE WHERE turn_id = ?", [cut, t])
    con.execute("UPDATE feedback SET ingested_at = ?::TIMESTAMPTZ + INTERVAL 1 MINUTE WHERE turn_id = ?", [cut, t])
    assert build_snapshot(con, cfg, Window(as_of=cut), dry_run=True).snapshot_id == first.snapshot_id
    later = Window(as_of=cut + timedelta(minutes=2))  # the late events were stamped cut + 1 minute
    assert build_snapshot(con, cfg, later, dry_run=True).snapshot_id != first.snapshot_id


def test_split_keeps_clusters_together(con, cfg):
    snap = build_snapshot(con, cfg, Window())
    t = datasets.open_snapshot(snap.path)
    train = set(t["sft_train"].column("cluster").to_pylist()) | set(t["dpo_train"].column("cluster").to_pylist())
    evals = set(t["sft_eval"].column("cluster").to_pylist()) | set(t["dpo_eval"].column("cluster").to_pylist())
    assert train and evals and not (train & evals)
    for c in evals:
        assert datasets.in_eval(c, 0.3)
    assert 0.1 < len(evals) / (len(train) + len(evals)) < 0.5


def test_eval_fraction_zero(con, tmp_path):
    cfg = make_config(tmp_path / "home", eval_fraction=0.0)
    snap = build_snapshot(con, cfg, Window())
    assert snap.counts["sft_eval"] == snap.counts["dpo_eval"] == 0


def test_replay_mix(con, cfg):
    replay = [{"messages": [{"role": "user", "content": f"Repeat the word number {i}."}], "response": f"word {i}"}
              for i in range(200)]
    replay.append({"messages": [{"role": "user", "content": "Reverse: red cat"}], "response": "cat red"})
    snap = build_snapshot(con, cfg, Window(), replay=replay, holdout=["Reverse: red cat"])
    t = datasets.open_snapshot(snap.path)["sft_train"]
    sources = t.column("source").to_pylist()
    n_replay, n_own = sources.count("replay"), len(sources) - sources.count("replay")
    assert n_replay == math.ceil(0.08 / 0.92 * n_own)
    assert 0.07 <= n_replay / len(sources) <= 0.1
    rows = [r for r in t.to_pylist() if r["source"] == "replay"]
    assert all(r["turn_id"] is None and r["reward"] is None and r["cluster"] is None for r in rows)
    assert all(r["prompt"][0]["content"] != "Reverse: red cat" for r in rows)
    info = snap.manifest["curation"]["replay"]
    assert info == {"fraction": 0.08, "wanted": n_replay, "available": 201, "contaminated": 1, "used": n_replay}
    assert not snap.manifest["warnings"]
    again = build_snapshot(con, cfg, Window(), replay=replay, holdout=["Reverse: red cat"], dry_run=True)
    assert again.snapshot_id == snap.snapshot_id  # the sample is deterministic


def test_load_replay(tmp_path):
    path = tmp_path / "general.jsonl"
    path.write_text('{"prompt": "Add 2 and 3.", "response": "5", "skill": "add"}\n'
                    '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}], '
                    '"answer": "Hello!"}\n')
    assert datasets.load_replay(path) == [
        {"messages": [{"role": "user", "content": "Add 2 and 3."}], "response": "5"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}], "response": "Hello!"},
    ]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="record 1: needs one of the fields response"):
        datasets.load_replay(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        datasets.load_replay(tmp_path / "nope.jsonl")


def test_verify_finds_damage(con, cfg):
    snap = build_snapshot(con, cfg, Window())
    path = snap.path / "sft_train.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["response"] = "tampered"
    pq.write_table(table.from_pylist(rows, schema=table.schema), path)
    problems = datasets.verify(snap.path)
    assert "sft_train.parquet: file checksum differs from the manifest" in problems
    assert "sft_train.parquet: data hash differs from the manifest" in problems
    assert "content hash differs from the manifest" in problems
    with pytest.raises(SnapshotError, match="damaged"):
        datasets.open_snapshot(snap.path)
    (snap.path / "dpo_eval.parquet").unlink()
    assert "dpo_eval.parquet: missing" in datasets.verify(snap.path)


def test_data_hash_ignores_parquet_encoding(con, cfg):
    snap = build_snapshot(con, cfg, Window())
    path = snap.path / "dpo_train.parquet"
    pq.write_table(pq.read_table(path), path, compression="snappy")  # same rows, other bytes
    assert datasets.verify(snap.path) == ["dpo_train.parquet: file checksum differs from the manifest"]


def test_failed_write_leaves_nothing(con, cfg, monkeypatch):
    calls, real = [], pq.write_table

    def fail(table, path, **kw):  # the third file fails half-way
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(table, path, **kw)

    monkeypatch.setattr(datasets.pq, "write_table", fail)
    with pytest.raises(OSError, match="disk full"):
        build_snapshot(con, cfg, Window())
    assert list(cfg.snapshots_dir.iterdir()) == []
    assert con.execute("SELECT count(*) FROM dataset_snapshots").fetchall() == [(0,)]


def test_dry_run_writes_nothing(con, cfg):
    snap = build_snapshot(con, cfg, Window(), dry_run=True)
    assert not snap.path.exists() and snap.counts["sft_train"] > 0
    assert con.execute("SELECT count(*) FROM dataset_snapshots").fetchall() == [(0,)]


def test_empty_window_gives_an_empty_snapshot(con, cfg):
    snap = build_snapshot(con, cfg, Window(since="2001-01-01", until="2001-02-01"))
    assert snap.counts == {t: 0 for t in datasets.TABLES}
    assert any("empty" in w for w in snap.manifest["warnings"])
    assert datasets.verify(snap.path) == []
    assert datasets.open_snapshot(snap.path)["dpo_train"].schema == datasets.DPO_SCHEMA


def test_snapshot_rows_fit_the_sft_recipe(con, cfg):
    """kaizenlm.retrain.lora_sft reads {prompt, response} rows, prompt being text or messages."""
    snap = build_snapshot(con, cfg, Window())
    row = pq.read_table(snap.path / "sft_train.parquet").to_pylist()[0]
    assert isinstance(row["response"], str) and row["response"]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]


def test_training_records(con, cfg):
    snap = build_snapshot(con, cfg, Window())
    t = datasets.open_snapshot(snap.path)
    sft = list(datasets.sft_records(t["sft_train"]))
    assert len(sft) == t["sft_train"].num_rows
    assert sft[0]["messages"][0]["role"] == "system" and sft[0]["messages"][-1]["role"] == "assistant"
    dpo = list(datasets.dpo_records(t["dpo_train"]))
    assert dpo[0]["prompt"][-1]["role"] == "user"
    assert dpo[0]["chosen"][0]["role"] == dpo[0]["rejected"][0]["role"] == "assistant"
    assert dpo[0]["chosen"] != dpo[0]["rejected"]


def test_list_and_resolve(con, cfg, tmp_path):
    first = build_snapshot(con, cfg, Window())
    second = build_snapshot(con, cfg, Window(until=T0 + 30))
    listed = datasets.list_snapshots(cfg.snapshots_dir)
    assert {m["snapshot_id"] for m in listed} == {first.snapshot_id, second.snapshot_id}
    assert datasets.resolve(cfg.snapshots_dir, first.snapshot_id) == first.path
    assert datasets.resolve(cfg.snapshots_dir, first.snapshot_id[3:10]) == first.path
    with pytest.raises(SnapshotError, match="ambiguous"):
        datasets.resolve(cfg.snapshots_dir, "ds-")
    with pytest.raises(SnapshotError, match="no snapshot"):
        datasets.resolve(cfg.snapshots_dir, "ds-ffffffff")
    assert datasets.list_snapshots(tmp_path / "nowhere") == []


def test_default_window(cfg):
    from kaizenlm.config import CurationConfig

    w = datasets.default_window(CurationConfig(window_days=30), as_of="2025-03-31")
    assert w.since == datetime(2025, 3, 1, tzinfo=UTC) and w.until is None
    assert datasets.default_window(CurationConfig(window_days=30), as_of="2025-03-31", all_data=True).since is None
    assert datasets.default_window(CurationConfig(window_days=0)).since is None
    assert datasets.default_window(CurationConfig(), since="2025-01-01").since == datetime(2025, 1, 1, tzinfo=UTC)


def test_snapshots_with_turns(con, cfg):
    everything = build_snapshot(con, cfg, Window())
    early = build_snapshot(con, cfg, Window(until=T0 + 30))
    turns = con.execute("SELECT turn_id, ts FROM turns ORDER BY ts").fetchall()
    first, last = turns[0][0], turns[-1][0]
    assert datasets.snapshots_with_turns(cfg.snapshots_dir, [first]) == sorted([everything.snapshot_id,
                                                                                early.snapshot_id])
    assert datasets.snapshots_with_turns(cfg.snapshots_dir, [last, "nope"]) == [everything.snapshot_id]
    assert datasets.snapshots_with_turns(cfg.snapshots_dir, ["nope"]) == []
    assert datasets.snapshots_with_turns(cfg.snapshots_dir, []) == []
