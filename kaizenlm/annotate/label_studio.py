"""Label Studio interchange: review items out as tasks (with a matching labelling config),
labels in from Label Studio's JSON export. No Label Studio package is needed: both sides are
the JSON formats Label Studio documents (labelstud.io/guide/tasks, /guide/task_format, /tags).

Tasks (import into Label Studio): a JSON list of ``{"data": {...}}``; every key the config
names as ``$key`` must be in ``data``. Ours carry ``item_id`` so the labels find their item
on the way back.

Export (Label Studio's "JSON" export): a list of tasks, each
``{"id", "data", "annotations": [{"id", "completed_by", "result": [...], "was_cancelled", ...}]}``.
``completed_by`` is the user's integer id, or a user object ``{"id", "email", "first_name",
"last_name"}`` (exports that include user details). A result of a ``<Choices>`` control is
``{"from_name", "to_name", "type": "choices", "value": {"choices": [...]}}``; a ``<TextArea>``
result is ``{"type": "textarea", "value": {"text": [...]}}``. Cancelled (skipped) annotations
are left out; predictions are model output, not people, and are ignored. Exports of Label
Studio before 1.0 call the annotations ``completions``; those are read too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple
from xml.sax.saxutils import escape, quoteattr

from kaizenlm.annotate.settings import DEFAULT_LABELS, VERDICTS, AnnotateError, LabelSchema

# What the export's choice values map to on a blind pair (the `alias` of each Choice below).
PREFERENCES = (("A is better", "a"), ("B is better", "b"), ("Tie", "tie"), ("Both bad", "both_bad"))
ANSWER_FIELDS = ("item_id", "kind", "prompt", "answer", "correction")
BLIND_FIELDS = ("item_id", "prompt", "answer_a", "answer_b")


class LabelStudioError(AnnotateError):
    """A Label Studio file that cannot be read; the message names the task and the field."""


class Annotation(NamedTuple):
    item_id: str | int
    """The task's data.item_id when it has one (tasks kaizen wrote), else Label Studio's task id."""
    annotator: str | int
    """As in the file: the user's email when completed_by is an object with one, else the user id."""
    label: str


# ------------------------------------------------------------------------------ out: tasks + config


def labelling_config(schema: LabelSchema | None = None, blind: bool = False) -> str:
    """The labelling config (Label Studio's XML) matching `export_tasks` for the same kind.

    Answers: the question, the answer and the user's correction as <Text>; <Choices> `verdict`
    (accept / edit / reject) and `label` (the schema); a <TextArea> `gold_answer` for edits.
    Blind pairs: the question and answers A and B side by side; <Choices> `preference` whose
    aliases (a, b, tie, both_bad) are what the export holds.
    """
    labels = (schema or LabelSchema(DEFAULT_LABELS)).labels
    if blind:
        prefs = "\n".join(f"    <Choice value={quoteattr(v)} alias={quoteattr(a)}/>" for v, a in PREFERENCES)
        return f"""<View>
  <Header value="Question"/>
  <Text name="prompt" value="$prompt"/>
  <View style="display: flex; gap: 1em;">
    <View style="flex: 50%;">
      <Header value="Answer A"/>
      <Text name="answer_a" value="$answer_a"/>
    </View>
    <View style="flex: 50%;">
      <Header value="Answer B"/>
      <Text name="answer_b" value="$answer_b"/>
    </View>
  </View>
  <Choices name="preference" toName="prompt" choice="single" required="true" showInline="true">
{prefs}
  </Choices>
</View>
"""
    verdicts = "\n".join(f"    <Choice value={quoteattr(v)}/>" for v in VERDICTS)
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return f"""<View>
  <Header value="Question"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Answer"/>
  <Text name="answer" value="$answer"/>
  <Header value="The user's correction (empty when there is none)"/>
  <Text name="correction" value="$correction"/>
  <Header value="{escape('Verdict: accept, edit (write the gold answer below) or reject')}"/>
  <Choices name="verdict" toName="answer" choice="single" required="true" showInline="true">
{verdicts}
  </Choices>
  <Header value="Label"/>
  <Choices name="label" toName="answer" choice="single" required="true" showInline="true">
{choices}
  </Choices>
  <TextArea name="gold_answer" toName="answer" rows="6" maxSubmissions="1" editable="true"
            placeholder="The corrected answer (verdict edit only)"/>
</View>
"""


