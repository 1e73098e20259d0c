"""Dataset snapshots: content addressing, determinism, the split grouped by conversation (no
leakage), the replay mix ratio, integrity, atomicity, and forgotten snapshots."""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from feedback_helpers import T0, EventLog, demo_envelopes, make_config, open_store

from kaizenlm.config import ConfigError, CurationConfig
from kaizenlm.datasets import parallel
from kaizenlm.datasets import snapshots as datasets
from kaizenlm.datasets.snapshots import SnapshotError, build_snapshot
from kaizenlm.feedback.rewards import Window
from kaizenlm.ingest import store

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
    mix = snap.manifest["mix_ratio"]
    assert snap.counts["sft_train"] + snap.counts["sft_eval"] - mix["replay_rows"] == 3 * len(TOPICS)
    assert snap.counts["dpo_train"] + snap.counts["dpo_eval"] == 2 * len(TOPICS)
    assert mix["source"] == cfg.curation.replay_path and mix["replay_rows"] > 0  # the configured file
    assert tables["sft_train"].schema == datasets.SFT_SCHEMA and tables["dpo_eval"].schema == datasets.DPO_SCHEMA
    manifest = json.loads((snap.path / "manifest.json").read_text())
    assert manifest["counts"] == snap.counts and manifest["window"]["as_of"]
    assert manifest["config"]["curation"]["eval_fraction"] == 0.3
    assert manifest["pair_sources"] == {"correction": 20, "regenerate": 20, "ab_variant": 0, "rating": 0}
    assert manifest["mix_ratio"]["configured"] == 0.08 and not manifest["warnings"]
    assert manifest["code_version"]["kaizenlm"] and "git_commit" in manifest["code_version"]
    assert set(manifest["curation"]["reward_calibration"]) >= {"agreement", "auc", "turns_with_both"}
    # every filter reports its parameters and counts
    steps = [s for output in manifest["curation"]["steps"].values() for s in output]
    assert {"recency_window", "pii_scrub", "context", "reward", "quality", "exact_dedup", "near_dedup",
            "topic_balance", "split", "replay_mix", "margin", "dedup"} <= {s["step"] for s in steps}
    assert all("params" in s and "in" in s and "out" in s for s in steps if s["step"] != "mine")
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
    t = log.turn("Is there a dark mode for the mobile app?", "Yes: open Settings, then Appearance, and pick Dark.")
    log.feedback(t, thumbs=1)
    log.write(con)
    assert build_snapshot(con, cfg, Window()).snapshot_id != first.snapshot_id


def test_as_of_makes_rebuilds_reproducible(con, cfg):
    cut = datetime.now(UTC)
    first = build_snapshot(con, cfg, Window(as_of=cut))
    log = EventLog(t0=T0 + 10_000)
    t = log.turn("Is there a dark mode for the mobile app?", "Yes: open Settings, then Appearance, and pick Dark.")
    log.feedback(t, thumbs=1)
    log.write(con)
    con.execute("UPDATE turns SET ingested_at = ?::TIMESTAMPTZ + INTERVAL 1 MINUTE WHERE turn_id = ?", [cut, t])
    con.execute("UPDATE feedback SET ingested_at = ?::TIMESTAMPTZ + INTERVAL 1 MINUTE WHERE turn_id = ?", [cut, t])
    assert build_snapshot(con, cfg, Window(as_of=cut), dry_run=True).snapshot_id == first.snapshot_id
    later = Window(as_of=cut + timedelta(minutes=2))  # the late events were stamped cut + 1 minute
    assert build_snapshot(con, cfg, later, dry_run=True).snapshot_id != first.snapshot_id


def _conversations(table) -> set:
    cols = [c for c in ("conversation_id", "rejected_conversation_id") if c in table.column_names]
    return {v for c in cols for v in table.column(c).to_pylist() if v is not None}


def _clusters(table) -> set:
    return {v for v in table.column("cluster").to_pylist() if v is not None}


def test_split_keeps_clusters_together(con, cfg):
    snap = build_snapshot(con, cfg, Window())
    t = datasets.open_snapshot(snap.path)
    train = _clusters(t["sft_train"]) | _clusters(t["dpo_train"])
    evals = _clusters(t["sft_eval"]) | _clusters(t["dpo_eval"])
    assert train and evals and not (train & evals)
    assert 0.1 < len(evals) / (len(train) + len(evals)) < 0.5


