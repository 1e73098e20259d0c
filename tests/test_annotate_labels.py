"""Labels on a temporary DuckDB file: validation that names the field, blind-pair verdicts
resolved server side, the latest label counting, agreement and the training gate, the Label
Studio round trip, and the `kaizen annotate` commands on the file with no controller."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from kaizenlm.annotate import label_studio, labels, queue
from kaizenlm.annotate.settings import AnnotateConfig, AnnotateError, LabelSchema, label_schema, settings_of
from kaizenlm.cli import main
from kaizenlm.config import ConfigError
from kaizenlm.ingest import store

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


@pytest.fixture
def con(tmp_path):
    c = store.connect(tmp_path / "kaizen.duckdb")
    yield c
    c.close()


def fill(con, n: int = 4, pairs: int = 1) -> tuple[list[str], list[str]]:
    rows = [{"turn_id": f"t{i}", "prompt": f"q{i}?", "answer": f"a{i}", "correction": f"c{i}", "user_id": "u1"}
            for i in range(n)]
    answers = queue.enqueue(con, "correction", rows, now=T0)["item_ids"]
    blind = queue.enqueue(con, "blind_pair", [
        {"prompt": f"p{i}?", "candidates": [{"version": "base-0001", "answer": "x"}, {"version": "adapter-0002",
                                                                                     "answer": "y"}]}
        for i in range(pairs)], now=T0)["item_ids"]
    return answers, blind


def test_accept_edit_reject(con):
    (a, b, c, _), _ = fill(con)
    got = labels.record_label(con, a, "alice", "accept", label="correct", now=T0)
    assert got["verdict"] == "accept" and got["gold_answer"] is None and got["kind"] == "correction"
    assert got["schema_id"] == LabelSchema().schema_id and got["ts"] == T0.isoformat()
    edit = labels.record_label(con, b, "alice", "EDIT", label="incomplete", gold_answer="  the full answer ")
    assert edit["verdict"] == "edit" and edit["gold_answer"] == "the full answer"
    assert labels.record_label(con, c, "alice", "reject", label="wrong", note="made up")["note"] == "made up"
    assert [r["verdict"] for r in labels.current_labels(con)] == sorted(
        ["accept", "edit", "reject"], key=lambda v: {"accept": a, "edit": b, "reject": c}[v])


@pytest.mark.parametrize(("verdict", "kwargs", "field"), [
    ("maybe", {"label": "correct"}, "verdict"),
    ("a", {"label": "correct"}, "verdict"),  # a blind-pair verdict on an answer
    ("accept", {}, "label"),
    ("accept", {"label": "great"}, "label"),
    ("edit", {"label": "wrong"}, "gold_answer"),
    ("edit", {"label": "wrong", "gold_answer": "   "}, "gold_answer"),
    ("edit", {"label": "wrong", "gold_answer": "a0"}, "gold_answer"),  # unchanged
    ("accept", {"label": "correct", "gold_answer": "x"}, "gold_answer"),
    ("accept", {"label": "correct", "note": 5}, "note"),
    ("accept", {"label": "correct", "source": "elsewhere"}, "source"),
])
def test_label_errors_name_the_field(con, verdict, kwargs, field):
    (a, *_), _ = fill(con)
    with pytest.raises(AnnotateError) as e:
        labels.record_label(con, a, "alice", verdict, **kwargs)
    assert e.value.field == field
    assert con.execute("SELECT count(*) FROM review_labels").fetchone()[0] == 0


def test_item_and_reviewer_errors(con):
    (a, *_), _ = fill(con)
    with pytest.raises(AnnotateError, match="item_id: no review item 'rv-nope'"):
        labels.record_label(con, "rv-nope", "alice", "accept", label="correct")
    with pytest.raises(AnnotateError, match="reviewer"):
        labels.record_label(con, a, " ", "accept", label="correct")
    with pytest.raises(AnnotateError, match="not assigned"):
        labels.record_label(con, a, "alice", "accept", label="correct", require_assignment=True)
    queue.assign(con, ["alice"], overlap=0.0)
    assert labels.record_label(con, a, "alice", "accept", label="correct", require_assignment=True)


def test_blind_pair_verdicts_resolve_to_a_hidden_version(con):
    _, (pair,) = fill(con, n=1)
    item = queue.get_item(con, pair)
    got = labels.record_label(con, pair, "alice", "B")
    assert got["verdict"] == "b" and "preferred_version" not in got and "version_b" not in got
    assert "adapter" not in json.dumps(got) and "base-0001" not in json.dumps(got)
    stored = labels.current_labels(con, blind=True)
    assert stored[0]["preferred_version"] == item["version_b"]
    assert labels.record_label(con, pair, "bob", "tie")["verdict"] == "tie"
    by_reviewer = {r["reviewer"]: r for r in labels.current_labels(con, kind="blind_pair")}
    assert by_reviewer["bob"]["preferred_version"] is None
    for verdict, kwargs, field in [("accept", {}, "verdict"), ("a", {"gold_answer": "z"}, "gold_answer"),
                                   ("a", {"label": "nope"}, "label")]:
        with pytest.raises(AnnotateError) as e:
            labels.record_label(con, pair, "carol", verdict, **kwargs)
        assert e.value.field == field


def test_the_latest_label_counts(con):
    (a, *_), _ = fill(con)
    labels.record_label(con, a, "alice", "accept", label="correct", now=T0)
    labels.record_label(con, a, "alice", "reject", label="wrong", now=T0 + timedelta(minutes=1))
    current = labels.current_labels(con)
    assert len(current) == 1 and current[0]["verdict"] == "reject"
    assert con.execute("SELECT count(*) FROM review_labels").fetchone()[0] == 2  # the history stays


def test_agreement_and_the_training_gate(con):
    answers, pairs = fill(con, n=6, pairs=2)
    gate = labels.agreement_summary(con)["gate"]
    assert gate["open"] is False and "agreement is unknown" in gate["reason"]
    alice = ["correct", "correct", "wrong", "wrong", "incomplete", "incomplete"]
    bob = ["correct", "correct", "wrong", "wrong", "incomplete", "wrong"]
    for item, la, lb in zip(answers, alice, bob, strict=True):
        labels.record_label(con, item, "alice", "accept" if la == "correct" else "reject", label=la)
        labels.record_label(con, item, "bob", "accept" if lb == "correct" else "reject", label=lb)
    for pair in pairs:
        labels.record_label(con, pair, "alice", "a")
        labels.record_label(con, pair, "bob", "a")
    summary = labels.agreement_summary(con, min_kappa=0.8)
    # 5 of 6 alike; alice c2 w2 i2, bob c2 w3 i1: p_e = (4 + 6 + 2) / 36 = 1/3; Cohen = (5/6 - 1/3) / (2/3) = 0.75
    assert summary["label"]["pairwise_cohen_kappa"][0]["kappa"] == pytest.approx(0.75)
    # Fleiss: P_bar = 5/6; shares c 4/12, w 5/12, i 3/12: P_e = 50/144; kappa = (120 - 50) / (144 - 50) = 70/94
    assert summary["label"]["fleiss_kappa"] == pytest.approx(70 / 94)
    assert summary["gate"]["open"] is False and "below annotate.min_kappa" in summary["gate"]["reason"]
    assert "alice/bob 0.75" in summary["gate"]["reason"]
    assert summary["preference"]["fleiss_kappa"] == 1.0 and summary["preference"]["items"] == 2
    assert labels.agreement_summary(con, min_kappa=0.7)["gate"]["open"] is True
    # labels under another schema are not compared with these
    other = LabelSchema(("good", "bad"))
    assert labels.agreement_summary(con, other)["label"]["items"] == 0
    assert labels.agreement_summary(con, other)["other_schema_labels"] == 12


def test_label_studio_round_trip(con):
    answers, pairs = fill(con, n=2, pairs=1)
    tasks = label_studio.export_tasks(queue.list_items(con, kind="correction"))
    assert {t["data"]["item_id"] for t in tasks} == set(answers)

    def ann(ann_id, who, verdict, label=None, gold=None, name="verdict"):
        result = [{"from_name": name, "to_name": "answer", "type": "choices", "value": {"choices": [verdict]}}]
        if label:
            result.append({"from_name": "label", "to_name": "answer", "type": "choices", "value": {"choices": [label]}})
        if gold:
            result.append({"from_name": "gold_answer", "to_name": "answer", "type": "textarea",
                           "value": {"text": [gold]}})
        return {"id": ann_id, "completed_by": who, "result": result, "was_cancelled": False}

    exported = [
        {"id": 1, **tasks[0], "annotations": [ann(1, 7, "accept", "correct"),
                                              ann(2, {"id": 8, "email": "eve@x.org"}, "edit", "incomplete", "gold!")]},
        {"id": 2, **tasks[1], "annotations": [ann(3, 7, "reject", "wrong"),
                                              {"id": 4, "completed_by": 8, "result": [], "was_cancelled": True}]},
        {"id": 3, "data": {"item_id": pairs[0], "prompt": "p", "answer_a": "x", "answer_b": "y"},
         "annotations": [ann(5, 7, "b", name="preference")]},
    ]
    records, counts = label_studio.read_records(exported)
    result = labels.import_labels(con, records)
    assert result == {"imported": 4, "items": 3, "reviewers": ["label-studio:7", "label-studio:eve@x.org"]}
    current = {(r["item_id"], r["reviewer"]): r for r in labels.current_labels(con)}
    eve = current[(tasks[0]["data"]["item_id"], "label-studio:eve@x.org")]
    assert (eve["verdict"], eve["label"], eve["gold_answer"], eve["source"]) == ("edit", "incomplete", "gold!",
                                                                                  "label-studio")
    assert current[(pairs[0], "label-studio:7")]["preferred_version"] == queue.get_item(con, pairs[0])["version_b"]


def test_import_checks_everything_before_writing(con):
    answers, _ = fill(con, n=2, pairs=0)
    good = {"task_id": 1, "item_id": answers[0], "annotation_id": 1, "annotator": 7,
            "choices": {"verdict": ["accept"], "label": ["correct"]}, "texts": {}}
    bad_label = dict(good, annotation_id=2, item_id=answers[1], choices={"verdict": ["accept"], "label": ["meh"]})
    with pytest.raises(AnnotateError, match=r"label: must be one of"):
        labels.import_labels(con, [good, bad_label])
    unknown = dict(good, task_id=9, item_id="rv-elsewhere")
    with pytest.raises(AnnotateError, match=r"task 9 \(item 'rv-elsewhere'\).*data.item_id"):
        labels.import_labels(con, [good, unknown])
    no_verdict = dict(good, choices={"label": ["correct"]})
    with pytest.raises(AnnotateError, match=r"annotation 1: verdict: has no choice selected"):
        labels.import_labels(con, [no_verdict])
    assert con.execute("SELECT count(*) FROM review_labels").fetchone()[0] == 0


def test_annotate_config_checks_name_the_key():
    assert AnnotateConfig().min_kappa == 0.8 and AnnotateConfig().overlap == 0.1
    assert AnnotateConfig().sample_size == 100 and "unsafe" in AnnotateConfig().schema
    for kwargs, key in [({"min_kappa": 0}, "annotate.min_kappa"), ({"overlap": 2}, "annotate.overlap"),
                        ({"schema": ["one"]}, "annotate.schema"), ({"schema": ["a", "a"]}, "annotate.schema"),
                        ({"overlap_reviewers": 1}, "annotate.overlap_reviewers")]:
        with pytest.raises(ConfigError, match=key):
            AnnotateConfig(**kwargs)
    assert settings_of(object()) == AnnotateConfig()


def test_the_annotate_section_of_kaizen_toml():
    from kaizenlm import config as config_mod

    cfg = config_mod.from_dict({"annotate": {"reviewers": ["alice", "bob"], "min_kappa": 0.7,
                                             "schema": ["good", "bad"], "blind_pairs": 5}})
    assert settings_of(cfg) is cfg.annotate and cfg.annotate.reviewers == ["alice", "bob"]
    assert label_schema(cfg.annotate).labels == ("good", "bad") and cfg.annotate.blind_pairs == 5
    for raw, key in [({"min_kappa": 1.5}, "annotate.min_kappa"), ({"blind_pairs": -1}, "annotate.blind_pairs"),
                     ({"reviewers": ["a", "a"]}, "annotate.reviewers"), ({"sample_size": "many"}, "annotate.sample_size"),
                     ({"no_such_key": 1}, "annotate.no_such_key")]:
        with pytest.raises(ConfigError, match=key):
            config_mod.from_dict({"annotate": raw})
    assert "[annotate]" in config_mod.default_toml() and "# Least Fleiss' kappa" in config_mod.default_toml()


def test_cli_on_the_duckdb_file(kaizen_env, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"turn_id": f"t{i}", "prompt": f"q{i}?", "answer": f"a{i}",
                                          "correction": f"c{i}"}) for i in range(10)))

    def run(*argv) -> dict:
        assert main(["annotate", *argv, "--json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    assert run("queue", "add", "--from", "file", "--file", str(rows), "--kind", "correction")["added"] == 10
    assert run("queue", "assign", "--reviewers", "alice,bob")["overlap_items"] == 1
    overlap_item = run("queue", "list", "--reviewer", "alice", "--limit", "100")["items"]
    shared = next(i["item_id"] for i in overlap_item if len(i["reviewers"]) == 2)
    for who in ("alice", "bob"):
        got = run("label", shared, "--reviewer", who, "--verdict", "accept", "--label", "correct")
        assert got["reviewer"] == who
    nxt = run("queue", "next", "--reviewer", "alice")["item"]
    assert nxt["item_id"] != shared and nxt["kind"] == "correction"
    stats = run("stats")
    assert stats["label"]["fleiss_kappa"] == 1.0 and stats["gate"]["open"] is True
    out = tmp_path / "ls" / "tasks.json"
    written = run("export", "--format", "label-studio", "--out", str(out))["written"]
    assert written["answers"]["count"] == 10 and out.with_suffix(".xml").exists()
    tasks = json.loads(out.read_text())
    export = [{"id": n, **t, "annotations": [{"id": n, "completed_by": 3, "result": [
        {"from_name": "verdict", "to_name": "answer", "type": "choices", "value": {"choices": ["reject"]}},
        {"from_name": "label", "to_name": "answer", "type": "choices", "value": {"choices": ["wrong"]}}]}]}
        for n, t in enumerate(tasks[:3])]
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(export))
    assert run("import", str(exported))["imported"] == 3
    # bad input: exit 2 with the field named
    assert main(["annotate", "label", shared, "--reviewer", "alice", "--verdict", "edit", "--label", "wrong"]) == 2
    assert "gold_answer" in capsys.readouterr().err
    assert main(["annotate", "queue", "add", "--from", "file", "--file", str(rows)]) == 2
    assert "--kind" in capsys.readouterr().err
    assert main(["annotate", "queue", "add", "--from", "corrections", "--since", "yesterday"]) == 2
    assert "--since" in capsys.readouterr().err
    assert main(["annotate", "queue", "assign"]) == 2
    assert "--reviewers" in capsys.readouterr().err
