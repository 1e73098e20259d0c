"""Label Studio interchange against files in the formats Label Studio documents
(labelstud.io/guide/task_format: tasks with annotations, `completed_by` as a user id or a
user object, `result` entries of type "choices" / "textarea", `was_cancelled`), and
`kaizen annotate stats --from-label-studio` with no stack running."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from kaizenlm.annotate import label_studio
from kaizenlm.annotate.label_studio import Annotation, LabelStudioError
from kaizenlm.annotate.settings import LabelSchema
from kaizenlm.cli import main


def choices(value: str | list[str], name: str = "label", to_name: str = "answer") -> dict:
    return {"id": "r" + name, "from_name": name, "to_name": to_name, "type": "choices", "origin": "manual",
            "value": {"choices": value if isinstance(value, list) else [value]}}


def annotation(ann_id: int, completed_by, *results, cancelled: bool = False) -> dict:
    return {"id": ann_id, "completed_by": completed_by, "result": list(results), "was_cancelled": cancelled,
            "ground_truth": False, "created_at": "2025-03-09T22:16:08.728353Z",
            "updated_at": "2025-03-09T22:16:08.728378Z", "lead_time": 4.2, "task": ann_id // 10}


BOB = {"id": 2, "first_name": "Bob", "last_name": "Jones", "email": "bob@example.com"}


def export_fixture() -> list[dict]:
    """Three tasks, annotators 1 (bare id), bob (object, and once as his bare id 2), 3."""
    return [
        {"id": 1, "project": 83, "data": {"item_id": "rv-1", "prompt": "q1", "answer": "a1"},
         "annotations": [annotation(11, 1, choices("correct")), annotation(12, BOB, choices("correct"))],
         "predictions": [{"model_version": "m1", "result": [choices("wrong")]}]},
        {"id": 2, "project": 83, "data": {"item_id": "rv-2", "prompt": "q2", "answer": "a2"},
         "annotations": [annotation(21, 1, choices("wrong")), annotation(22, 2, choices("incomplete")),
                         annotation(23, 3, cancelled=True)]},
        {"id": 3, "project": 83, "data": {"prompt": "q3", "answer": "a3"},
         "annotations": [annotation(31, 3, choices("wrong"))]},
        {"id": 4, "project": 83, "data": {"item_id": "rv-4", "prompt": "q4", "answer": "a4"}, "annotations": []},
    ]


def test_read_export_completed_by_as_id_or_object_and_cancelled_skipped(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export_fixture()))
    got = label_studio.read_export(path)
    assert got == [
        Annotation("rv-1", 1, "correct"), Annotation("rv-1", "bob@example.com", "correct"),
        Annotation("rv-2", 1, "wrong"), Annotation("rv-2", "bob@example.com", "incomplete"),
        Annotation(3, 3, "wrong"),  # no data.item_id: Label Studio's task id
    ]
    records, counts = label_studio.read_records(path)
    assert counts == {"tasks": 4, "annotations": 6, "cancelled": 1, "tasks_without_annotations": 1}
    assert records[0]["choices"] == {"label": ["correct"]}
    # the same data, parsed or as JSON text
    assert label_studio.read_export(export_fixture()) == got
    assert label_studio.read_export(json.dumps(export_fixture())) == got


def test_an_object_without_email_is_named_by_its_id():
    data = [{"id": 1, "data": {}, "annotations": [annotation(1, {"id": 9, "email": ""}, choices("ok"))]}]
    assert label_studio.read_export(data) == [Annotation(1, 9, "ok")]


def test_missing_choices_name_the_task_and_field():
    data = export_fixture()
    data[1]["annotations"][0]["result"] = []
    with pytest.raises(LabelStudioError, match=r"task 2, annotation 21 by 1, field 'label'.*no choice selected"):
        label_studio.read_export(data)


def test_two_choices_in_a_single_label_field_is_an_error():
    data = [{"id": 5, "data": {}, "annotations": [annotation(1, 1, choices(["wrong", "unsafe"]))]}]
    with pytest.raises(LabelStudioError, match=r"task 5.*field 'label'.*2 choices"):
        label_studio.read_export(data)


def test_field_choice():
    data = [{"id": 1, "data": {}, "annotations": [
        annotation(1, 1, choices("accept", name="verdict"), choices("good", name="quality")),
        annotation(2, 2, choices("reject", name="verdict"), choices("good", name="quality"))]}]
    with pytest.raises(LabelStudioError, match=r"several <Choices> fields \(verdict, quality\).*--field"):
        label_studio.read_export(data)
    assert [a.label for a in label_studio.read_export(data, field="quality")] == ["good", "good"]
    with pytest.raises(LabelStudioError, match="no <Choices> named 'label'.*found: verdict, quality"):
        label_studio.read_export(data, field="label")
    single = [{"id": 1, "data": {}, "annotations": [annotation(1, 1, choices("x", name="sentiment"))]}]
    assert label_studio.read_export(single) == [Annotation(1, 1, "x")]


def test_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(LabelStudioError, match="expected a JSON list of tasks"):
        label_studio.read_export('{"foo": 1}')
    with pytest.raises(LabelStudioError, match="JSON-MIN"):
        label_studio.read_export([{"id": 1, "label": "x", "annotator": 1, "annotation_id": 3}])
    with pytest.raises(LabelStudioError, match=r"task 1, annotation 1.completed_by"):
        label_studio.read_export([{"id": 1, "annotations": [{"id": 1, "result": [choices("x")]}]}])
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(LabelStudioError, match="is not JSON"):
        label_studio.read_export(bad)
    with pytest.raises(LabelStudioError, match="cannot read"):
        label_studio.read_export(tmp_path / "missing.json")


def test_legacy_completions_are_read():
    data = [{"id": 1, "data": {}, "completions": [annotation(1, 4, choices("ok")), annotation(2, 5, choices("ok"))]}]
    assert [a.annotator for a in label_studio.read_export(data)] == [4, 5]


def test_textarea_results_are_read_as_texts():
    text = {"from_name": "gold_answer", "to_name": "answer", "type": "textarea", "value": {"text": ["line 1", "line 2"]}}
    records, _ = label_studio.read_records([{"id": 1, "data": {}, "annotations": [
        annotation(1, 1, choices("edit", name="verdict"), text)]}])
    assert records[0]["texts"] == {"gold_answer": "line 1\nline 2"}


def _config_vars(xml: str) -> set[str]:
    root = ET.fromstring(xml)  # well-formed XML
    assert root.tag == "View"
    return set(re.findall(r'value="\$(\w+)"', xml))


def test_export_tasks_and_labelling_config_match():
    schema = LabelSchema(("correct", "wrong", 'odd "quote" & <tag>'))
    items = [{"item_id": "rv-1", "kind": "correction", "prompt": "q", "answer": "a", "correction": "c"},
             {"item_id": "rv-2", "kind": "sample", "prompt": "q2", "answer": "a2", "correction": None}]
    tasks = label_studio.export_tasks(items, schema)
    assert tasks == [
        {"data": {"item_id": "rv-1", "kind": "correction", "prompt": "q", "answer": "a", "correction": "c"}},
        {"data": {"item_id": "rv-2", "kind": "sample", "prompt": "q2", "answer": "a2", "correction": ""}},
    ]
    xml = label_studio.labelling_config(schema)
    assert _config_vars(xml) <= set(tasks[0]["data"])
    root = ET.fromstring(xml)
    names = {c.get("name"): [x.get("value") for x in c] for c in root.iter("Choices")}
    assert names == {"verdict": ["accept", "edit", "reject"], "label": list(schema.labels)}
    assert [t.get("name") for t in root.iter("TextArea")] == ["gold_answer"]
    for control in root.iter("Choices"):
        assert control.get("toName") in {t.get("name") for t in root.iter("Text")}


def test_blind_pairs_export_without_versions():
    item = {"item_id": "rv-9", "kind": "blind_pair", "prompt": "q", "answer_a": "x", "answer_b": "y",
            "version_a": "adapter-0001", "version_b": "adapter-0002"}
    tasks = label_studio.export_tasks([item])
    assert tasks == [{"data": {"item_id": "rv-9", "prompt": "q", "answer_a": "x", "answer_b": "y"}}]
    assert "adapter" not in json.dumps(tasks)
    xml = label_studio.labelling_config(blind=True)
    assert _config_vars(xml) <= set(tasks[0]["data"])
    prefs = [(c.get("value"), c.get("alias")) for c in ET.fromstring(xml).iter("Choice")]
    assert [alias for _, alias in prefs] == ["a", "b", "tie", "both_bad"]
    with pytest.raises(label_studio.AnnotateError, match=r"items\[1\].kind.*separate"):
        label_studio.export_tasks([item, {"item_id": "rv-1", "kind": "sample", "prompt": "q", "answer": "a"}])
    with pytest.raises(label_studio.AnnotateError, match=r"items\[0\].answer_b"):
        label_studio.export_tasks([{**item, "answer_b": ""}])


def test_stats_from_label_studio_needs_no_stack(kaizen_env, tmp_path, capsys):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export_fixture()))
    assert main(["annotate", "stats", "--from-label-studio", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["annotators"] == [1, "bob@example.com", 3]
    assert out["items"] == 3 and out["tasks"] == 4 and out["cancelled_skipped"] == 1
    # rv-1 correct/correct (P 1), rv-2 wrong/incomplete (P 0); shares correct 2/4, wrong 1/4, incomplete 1/4:
    # P_e = 0.375, kappa = (0.5 - 0.375) / 0.625 = 0.2
    assert out["fleiss_kappa"] == pytest.approx(0.2)
    assert out["pairwise_cohen_kappa"][0] == {"a": 1, "b": "bob@example.com", "kappa": pytest.approx(1 / 3),
                                              "items": 2, "observed": 0.5}
    assert {(p["a"], p["b"]) for p in out["pairwise_cohen_kappa"]} == {
        (1, "bob@example.com"), (1, 3), ("bob@example.com", 3)}
    assert out["meets_min_kappa"] is False
    assert not (tmp_path / "home" / "kaizen.duckdb").exists()  # no DuckDB touched
    assert main(["annotate", "stats", "--from-label-studio", str(path), "--check"]) == 1
    assert "Fleiss' kappa 0.200" in capsys.readouterr().out


def test_stats_bad_input_exits_2_naming_the_field(kaizen_env, tmp_path, capsys):
    data = export_fixture()
    data[0]["annotations"][1]["result"] = [choices("correct", name="other")]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(data))
    assert main(["annotate", "stats", "--from-label-studio", str(path)]) == 2
    err = capsys.readouterr().err
    assert "task 1, annotation 12 by bob@example.com, field 'label'" in err
    assert main(["annotate", "stats", "--from-label-studio", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["annotate", "stats", "--from-label-studio", str(path), "--min-kappa", "2"]) == 2
    assert "--min-kappa" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["annotate", "stats"], ["annotate", "queue", "add"], ["annotate", "label"],
                                  ["annotate", "export"], ["annotate", "import"], ["annotate", "queue", "assign"]])
def test_every_subcommand_help_has_an_example(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "Example:\n  kaizen annotate" in capsys.readouterr().out