def test_no_conversation_leaks_across_the_split(tmp_path):
    """Multi-turn conversations (each turn its own cluster) and answers to one question in
    many conversations: no conversation and no cluster ends up on both sides."""
    cfg = make_config(tmp_path / "home", eval_fraction=0.4, window_days=0, max_per_prompt=3, topic_balance_ratio=0)
    con = open_store(cfg)
    log = EventLog()
    rng = random.Random(3)
    words = ["invoice", "parcel", "router", "seat", "token", "refund", "plan", "label", "quota", "webhook",
             "backup", "domain", "coupon", "report", "folder", "avatar", "session", "carrier", "warranty", "trial"]
    for c in range(40):
        conv = f"conv{c}"
        history = []
        for k in range(3):
            q = " ".join(rng.sample(words, 8)) + "?"  # distinct questions: each turn its own cluster
            t = log.turn(q, f"Thanks; for workspace {c} step {k}, open Settings and press Repair now.",
                         conversation_id=conv, history=history, user_id=f"u{c}")
            log.feedback(t, thumbs=1)
            history = history + [{"role": "user", "content": q},
                                 {"role": "assistant", "content": f"Noted, step {k} for workspace {c} is done now."}]
        if c % 3 == 0:  # a common question answered well and badly in other conversations: rating pairs
            good = log.turn("How do I reset my password on the web app?", "Use the Forgot password link on sign-in.",
                            conversation_id=conv, user_id=f"u{c}")
            log.feedback(good, thumbs=1)
            bad = log.turn("How do I reset my password on the web app?", f"Call the office number {c} and wait there.",
                           conversation_id=f"other{c}", user_id=f"v{c}")
            log.feedback(bad, thumbs=-1)
    log.write(con)
    snap = build_snapshot(con, cfg, Window())
    t = datasets.open_snapshot(snap.path)
    train = _conversations(t["sft_train"]) | _conversations(t["dpo_train"])
    evals = _conversations(t["sft_eval"]) | _conversations(t["dpo_eval"])
    assert len(train) > 10 and len(evals) > 5
    assert not (train & evals)
    assert not ((_clusters(t["sft_train"]) | _clusters(t["dpo_train"]))
                & (_clusters(t["sft_eval"]) | _clusters(t["dpo_eval"])))
    split = {s["step"]: s for s in snap.manifest["curation"]["steps"]["sft"]}["split"]
    assert split["params"]["grouped_by"] == ["conversation", "near-duplicate cluster"]
    con.close()


def test_eval_fraction_zero(con, tmp_path):
    cfg = make_config(tmp_path / "home", eval_fraction=0.0)
    snap = build_snapshot(con, cfg, Window())
    assert snap.counts["sft_eval"] == snap.counts["dpo_eval"] == 0


def test_replay_mix(con, cfg):
    replay = [{"messages": [{"role": "user", "content": f"Repeat the word number {i}."}], "response": f"word {i}"}
              for i in range(200)]
    replay.append({"messages": [{"role": "user", "content": "Reverse: red cat"}], "response": "cat red"})
    replay.append({"messages": [{"role": "user", "content": "Mail jane@example.com"}], "response": "Sent."})
    snap = build_snapshot(con, cfg, Window(), replay=replay, holdout=["Reverse: red cat"])
    t = datasets.open_snapshot(snap.path)["sft_train"]
    sources = t.column("source").to_pylist()
    n_replay = sources.count("replay")
    assert n_replay == round(0.08 * len(sources))  # the ratio holds exactly (to the row)
    rows = [r for r in t.to_pylist() if r["source"] == "replay"]
    assert all(r["turn_id"] is None and r["reward"] is None and r["cluster"] is None for r in rows)
    assert all(r["prompt"][0]["content"] != "Reverse: red cat" for r in rows)
    assert "jane@example.com" not in json.dumps(rows)  # replay text is scrubbed too
    step = {s["step"]: s for s in snap.manifest["curation"]["steps"]["sft"]}["replay_mix"]
    assert step["dropped"]["matches_holdout"] == 1 and step["out"] == n_replay
    assert snap.manifest["mix_ratio"] == {"configured": 0.08, "replay_rows": n_replay, "sft_train_rows": len(sources),
                                          "actual": round(n_replay / len(sources), 6), "source": "given"}
    again = build_snapshot(con, cfg, Window(), replay=replay, holdout=["Reverse: red cat"], dry_run=True)
    assert again.snapshot_id == snap.snapshot_id  # the sample is deterministic