def export_tasks(items: Iterable[Mapping], schema: LabelSchema | None = None) -> list[dict]:
    """Label Studio tasks for review items (reviewer views: `queue.list_items`, `queue.next_item`).

    All items must be answers (any kind but blind_pair) or all blind pairs, since one Label
    Studio project has one labelling config: `labelling_config(schema, blind=...)`. Versions
    behind a blind pair are never written. `schema` is accepted for symmetry with the config
    (and checked to be a LabelSchema); the tasks themselves do not depend on it.
    """
    if schema is not None and not isinstance(schema, LabelSchema):
        raise AnnotateError("schema", f"must be a LabelSchema (got {type(schema).__name__})")
    tasks, kinds = [], set()
    for n, item in enumerate(items):
        if not isinstance(item, Mapping) or not item.get("item_id") or not item.get("prompt"):
            raise AnnotateError(f"items[{n}]", "must be a review item with item_id and prompt")
        blind = item.get("kind") == "blind_pair"
        kinds.add(blind)
        if len(kinds) > 1:
            raise AnnotateError(f"items[{n}].kind", "blind pairs and answers need separate Label Studio projects "
                                "(different labelling configs): export them separately (--kind)")
        fields = BLIND_FIELDS if blind else ANSWER_FIELDS
        data = {f: ("" if item.get(f) is None else str(item[f])) for f in fields}
        for f in ("answer_a", "answer_b") if blind else ("answer",):
            if not data[f]:
                raise AnnotateError(f"items[{n}].{f}", "is empty: nothing to review")
        tasks.append({"data": data})
    return tasks


# ------------------------------------------------------------------------------ in: the JSON export


def load_export(source: str | Path | list | bytes) -> list:
    """The export's list of tasks from a path, JSON text/bytes, or already parsed data."""
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith(("[", "{"))):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise LabelStudioError("file", f"cannot read {path}: {e.strerror or e}") from None
        where = str(path)
    else:
        text, where = source, "the export"
    if isinstance(text, (str, bytes)):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise LabelStudioError("file", f"{where} is not JSON ({e}); export the project as 'JSON' in Label "
                                   "Studio") from None
    else:
        data = text
    if isinstance(data, Mapping) and "annotations" in data:
        data = [data]  # one task (the cloud-storage export writes one task per file)
    if not isinstance(data, list):
        raise LabelStudioError("file", f"{where}: expected a JSON list of tasks (Label Studio's JSON export), got "
                               f"{type(data).__name__}")
    return data


def _annotator(completed_by, where: str, emails: Mapping[int, str]):
    if isinstance(completed_by, Mapping):
        email, uid = completed_by.get("email"), completed_by.get("id")
        if isinstance(email, str) and email.strip():
            return email.strip()
        if isinstance(uid, (int, str)) and not isinstance(uid, bool) and str(uid).strip():
            return uid
        raise LabelStudioError(f"{where}.completed_by", "is an object without an email or id")
    if isinstance(completed_by, bool) or not isinstance(completed_by, (int, str)) or not str(completed_by).strip():
        raise LabelStudioError(f"{where}.completed_by", f"must be a user id or a user object (got {completed_by!r})")
    return emails.get(completed_by, completed_by)


