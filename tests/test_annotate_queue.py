"""The review queue on a temporary DuckDB file: enqueue (idempotent, validated), blind pairs
(A/B order drawn from the id, versions hidden), deterministic assignment with overlap, the next
item for a reviewer, and the sources that select items from the event tables."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from kaizenlm.annotate import queue, sources
from kaizenlm.annotate.labels import record_label
from kaizenlm.annotate.settings import AnnotateError
from kaizenlm.config import RewardsConfig
from kaizenlm.ingest import store
from kaizenlm.ingest.events import make_envelope

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


@pytest.fixture
def con(tmp_path):
    c = store.connect(tmp_path / "kaizen.duckdb")
    yield c
    c.close()


def answer_rows(n: int, start: int = 0) -> list[dict]:
    return [{"turn_id": f"t{i}", "prompt": f"question {i}?", "answer": f"answer {i}", "user_id": f"u{i % 3}",
             "source": {"why": "test"}} for i in range(start, start + n)]


def pair_row(q: str = "q1", v1: str = "adapter-0001", v2: str = "adapter-0002") -> dict:
    return {"prompt": f"{q}?", "question_id": q,
            "candidates": [{"version": v1, "answer": f"first answer to {q}"},
                           {"version": v2, "answer": f"second answer to {q}"}]}


def test_the_migration_creates_the_tables(con):
    tables = {t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"review_items", "review_assignments", "review_labels"} <= tables
    assert con.execute("SELECT name FROM schema_migrations WHERE version = 7").fetchone()[0].startswith("annotate")


def test_enqueue_is_idempotent(con):
    first = queue.enqueue(con, "sample", answer_rows(5), batch="w1", now=T0)
    assert first["added"] == 5 and first["already_queued"] == 0 and len(first["item_ids"]) == 5
    again = queue.enqueue(con, "sample", answer_rows(7), batch="w2", now=T0)
    assert again["added"] == 2 and again["already_queued"] == 5
    assert con.execute("SELECT count(*) FROM review_items").fetchone()[0] == 7
    # the same turn as another kind is another item
    assert queue.enqueue(con, "disagreement", answer_rows(1))["added"] == 1
    assert queue.item_id_for("sample", {"turn_id": "t0"}) == first["item_ids"][0]


@pytest.mark.parametrize(("kind", "row", "field"), [
    ("sample", {"turn_id": "t1", "answer": "a"}, "rows[0].prompt"),
    ("sample", {"turn_id": "t1", "prompt": "  ", "answer": "a"}, "rows[0].prompt"),
    ("sample", {"prompt": "q", "answer": "a"}, "rows[0].turn_id"),
    ("correction", {"turn_id": "t1", "prompt": "q", "answer": "a"}, "rows[0].correction"),
    ("sample", {"turn_id": "t1", "prompt": "q", "answer": "a", "source": "x"}, "rows[0].source"),
    ("blind_pair", {"prompt": "q", "candidates": [{"version": "v1", "answer": "a"}]}, "rows[0].candidates"),
    ("blind_pair", {"prompt": "q", "candidates": [{"version": "v1", "answer": "a"}, {"version": "v2"}]},
     "rows[0].candidates[1].answer"),
    ("blind_pair", {"prompt": "q", "candidates": [{"version": "v1", "answer": "a"}, {"version": "v1", "answer": "b"}]},
     "rows[0].candidates"),
    ("nonsense", {}, "kind"),
])
def test_enqueue_errors_name_the_field(con, kind, row, field):
    with pytest.raises(AnnotateError) as e:
        queue.enqueue(con, kind, [row])
    assert e.value.field == field and str(e.value).startswith(field + ":")
    assert con.execute("SELECT count(*) FROM review_items").fetchone()[0] == 0


def test_a_bad_row_writes_nothing(con):
    rows = answer_rows(3)
    rows[2]["answer"] = None
    with pytest.raises(AnnotateError, match=r"rows\[2\].answer"):
        queue.enqueue(con, "sample", rows)
    assert con.execute("SELECT count(*) FROM review_items").fetchone()[0] == 0


def test_blind_pairs_hide_their_versions(con):
    rows = [pair_row(f"q{i}") for i in range(20)]
    ids = queue.enqueue(con, "blind_pair", rows, now=T0)["item_ids"]
    stored = [queue.get_item(con, i) for i in ids]
    # the order shown as A/B is drawn from the item id: some pairs are swapped, some not
    firsts = {s["version_a"] for s in stored}
    assert firsts == {"adapter-0001", "adapter-0002"}
    wrote = {"adapter-0001": "first", "adapter-0002": "second"}
    for s in stored:
        assert s["answer_a"].startswith(wrote[s["version_a"]]) and s["answer_b"].startswith(wrote[s["version_b"]])
    # listing the candidates the other way round gives the same item and the same order
    swapped = dict(rows[0], candidates=list(reversed(rows[0]["candidates"])))
    assert queue.item_id_for("blind_pair", swapped) == ids[0]
    queue.assign(con, ["ann"], overlap=0.0)
    view = queue.next_item(con, "ann", kind="blind_pair")
    assert set(view) == {"item_id", "kind", "prompt", "answer_a", "answer_b", "batch", "created_at", "remaining"}
    listed = queue.list_items(con, kind="blind_pair")
    assert len(listed) == 20 and "adapter" not in repr(listed)


def test_assignment_overlap_is_the_configured_share(con):
    queue.enqueue(con, "sample", answer_rows(40), now=T0)
    queue.enqueue(con, "correction", [dict(r, correction="fixed") for r in answer_rows(10, 100)], now=T0)
    result = queue.assign(con, ["carol", "alice", "bob"], overlap=0.1, now=T0)
    assert result["per_kind"]["sample"]["overlap_items"] == 4  # ceil(0.1 * 40)
    assert result["per_kind"]["correction"]["overlap_items"] == 1  # ceil(0.1 * 10)
    assert result["assigned_items"] == 50 and result["assignments"] == 50 + 5
    per_item = dict(con.execute("SELECT item_id, count(*) FROM review_assignments GROUP BY item_id").fetchall())
    assert sorted(per_item.values()).count(2) == 5 and len(per_item) == 50
    flagged = con.execute("SELECT count(DISTINCT item_id) FROM review_assignments WHERE overlap").fetchone()[0]
    assert flagged == 5
    # balanced: 55 assignments over 3 reviewers
    assert sorted(result["per_reviewer"].values()) == [18, 18, 19]
    assert queue.assign(con, ["alice", "bob", "carol"])["assigned_items"] == 0  # nothing left


def test_assignment_is_deterministic(tmp_path):
    outcomes = []
    for n in range(2):
        c = store.connect(tmp_path / f"k{n}.duckdb")
        queue.enqueue(c, "sample", answer_rows(30), now=T0)
        queue.assign(c, ["bob", "alice"] if n else ["alice", "bob"], overlap=0.2, now=T0)
        outcomes.append(c.execute("SELECT item_id, reviewer, overlap FROM review_assignments ORDER BY ALL").fetchall())
        c.close()
    assert outcomes[0] == outcomes[1]


def test_incremental_batches_keep_the_overall_overlap(con):
    for week in range(4):
        queue.enqueue(con, "sample", answer_rows(25, 25 * week), now=T0 + timedelta(days=7 * week))
        queue.assign(con, ["alice", "bob"], overlap=0.1, now=T0 + timedelta(days=7 * week))
    overlapped = con.execute("SELECT count(*) FROM (SELECT item_id FROM review_assignments GROUP BY item_id "
                             "HAVING count(*) >= 2)").fetchone()[0]
    assert overlapped == math.ceil(0.1 * 100)


def test_one_reviewer_gets_a_warning_and_no_overlap(con):
    queue.enqueue(con, "sample", answer_rows(10))
    result = queue.assign(con, ["solo"], overlap=0.5)
    assert result["overlap_items"] == 0 and "agreement cannot be measured" in result["warnings"][0]


@pytest.mark.parametrize(("reviewers", "kwargs", "field"), [
    ([], {}, "reviewers"), (["a", "a"], {}, "reviewers"), ("alice", {}, "reviewers"), ([" "], {}, "reviewers"),
    (["a", "b"], {"overlap": 1.5}, "overlap"), (["a", "b"], {"overlap_reviewers": 1}, "overlap_reviewers"),
])
def test_assign_errors_name_the_field(con, reviewers, kwargs, field):
    with pytest.raises(AnnotateError) as e:
        queue.assign(con, reviewers, **kwargs)
    assert e.value.field == field


def test_next_item_walks_the_reviewers_queue(con):
    queue.enqueue(con, "sample", answer_rows(3), now=T0)
    queue.enqueue(con, "correction", [dict(r, correction="c") for r in answer_rows(1, 10)], now=T0 + timedelta(hours=1))
    queue.assign(con, ["alice"], overlap=0.0, now=T0)
    assert queue.next_item(con, "bob") is None
    seen = []
    while (item := queue.next_item(con, "alice")) is not None:
        assert item["remaining"] == 4 - len(seen)
        assert "user_id" not in item and "version_a" not in item
        seen.append(item["item_id"])
        record_label(con, item["item_id"], "alice", "accept", label="correct")
    assert len(seen) == 4 and queue.next_item(con, "alice") is None
    kinds = [queue.get_item(con, i)["kind"] for i in seen]
    assert kinds == ["sample", "sample", "sample", "correction"]  # oldest first
    status = queue.queue_status(con)
    assert status["per_kind"]["sample"] == {"items": 3, "assigned": 3, "labelled": 3, "overlap_items": 0}
    assert status["open_per_reviewer"] == {} and status["items"] == 4
    with pytest.raises(AnnotateError, match="kind"):
        queue.next_item(con, "alice", kind="bogus")


def test_list_items_filters(con):
    queue.enqueue(con, "sample", answer_rows(4), now=T0)
    queue.assign(con, ["alice", "bob"], overlap=0.0, now=T0)
    alice = queue.list_items(con, reviewer="alice")
    assert len(alice) == 2 and all(i["reviewers"] == ["alice"] for i in alice)
    assert len(queue.list_items(con, kind="sample", limit=3)) == 3
    assert queue.list_items(con, kind="correction") == []
    with pytest.raises(AnnotateError, match="limit"):
        queue.list_items(con, limit=0)


# ------------------------------------------------------------------------------ sources


def _events(con) -> None:
    envs = []
    for i in range(12):
        envs.append(make_envelope("turn", {
            "turn_id": f"turn-{i}", "conversation_id": f"c{i}", "user_id": f"user-{i % 4}", "model_version": "base",
            "messages": [{"role": "user", "content": f"how do I do thing {i}?"}], "response": f"like this {i}",
        }, ts=(T0 + timedelta(hours=i)).timestamp()))
    later = (T0 + timedelta(days=1)).timestamp()
    envs.append(make_envelope("feedback", {"turn_id": "turn-1", "thumbs": -1, "correction": "old fix"}, ts=later))
    envs.append(make_envelope("feedback", {"turn_id": "turn-1", "correction": "better fix"}, ts=later + 60))
    envs.append(make_envelope("feedback", {"turn_id": "turn-2", "thumbs": 1}, ts=later))
    envs.append(make_envelope("signal", {"turn_id": "turn-2", "kind": "regenerate"}, ts=later))
    envs.append(make_envelope("signal", {"turn_id": "turn-2", "kind": "abandon"}, ts=later))
    envs.append(make_envelope("feedback", {"turn_id": "turn-3", "thumbs": -1}, ts=later))
    envs.append(make_envelope("signal", {"turn_id": "turn-3", "kind": "copy"}, ts=later))
    envs.append(make_envelope("feedback", {"turn_id": "turn-4", "thumbs": 1}, ts=later))
    envs.append(make_envelope("signal", {"turn_id": "turn-4", "kind": "copy"}, ts=later))  # agrees
    store.insert_events(con, envs)


def test_sources_select_from_the_event_tables(con):
    _events(con)
    fixes = sources.corrections(con)
    assert [(r["turn_id"], r["correction"]) for r in fixes] == [("turn-1", "better fix")]
    assert fixes[0]["prompt"] == "how do I do thing 1?" and fixes[0]["user_id"] == "user-1"
    assert queue.enqueue(con, "correction", fixes)["added"] == 1
    # turn-2: thumbs up, then regenerated and abandoned; turn-3: thumbs down, yet copied.
    # turn-1 has no implicit signal and turn-4's agree: neither is a disagreement.
    split = sources.disagreements(con, RewardsConfig())
    assert [r["turn_id"] for r in split] == ["turn-2", "turn-3"]
    assert split[0]["source"]["explicit"] == 1 and split[0]["source"]["implicit_reward"] < 0
    assert split[1]["source"]["explicit"] == -1 and split[1]["source"]["implicit_reward"] > 0
    assert queue.enqueue(con, "disagreement", split)["added"] == 2
    assert sources.disagreements(con, RewardsConfig(), until=T0) == []


def test_the_sample_is_seeded_and_windowed(con):
    _events(con)
    first = sources.sample(con, 5, since=T0, until=T0 + timedelta(hours=10))
    assert len(first) == 5 and first == sources.sample(con, 5, since=T0, until=T0 + timedelta(hours=10))
    assert {r["turn_id"] for r in first} <= {f"turn-{i}" for i in range(10)}
    assert len(sources.sample(con, 100)) == 12
    orders = {tuple(r["turn_id"] for r in sources.sample(con, 12, seed=seed)) for seed in ("a", "b", "c")}
    assert len(orders) > 1  # another seed, another draw
    assert queue.enqueue(con, "sample", first)["added"] == 5
    with pytest.raises(AnnotateError, match="size"):
        sources.sample(con, -1)
    with pytest.raises(AnnotateError, match="since"):
        sources.corrections(con, since=T0, until=T0)