@pytest.mark.parametrize("fraction", [0.05, 0.08, 0.1])
def test_replay_count_is_exact_to_the_row(fraction):
    for n_train in range(1, 3000):
        r = datasets.replay_count(n_train, fraction)
        total = n_train + r
        assert r == round(fraction * total), (n_train, r)
        assert abs(r / total - fraction) <= 0.5 / total
    assert datasets.replay_count(0, fraction) == 0


def test_small_replay_pool_is_repeated_to_hold_the_ratio(con, cfg):
    replay = [{"messages": [{"role": "user", "content": "Say hi."}], "response": "Hi!"}]
    snap = build_snapshot(con, cfg, Window(), replay=replay)
    rows = datasets.open_snapshot(snap.path)["sft_train"].to_pylist()
    n_replay = sum(r["source"] == "replay" for r in rows)
    assert n_replay == round(0.08 * len(rows)) > 1
    assert len({r["example_id"] for r in rows}) == len(rows)


def test_replay_never_mixes_in_a_held_out_text(con, cfg, tmp_path):
    from kaizenlm.demo.general import general_skills, write_general_jsonl

    train, heldout = general_skills(0)
    write_general_jsonl(cfg.curation.replay_path, train + heldout)  # the file holds both; holdout keeps one out
    snap = build_snapshot(con, cfg, Window(), holdout=[r["prompt"] for r in heldout])
    rows = [r for r in datasets.open_snapshot(snap.path)["sft_train"].to_pylist() if r["source"] == "replay"]
    prompts = {r["prompt"][-1]["content"] for r in rows}
    assert prompts and prompts <= {r["prompt"] for r in train}
    assert not prompts & {r["prompt"] for r in heldout}


def test_replay_fraction_outside_5_to_10_percent_is_a_config_error(tmp_path):
    for bad in (0.0, 0.04, 0.11, 0.5):
        with pytest.raises(ConfigError, match="curation.replay_fraction.*0.05..0.10.*replay_fraction_override"):
            CurationConfig(replay_fraction=bad)
    assert CurationConfig(replay_fraction=0.2, replay_fraction_override=True).replay_fraction == 0.2
    cfg = make_config(tmp_path / "home", replay_fraction=0.0, replay_fraction_override=True)
    con = open_store(cfg)
    log = EventLog()
    populate(log, 3)
    log.write(con)
    snap = build_snapshot(con, cfg, Window())
    assert snap.manifest["mix_ratio"]["replay_rows"] == 0
    con.close()


def test_same_inputs_and_config_give_the_same_hash(tmp_path):
    """Two stores filled with the same events (in different orders), built separately."""
    envelopes = demo_envelopes(250)
    hashes = []
    for i, order in enumerate((envelopes, list(reversed(envelopes)))):
        cfg = make_config(tmp_path / f"home{i}", window_days=0)
        con = open_store(cfg)
        con.execute("BEGIN")
        store.insert_events(con, order)
        con.execute("COMMIT")
        hashes.append(build_snapshot(con, cfg, Window()).content_hash)
        con.close()
    assert hashes[0] == hashes[1]


@pytest.mark.skipif(not parallel.can_fork(), reason="the worker process needs fork")
def test_two_workers_and_one_give_the_same_snapshot(tmp_path):
    """The forked worker (PII scrub halves, clusters, pair mining) changes no byte of the
    content and no funnel entry: the demo's traffic plus PII, built with 1 and with 2 workers."""
    log = EventLog()
    populate(log, 6)
    tid = log.turn("Call me on +44 20 7946 0958 or mail ann@example.com: how do I export invoices?",
                   "Open Billing, choose Invoices and press Export; the file arrives by e-mail.")
    log.feedback(tid, thumbs=1)
    envelopes = demo_envelopes(150) + log.envelopes  # the same events in both stores
    builds = []
    for workers in (1, 2):
        cfg = make_config(tmp_path / f"home{workers}", window_days=0, workers=workers)
        con = open_store(cfg)
        con.execute("BEGIN")
        store.insert_events(con, envelopes)
        con.execute("COMMIT")
        tables, funnel = datasets.curate(con, cfg, Window(), holdout=["How do I export invoices?"])
        builds.append(({name: datasets.table_hash(t) for name, t in tables.items()},
                       json.dumps(funnel.to_json(), sort_keys=True, default=str)))
        con.close()
    assert builds[0][0] == builds[1][0]
    assert builds[0][1] == builds[1][1]
    assert json.loads(builds[0][1])["pii_replaced"]["EMAIL"] >= 1


def test_a_failing_worker_raises_in_the_caller():
    def boom(x):
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="bad 3"):
        parallel.beside(2, boom, 3).result()
    assert parallel.beside(2, sorted, [3, 1, 2]).result() == [1, 2, 3]
    assert parallel.beside(1, sorted, [3, 1, 2]).result() == [1, 2, 3]


