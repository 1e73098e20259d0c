"""Labels on review items: record a reviewer's verdict (accept / edit with a gold answer /
reject, or A / B / tie / both_bad on a blind pair) with a schema label, read the current labels,
and measure agreement on them. Functions on a DuckDB connection (the controller's).

`review_labels` is append-only: a reviewer who labels an item again adds a row, and the
latest row (highest seq) of each (item, reviewer) is the one that counts (`current_labels`).
A blind-pair verdict is resolved to the version it prefers here, on the server, and stored in
`preferred_version`; it is never returned to the reviewer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import duckdb

from kaizenlm.annotate import agreement
from kaizenlm.annotate.queue import get_item
from kaizenlm.annotate.settings import BLIND_VERDICTS, KINDS, VERDICTS, AnnotateError, LabelSchema, NotFound
from kaizenlm.registry.transaction import transaction

LABEL_COLUMNS = ("item_id", "reviewer", "verdict", "label", "schema_id", "gold_answer", "preferred_version", "note",
                 "source", "ts")
SOURCES = ("kaizen", "label-studio")


def _optional_text(value, field_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise AnnotateError(field_name, f"must be a string (got {type(value).__name__})")
    return value.strip() or None


def record_label(con: duckdb.DuckDBPyConnection, item_id: str, reviewer: str, verdict: str, *,
                 label: str | None = None, gold_answer: str | None = None, note: str | None = None,
                 schema: LabelSchema | None = None, source: str = "kaizen", require_assignment: bool = False,
                 now: datetime | None = None) -> dict:
    """Record one reviewer's label on one item; returns the stored label (reviewer view).

    Rules (`check_label`), each broken one raising AnnotateError naming the field:
    - item_id names a queued item; reviewer is a non-empty name (with require_assignment, one
      the item is assigned to);
    - answers (every kind but blind_pair): verdict is accept, edit or reject; label is one of the
      schema's labels; `edit` needs gold_answer (the corrected answer, different from the
      served one); accept and reject take no gold_answer;
    - blind pairs: verdict is a, b, tie or both_bad (the answer shown as A or B is better);
      label is optional (then from the schema); no gold_answer.
    """
    row = check_label(con, item_id, reviewer, verdict, label=label, gold_answer=gold_answer, note=note,
                      schema=schema, source=source, require_assignment=require_assignment, now=now)
    return _insert(con, row)


def _insert(con: duckdb.DuckDBPyConnection, row: dict) -> dict:
    seq = con.execute(
        f"INSERT INTO review_labels ({', '.join(LABEL_COLUMNS)}) VALUES ({', '.join('?' * len(LABEL_COLUMNS))}) "
        "RETURNING seq", [row[c] for c in LABEL_COLUMNS]).fetchone()[0]
    shown = {k: v for k, v in row.items() if k not in ("preferred_version", "kind")}
    return {"seq": seq, "kind": row["kind"], **shown, "ts": shown["ts"].isoformat()}


def check_label(con: duckdb.DuckDBPyConnection, item_id: str, reviewer: str, verdict: str, *,
                label: str | None = None, gold_answer: str | None = None, note: str | None = None,
                schema: LabelSchema | None = None, source: str = "kaizen", require_assignment: bool = False,
                now: datetime | None = None) -> dict:
    """The label row `record_label` would store (reads only); raises AnnotateError naming the field."""
    schema = schema or LabelSchema()
    if not isinstance(item_id, str) or not item_id.strip():
        raise AnnotateError("item_id", "must be a non-empty item id")
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise AnnotateError("reviewer", "must be a non-empty name")
    reviewer = reviewer.strip()
    if source not in SOURCES:
        raise AnnotateError("source", f"must be one of {', '.join(SOURCES)} (got {source!r})")
    item = get_item(con, item_id)
    if item is None:
        raise NotFound("item_id", f"no review item {item_id!r}; `kaizen annotate queue list` shows the queue")
    if require_assignment and not con.execute(
            "SELECT 1 FROM review_assignments WHERE item_id = ? AND reviewer = ?", [item_id, reviewer]).fetchone():
        raise AnnotateError("reviewer", f"{reviewer!r} is not assigned item {item_id}")
    verdict = verdict.strip().lower() if isinstance(verdict, str) else verdict
    gold = _optional_text(gold_answer, "gold_answer")
    preferred = None
    if item["kind"] == "blind_pair":
        if verdict not in BLIND_VERDICTS:
            raise AnnotateError("verdict", f"a blind pair takes one of {', '.join(BLIND_VERDICTS)} (got {verdict!r})")
        if label is not None:
            schema.check(label)
        if gold is not None:
            raise AnnotateError("gold_answer", "a blind pair takes no gold answer; pick a, b, tie or both_bad")
        preferred = {"a": item["version_a"], "b": item["version_b"]}.get(verdict)
    else:
        if verdict not in VERDICTS:
            raise AnnotateError("verdict", f"must be one of {', '.join(VERDICTS)} (got {verdict!r})")
        schema.check(label)
        if verdict == "edit":
            if gold is None:
                raise AnnotateError("gold_answer", "verdict 'edit' needs the corrected answer (the gold answer)")
            if gold == (item["answer"] or "").strip():
                raise AnnotateError("gold_answer", "is the served answer unchanged; use verdict 'accept' instead")
        elif gold is not None:
            raise AnnotateError("gold_answer", f"only verdict 'edit' takes a gold answer (verdict is {verdict!r})")
    return {"item_id": item_id, "kind": item["kind"], "reviewer": reviewer, "verdict": verdict, "label": label,
            "schema_id": schema.schema_id, "gold_answer": gold, "preferred_version": preferred,
            "note": _optional_text(note, "note"), "source": source, "ts": now or datetime.now(UTC)}


def current_labels(con: duckdb.DuckDBPyConnection, *, kind: str | None = None, schema_id: str | None = None,
                   blind: bool | None = None) -> list[dict]:
    """The label that counts for each (item, reviewer): the latest. Filters: kind, schema_id,
    blind (True: blind pairs only, False: answers only). Server side: includes preferred_version."""
    if kind is not None and kind not in KINDS:
        raise AnnotateError("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    cols = ", ".join(f"l.{c}" for c in LABEL_COLUMNS)
    cursor = con.execute(
        f"SELECT l.seq, i.kind, {cols} FROM review_labels l JOIN review_items i USING (item_id) "
        "WHERE (? IS NULL OR i.kind = ?) AND (? IS NULL OR l.schema_id = ?) "
        "AND (? IS NULL OR (i.kind = 'blind_pair') = ?) "
        "QUALIFY row_number() OVER (PARTITION BY l.item_id, l.reviewer ORDER BY l.seq DESC) = 1 "
        "ORDER BY l.item_id, l.reviewer", [kind, kind, schema_id, schema_id, blind, blind])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def agreement_summary(con: duckdb.DuckDBPyConnection, schema: LabelSchema | None = None,
                      min_kappa: float = 0.8) -> dict:
    """Agreement on the labels that count, per what was labelled:

    - label: the schema label on answers, under this schema only (the figure that gates training);
    - verdict: accept / edit / reject on answers;
    - preference: a / b / tie / both_bad on blind pairs.

    Each is `agreement.summarize` output (fleiss_kappa, pairwise_cohen_kappa, items, ...).
    `gate` says whether reviewed labels may enter training and why.
    """
    schema = schema or LabelSchema()
    answers = current_labels(con, blind=False)
    in_schema = [r for r in answers if r["schema_id"] == schema.schema_id]
    pairs = current_labels(con, blind=True)
    out = {
        "schema_id": schema.schema_id, "schema": list(schema.labels),
        "label": agreement.summarize(((r["item_id"], r["reviewer"], r["label"]) for r in in_schema), min_kappa),
        "verdict": agreement.summarize(((r["item_id"], r["reviewer"], r["verdict"]) for r in answers), min_kappa),
        "preference": agreement.summarize(((r["item_id"], r["reviewer"], r["verdict"]) for r in pairs), min_kappa),
        "other_schema_labels": len(answers) - len(in_schema),
    }
    out["gate"] = training_gate(out["label"], min_kappa)
    return out


def training_gate(label_summary: Mapping, min_kappa: float) -> dict:
    """Whether reviewed labels may enter training: only when Fleiss' kappa on the schema label,
    over the items 2+ reviewers labelled, is at least min_kappa. `reason` says why not."""
    kappa = label_summary["fleiss_kappa"]
    if kappa is None:
        reason = ("no item has labels from 2 reviewers yet, so agreement is unknown; assign with overlap "
                  "(annotate.overlap) and label the overlap items")
        return {"open": False, "fleiss_kappa": None, "min_kappa": min_kappa, "reason": reason}
    if kappa < min_kappa:
        low = [f"{p['a']}/{p['b']} {p['kappa']:.2f}" for p in label_summary["pairwise_cohen_kappa"]
               if p["kappa"] is not None and p["kappa"] < min_kappa]
        reason = (f"agreement is below annotate.min_kappa: Fleiss' kappa {kappa:.3f} < {min_kappa} over "
                  f"{label_summary['items_rated_2plus']} item(s)" + (f"; lowest pairs: {', '.join(low)}" if low else ""))
        return {"open": False, "fleiss_kappa": kappa, "min_kappa": min_kappa, "reason": reason}
    return {"open": True, "fleiss_kappa": kappa, "min_kappa": min_kappa,
            "reason": f"Fleiss' kappa {kappa:.3f} >= {min_kappa} over {label_summary['items_rated_2plus']} item(s)"}


def import_labels(con: duckdb.DuckDBPyConnection, records: Iterable[Mapping], schema: LabelSchema | None = None,
                  now: datetime | None = None) -> dict:
    """Record labels read from a Label Studio export (`label_studio.read_records`).

    Each record needs item_id (a review item's id: tasks written by `export_tasks` carry it),
    annotator, and choices {from_name: [value]}: `verdict` (or `preference` on blind pairs),
    `label`, and texts {gold_answer}. Reviewers are named `label-studio:<annotator>`.
    All records are checked first; the first bad one raises AnnotateError naming the task and
    field, and nothing is written. Returns {imported, items, reviewers}.
    """
    schema = schema or LabelSchema()
    planned = []
    for rec in records:
        where = f"task {rec.get('task_id')!r} (item {rec.get('item_id')!r}), annotation {rec.get('annotation_id')!r}"
        choices, texts = rec.get("choices") or {}, rec.get("texts") or {}
        item = get_item(con, str(rec.get("item_id")))
        if item is None:
            raise AnnotateError(f"{where}: data.item_id", "names no review item here; import only tasks that "
                                "`kaizen annotate export --format label-studio` wrote")
        field_name = "preference" if item["kind"] == "blind_pair" else "verdict"
        verdict = _single(choices, field_name, where)
        label = _single(choices, "label", where, required=item["kind"] != "blind_pair")
        planned.append(dict(item_id=item["item_id"], reviewer=f"label-studio:{rec['annotator']}", verdict=verdict,
                            label=label, gold_answer=texts.get("gold_answer") if verdict == "edit" else None))
    rows = []
    for p in planned:  # every record is checked before any is written
        try:
            rows.append(check_label(con, schema=schema, source="label-studio", now=now, **p))
        except AnnotateError as e:
            raise AnnotateError(f"item {p['item_id']} by {p['reviewer']}: {e.field}", e.problem) from None
    with transaction(con):
        stored = [_insert(con, row) for row in rows]
    return {"imported": len(stored), "items": len({s["item_id"] for s in stored}),
            "reviewers": sorted({s["reviewer"] for s in stored})}


def _single(choices: Mapping, field_name: str, where: str, required: bool = True) -> str | None:
    values = choices.get(field_name)
    if not values:
        if required:
            raise AnnotateError(f"{where}: {field_name}", "has no choice selected")
        return None
    if len(values) != 1:
        raise AnnotateError(f"{where}: {field_name}", f"has {len(values)} choices {values}; exactly one is needed")
    return values[0]