def read_records(source) -> tuple[list[dict], dict]:
    """Every non-cancelled annotation of an export as a record, and counts of what was skipped.

    Record: {task_id, item_id, annotation_id, annotator, choices: {from_name: [values]},
    texts: {from_name: text}, completed_at}. A user that appears once as an object and once
    as a bare id is named by the object's email both times. Counts: {tasks, annotations,
    cancelled, tasks_without_annotations}.
    """
    tasks = load_export(source)
    emails: dict = {}
    for task in tasks:  # first pass: user id -> email, from every completed_by object in the file
        for ann in (task.get("annotations") or task.get("completions") or []) if isinstance(task, Mapping) else []:
            cb = ann.get("completed_by") if isinstance(ann, Mapping) else None
            if isinstance(cb, Mapping) and isinstance(cb.get("email"), str) and cb["email"].strip():
                emails[cb.get("id")] = cb["email"].strip()
    records, counts = [], {"tasks": len(tasks), "annotations": 0, "cancelled": 0, "tasks_without_annotations": 0}
    for n, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise LabelStudioError(f"tasks[{n}]", f"must be a task object (got {type(task).__name__})")
        task_id = task.get("id", n)
        where = f"task {task_id}"
        if "annotations" not in task and "completions" not in task:
            if "annotator" in task or "annotation_id" in task:
                raise LabelStudioError(where, "looks like Label Studio's JSON-MIN export; export as 'JSON' instead")
            raise LabelStudioError(f"{where}.annotations", "is missing: this is not a Label Studio JSON export")
        data = task.get("data") if isinstance(task.get("data"), Mapping) else {}
        item_id = data.get("item_id", task_id)
        annotations = task.get("annotations") or task.get("completions") or []
        if not isinstance(annotations, list):
            raise LabelStudioError(f"{where}.annotations", "must be a list")
        if not annotations:
            counts["tasks_without_annotations"] += 1
        for m, ann in enumerate(annotations):
            if not isinstance(ann, Mapping):
                raise LabelStudioError(f"{where}.annotations[{m}]", "must be an annotation object")
            ann_where = f"{where}, annotation {ann.get('id', m)}"
            counts["annotations"] += 1
            if ann.get("was_cancelled"):
                counts["cancelled"] += 1
                continue
            if "completed_by" not in ann:
                raise LabelStudioError(f"{ann_where}.completed_by", "is missing: who made this annotation?")
            choices, texts = {}, {}
            results = ann.get("result") or []
            if not isinstance(results, list):
                raise LabelStudioError(f"{ann_where}.result", "must be a list of results")
            for r in results:
                if not isinstance(r, Mapping):
                    raise LabelStudioError(f"{ann_where}.result", "must hold result objects")
                value = r.get("value") if isinstance(r.get("value"), Mapping) else {}
                name = r.get("from_name")
                if r.get("type") == "choices" or "choices" in value:
                    picked = value.get("choices")
                    if not isinstance(picked, list) or not all(isinstance(c, str) for c in picked):
                        raise LabelStudioError(f"{ann_where}, field {name!r}", "value.choices must be a list of strings")
                    choices.setdefault(name, []).extend(picked)
                elif r.get("type") == "textarea" or "text" in value:
                    text = value.get("text")
                    texts[name] = "\n".join(text) if isinstance(text, list) else str(text or "")
            records.append({"task_id": task_id, "item_id": item_id, "annotation_id": ann.get("id", m),
                            "annotator": _annotator(ann["completed_by"], ann_where, emails),
                            "choices": choices, "texts": texts,
                            "completed_at": ann.get("updated_at") or ann.get("created_at")})
    return records, counts


def choice_fields(records: Iterable[Mapping]) -> list[str]:
    """The names (from_name) of every <Choices> control seen in the records, first seen first."""
    return list(dict.fromkeys(name for r in records for name in r["choices"]))


def pick_field(records: list[Mapping], field: str | None = None) -> str:
    """The choices field to measure: `field` when given; else `label` when present, else the only one."""
    found = choice_fields(records)
    if field is not None:
        if field not in found and records:
            raise LabelStudioError("field", f"no <Choices> named {field!r} in the export (found: "
                                   f"{', '.join(map(str, found)) or 'none'})")
        return field
    if "label" in found or not found:
        return "label"
    if len(found) == 1:
        return found[0]
    raise LabelStudioError("field", f"the export has several <Choices> fields ({', '.join(map(str, found))}); "
                           "name the one to measure (--field)")


def read_export(source, field: str | None = None) -> list[Annotation]:
    """(item_id, annotator, label) for every non-cancelled annotation of a Label Studio JSON export.

    `source`: a path, JSON text, or the parsed list. `field`: the <Choices> name to read
    (default: `label`, or the only <Choices> in the file). An annotation without a choice in
    that field, or with more than one, raises LabelStudioError naming the task and the field.
    """
    records, _ = read_records(source)
    return annotations_of(records, pick_field(records, field))


def annotations_of(records: Iterable[Mapping], field: str) -> list[Annotation]:
    out = []
    for r in records:
        picked = r["choices"].get(field)
        where = f"task {r['task_id']}, annotation {r['annotation_id']} by {r['annotator']}"
        if not picked:
            raise LabelStudioError(f"{where}, field {field!r}", "has no choice selected (results missing or empty)")
        if len(picked) != 1:
            raise LabelStudioError(f"{where}, field {field!r}", f"has {len(picked)} choices {picked}; agreement on "
                                   "nominal labels needs exactly one")
        out.append(Annotation(r["item_id"], r["annotator"], picked[0]))
    return out