def _stuck_in_a_child(parent_pid: int) -> str:
    if os.getpid() != parent_pid:
        time.sleep(60)  # as a child would that inherited a lock no thread will release
    return f"done in {'the parent' if os.getpid() == parent_pid else 'a child'}"


@pytest.mark.skipif(not parallel.can_fork(), reason="the worker process needs fork")
def test_a_stuck_worker_is_dropped_and_its_part_runs_here(monkeypatch):
    monkeypatch.setattr(parallel, "CHILD_TIMEOUT_S", 0.5)
    started = time.monotonic()
    assert parallel.beside(2, _stuck_in_a_child, os.getpid()).result() == "done in the parent"
    assert time.monotonic() - started < 10


def test_workers_setting():
    assert CurationConfig(workers=1).processes == 1
    assert CurationConfig(workers=2).processes == 2
    assert CurationConfig().processes == (2 if (os.cpu_count() or 1) >= 2 else 1)
    with pytest.raises(ConfigError, match="curation.workers"):
        CurationConfig(workers=3)


def test_demo_traffic_snapshot(tmp_path):
    """The demo's simulated users: every pair source but A/B, PII scrubbed, the ratio exact."""
    cfg = make_config(tmp_path / "home", window_days=0, pii_keep=["help@kaizen.cloud", "security@kaizen.cloud"])
    con = open_store(cfg)
    con.execute("BEGIN")
    store.insert_events(con, demo_envelopes(600))
    con.execute("COMMIT")
    snap = build_snapshot(con, cfg, Window())
    m = snap.manifest
    assert m["pair_sources"]["correction"] > 20 and m["pair_sources"]["regenerate"] > 20
    assert m["pair_sources"]["rating"] > 20
    assert m["mix_ratio"]["replay_rows"] == round(0.08 * m["counts"]["sft_train"])
    tables = datasets.open_snapshot(snap.path)
    text = json.dumps([tables[t].to_pylist() for t in datasets.TABLES], default=str)
    assert "help@kaizen.cloud" in text  # the organisation's own address is kept (pii_keep)
    quality = {s["step"]: s for s in m["curation"]["steps"]["sft"]}["quality"]
    assert quality.get("dropped", {}).get("short_sentences", 0) == 0  # the demo's short answers survive
    con.close()


def test_load_replay(tmp_path):
    path = tmp_path / "general.jsonl"
    path.write_text('{"prompt": "Add 2 and 3.", "response": "5", "skill": "add"}\n'
                    '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}], '
                    '"answer": "Hello!"}\n')
    assert datasets.load_replay(path) == [
        {"messages": [{"role": "user", "content": "Add 2 and 3."}], "response": "5", "skill": "add"},  # skill kept
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
    row = next(r for r in pq.read_table(snap.path / "sft_train.parquet").to_pylist() if r["source"] != "replay")
    assert isinstance(row["response"], str) and row["response"]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]


def test_training_records(con, cfg):
    snap = build_snapshot(con, cfg, Window())
    t = datasets.open_snapshot(snap.path)
    sft = list(datasets.sft_records(t["sft_train"]))
    assert len(sft) == t["sft_train"].num_rows
    own = next(r for r, source in zip(sft, t["sft_train"].column("source").to_pylist(), strict=True)
               if source != "replay")
    assert own["messages"][0]["role"] == "system" and own["messages"][-1]["role"] == "assistant"
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


def test_forgotten_snapshots_are_marked_and_refused(con, cfg):
    snap = build_snapshot(con, cfg, Window())
    turn = datasets.open_snapshot(snap.path)["sft_train"].column("turn_id").to_pylist()[0]
    assert datasets.mark_forgotten(con, cfg.snapshots_dir, [snap.snapshot_id], "abc123", [turn]) == [snap.snapshot_id]
    manifest = datasets.read_manifest(snap.path)
    assert [f["subject"] for f in manifest["forgotten"]] == ["abc123"]
    stored = json.loads(con.execute("SELECT manifest FROM dataset_snapshots").fetchall()[0][0])
    assert stored["forgotten"] == manifest["forgotten"]
    with pytest.raises(SnapshotError, match="forgotten"):
        datasets.open_snapshot(snap.path)
    assert datasets.open_snapshot(snap.path, allow_forgotten=True)["sft_train"].num_rows > 0
    assert datasets.verify(snap.path) == []  # the data files are untouched
