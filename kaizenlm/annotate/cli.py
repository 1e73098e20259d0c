"""`kaizen annotate queue|label|stats|export|import`: the human review queue from the command line.

`stats --from-label-studio FILE` reads a Label Studio JSON export and needs nothing else (no
stack, no DuckDB). The other subcommands work on the review tables through
kaizenlm.annotate.client: the controller's /admin/v1/annotate routes while it runs (with the
admin key, so `--reviewer` may name anyone), else the DuckDB file directly. Bad input exits 2
with the field named; nothing is stored then.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from kaizenlm.annotate.settings import BLIND_VERDICTS, KINDS, VERDICTS, AnnotateError, settings_of
from kaizenlm.command import Command
from kaizenlm.errors import UsageError

HELP = "human review: queue items, label them, measure agreement (kappa), Label Studio export/import"
EXAMPLE = "kaizen annotate stats --from-label-studio export.json --json"
SOURCES = ("corrections", "disagreements", "sample", "file")

EXAMPLES = {
    "queue": "kaizen annotate queue add --from corrections --since 2025-01-01 && "
             "kaizen annotate queue assign --reviewers alice,bob,carol",
    "status": "kaizen annotate queue status --json",
    "list": "kaizen annotate queue list --kind correction --reviewer alice --limit 20",
    "add": "kaizen annotate queue add --from sample --size 100 --since 2025-01-06 --until 2025-01-13",
    "assign": "kaizen annotate queue assign --reviewers alice,bob,carol --overlap 0.1",
    "next": "kaizen annotate queue next --reviewer alice",
    "sweep": "kaizen annotate queue sweep --until 2025-01-13   (what the weekly tier runs)",
    "label": "kaizen annotate label rv-0123456789abcdef --reviewer alice --verdict edit --label incomplete "
             "--gold-answer 'Reset it from Settings > Security.'",
    "stats": "kaizen annotate stats --from-label-studio export.json --json",
    "export": "kaizen annotate export --format label-studio --kind correction --out tasks.json",
    "import": "kaizen annotate import export.json",
}


def _parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, epilog=f"Example:\n  {EXAMPLES[name]}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="annotate_command", metavar="SUBCOMMAND", required=True)
    queue = _parser(sub, "queue", "the review queue: status, list, add items, assign reviewers, next item")
    qsub = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    _parser(qsub, "status", "items per kind (assigned, labelled, overlap) and open items per reviewer")
    lst = _parser(qsub, "list", "queued items, newest first (what reviewers see: blind pairs without versions)")
    lst.add_argument("--kind", choices=KINDS, help="only this kind")
    lst.add_argument("--reviewer", help="only items assigned to this reviewer")
    lst.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    add = _parser(qsub, "add", "queue items from corrections, feedback disagreements, a random sample, or a file")
    add.add_argument("--from", dest="source", choices=SOURCES, required=True,
                     help="where the items come from; 'file' reads --file (JSON list or JSON lines of rows)")
    add.add_argument("--file", type=Path, help="rows for --from file (see docs/ANNOTATION.md for their fields)")
    add.add_argument("--kind", choices=KINDS, help="kind of the rows in --file (e.g. blind_pair)")
    add.add_argument("--since", help="start of the window, inclusive (ISO date or time)")
    add.add_argument("--until", help="end of the window, exclusive (ISO date or time)")
    add.add_argument("--size", type=int, help="sample size for --from sample (default: annotate.sample_size)")
    add.add_argument("--limit", type=int, help="at most this many items (corrections, disagreements)")
    add.add_argument("--batch", help="a name for this batch (default: the source and today's date)")
    assign = _parser(qsub, "assign", "assign every unassigned item; the overlap share gets 2+ reviewers")
    assign.add_argument("--reviewers", help="comma-separated names (default: annotate.reviewers)")
    assign.add_argument("--overlap", type=float, help="share of items for 2+ reviewers (default: annotate.overlap)")
    sweep = _parser(qsub, "sweep", "queue the week's corrections, disagreements and sample; assign to annotate.reviewers")
    sweep.add_argument("--until", help="end of the window, exclusive (ISO date or time; default now)")
    sweep.add_argument("--days", type=float, default=7.0, help="length of the window in days (default 7)")
    nxt = _parser(qsub, "next", "the reviewer's next open item")
    nxt.add_argument("--reviewer", required=True)
    nxt.add_argument("--kind", choices=KINDS, help="only this kind")
    label = _parser(sub, "label", "record a reviewer's label on one item")
    label.add_argument("item_id", metavar="ITEM_ID")
    label.add_argument("--reviewer", required=True, help="who labels (a named reviewer)")
    label.add_argument("--verdict", required=True, choices=(*VERDICTS, *BLIND_VERDICTS),
                       help="accept | edit | reject; on a blind pair a | b | tie | both_bad")
    label.add_argument("--label", help="a label of the schema (annotate.schema), e.g. correct, incomplete, wrong")
    gold = label.add_mutually_exclusive_group()
    gold.add_argument("--gold-answer", help="the corrected answer (verdict edit)")
    gold.add_argument("--gold-file", type=Path, help="read the corrected answer from this file")
    label.add_argument("--note", help="free text kept with the label")
    stats = _parser(sub, "stats", "agreement: Fleiss' kappa over all reviewers, Cohen's kappa per pair")
    stats.add_argument("--from-label-studio", type=Path, metavar="FILE",
                       help="a Label Studio JSON export (no stack needed); default: the labels in DuckDB")
    stats.add_argument("--field", help="the <Choices> name to measure in the export (default: label, or the only one)")
    stats.add_argument("--min-kappa", type=float, help="threshold to report against (default: annotate.min_kappa)")
    stats.add_argument("--check", action="store_true", help="exit 1 when agreement is below the threshold or unknown")
    export = _parser(sub, "export", "write queued items as Label Studio tasks plus the matching labelling config")
    export.add_argument("--format", choices=("label-studio",), default="label-studio")
    export.add_argument("--kind", choices=KINDS, help="only this kind (blind pairs always go to their own file)")
    export.add_argument("--reviewer", help="only items assigned to this reviewer")
    export.add_argument("--limit", type=int, default=1000, help="at most this many items (default 1000)")
    export.add_argument("--out", type=Path, required=True, help="the tasks file; the config goes beside it (.xml)")
    imp = _parser(sub, "import", "record the labels of a Label Studio JSON export (tasks written by export)")
    imp.add_argument("file", type=Path, metavar="FILE")
    for sp in (*qsub.choices.values(), label, stats, export, imp):
        sp.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args, cfg) -> int:
    from kaizenlm.annotate.client import AnnotateClient, AnnotateUnavailable

    settings = settings_of(cfg)
    try:
        if args.annotate_command == "stats" and args.from_label_studio is not None:
            result = _stats_from_label_studio(args, settings)
        else:
            result = _dispatch(args, AnnotateClient(cfg), settings)
    except (AnnotateError, AnnotateUnavailable) as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(_text(args, result))
    if args.annotate_command == "stats" and args.check and not _stats_pass(result):
        return 1
    return 0


def _when(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UsageError(f"--{name}: not a date or time: {value!r} (ISO 8601, e.g. 2025-01-31)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


def _dispatch(args, client, settings) -> dict:
    command = args.annotate_command
    if command == "queue":
        action = args.queue_command
        if action == "status":
            return client.status()
        if action == "list":
            return client.items(kind=args.kind, reviewer=args.reviewer, limit=args.limit)
        if action == "add":
            return _add(args, client)
        if action == "sweep":
            return client.sweep(until=_when(args.until, "until"), days=args.days)
        if action == "assign":
            reviewers = [r.strip() for r in args.reviewers.split(",")] if args.reviewers else list(settings.reviewers)
            if not reviewers:
                raise UsageError("--reviewers: name the reviewers (e.g. --reviewers alice,bob) or set annotate.reviewers")
            return client.assign(reviewers, overlap=args.overlap)
        return client.next_item(args.reviewer, kind=args.kind)
    if command == "label":
        gold = args.gold_answer
        if args.gold_file is not None:
            gold = _read_text(args.gold_file, "--gold-file")
        return client.label(args.item_id, args.reviewer, args.verdict, label=args.label, gold_answer=gold,
                            note=args.note)
    if command == "stats":
        min_kappa = None if args.min_kappa is None else _check_kappa(args.min_kappa)
        return client.stats(min_kappa=min_kappa)
    if command == "export":
        return _export(args, client)
    return _import(args, client)


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{flag}: cannot read {path}: {e.strerror or e}") from None


def _add(args, client) -> dict:
    since, until = _when(args.since, "since"), _when(args.until, "until")
    batch = args.batch or f"{args.source}-{datetime.now(UTC).date().isoformat()}"
    if args.source == "file":
        if args.file is None or args.kind is None:
            raise UsageError("--from file needs --file FILE and --kind (one of " + ", ".join(KINDS) + ")")
        return client.add_rows(args.kind, _rows_of(args.file), batch=batch)
    if args.file is not None or args.kind is not None:
        raise UsageError(f"--file and --kind go with --from file, not --from {args.source}")
    if args.size is not None and args.size < 0:
        raise UsageError(f"--size: must be >= 0 (got {args.size})")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit: must be >= 1 (got {args.limit})")
    return client.add_from(args.source, since=since, until=until, size=args.size, limit=args.limit, batch=batch)


def _rows_of(path: Path) -> list:
    text = _read_text(path, "--file")
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as e:
            raise UsageError(f"--file: {path} is neither a JSON list nor JSON lines ({e})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UsageError(f"--file: {path} must hold a list of rows (got {type(data).__name__})")
    return data


def _export(args, client) -> dict:
    result = client.export(kind=args.kind, reviewer=args.reviewer, limit=args.limit)
    out, written = args.out, {}
    for name in ("answers", "blind_pairs"):
        group = result.get(name)
        if not group:
            continue
        both = "answers" in result and "blind_pairs" in result
        tasks_path = out.with_name(f"{out.stem}.blind_pairs{out.suffix or '.json'}") if name == "blind_pairs" and both \
            else out
        config_path = tasks_path.with_suffix(".xml")
        try:
            tasks_path.parent.mkdir(parents=True, exist_ok=True)
            tasks_path.write_text(json.dumps(group["tasks"], indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            config_path.write_text(group["config"], encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--out: cannot write {tasks_path}: {e.strerror or e}") from None
        written[name] = {"tasks": str(tasks_path), "config": str(config_path), "count": len(group["tasks"])}
    return {"format": args.format, "written": written, "items": result["items"]}


def _import(args, client) -> dict:
    from kaizenlm.annotate import label_studio

    data = label_studio.load_export(args.file)  # read here: the controller may run on another machine
    return {"file": str(args.file), **client.import_export(data)}


def _check_kappa(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise UsageError(f"--min-kappa: must be in (0, 1] (got {value})")
    return value


def _stats_from_label_studio(args, settings) -> dict:
    from kaizenlm.annotate import agreement, label_studio

    min_kappa = settings.min_kappa if args.min_kappa is None else _check_kappa(args.min_kappa)
    records, counts = label_studio.read_records(args.from_label_studio)
    field = label_studio.pick_field(records, args.field)
    annotations = label_studio.annotations_of(records, field)
    summary = agreement.summarize(annotations, min_kappa=min_kappa)
    if counts["cancelled"]:
        summary["notes"].append(f"{counts['cancelled']} cancelled (skipped) annotation(s) left out")
    return {"source": str(args.from_label_studio), "field": field, "tasks": counts["tasks"],
            "cancelled_skipped": counts["cancelled"], **summary}


def _stats_pass(result: dict) -> bool:
    gate = result.get("gate")
    if gate is not None:
        return bool(gate["open"])
    return bool(result.get("meets_min_kappa"))


# ------------------------------------------------------------------------------ text output


def _k(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _agreement_lines(s: dict, title: str) -> list[str]:
    lines = [f"{title}: {s['items']} item(s), {s['labels']} label(s), {len(s['annotators'])} annotator(s)"]
    if s["annotators"]:
        lines.append("  annotators: " + ", ".join(map(str, s["annotators"])))
    lines.append(f"  Fleiss' kappa {_k(s['fleiss_kappa'])} over {s['items_rated_2plus']} item(s) rated 2+")
    for p in s["pairwise_cohen_kappa"]:
        agree = "" if p["observed"] is None else f", {p['observed']:.0%} alike"
        lines.append(f"  Cohen's kappa {p['a']} / {p['b']}: {_k(p['kappa'])} ({p['items']} shared{agree})")
    lines += [f"  note: {n}" for n in s["notes"]]
    return lines


def _text(args, result: dict) -> str:
    command = args.annotate_command
    if command == "stats":
        if "gate" in result:
            lines = _agreement_lines(result["label"], f"schema labels ({', '.join(result['schema'])})")
            lines += _agreement_lines(result["verdict"], "verdicts (accept/edit/reject)")
            lines += _agreement_lines(result["preference"], "blind-pair preferences")
            gate = result["gate"]
            lines.append(("labels enter training: " if gate["open"] else "labels stay out of training: ")
                         + gate["reason"])
            for version, r in (result.get("human_win_rates") or {}).items():
                lines.append(f"human win rate of {version} vs {r['human_win_rate_vs']}: {_k(r['human_win_rate'])} "
                             f"over {r['human_comparisons']} blind comparison(s)")
            return "\n".join(lines)
        lines = _agreement_lines(result, f"{result['source']}, field {result['field']!r}")
        verdict = result.get("meets_min_kappa")
        lines.append(f"  min_kappa {result['min_kappa']}: " + {True: "met", False: "NOT met", None: "unknown"}[verdict])
        return "\n".join(lines)
    if command == "queue":
        return _queue_text(args.queue_command, result)
    if command == "label":
        return (f"labelled {result['item_id']} ({result['kind']}) by {result['reviewer']}: {result['verdict']}"
                + (f", {result['label']}" if result["label"] else ""))
    if command == "export":
        if not result["written"]:
            return "nothing to export: the queue has no such items"
        return "\n".join(f"{name}: {w['count']} task(s) -> {w['tasks']}  (labelling config: {w['config']})"
                         for name, w in result["written"].items())
    return (f"imported {result['imported']} label(s) on {result['items']} item(s) by "
            f"{', '.join(result['reviewers']) or 'nobody'} ({result['cancelled']} cancelled annotation(s) skipped)")


def _queue_text(action: str, result: dict) -> str:
    if action == "status":
        if not result["per_kind"]:
            return "the review queue is empty; `kaizen annotate queue add --from corrections` fills it"
        lines = [f"{k:13} {v['items']:6} items  {v['assigned']:6} assigned  {v['labelled']:6} labelled  "
                 f"{v['overlap_items']:5} overlap" for k, v in result["per_kind"].items()]
        lines += [f"open for {r}: {n}" for r, n in result["open_per_reviewer"].items()]
        gate = result.get("gate")
        if gate:
            lines.append(("labels enter training: " if gate["open"] else "labels stay out of training: ")
                         + gate["reason"])
        return "\n".join(lines)
    if action == "sweep":
        lines = [f"queued {sum(result['added'].values())} item(s) from {result['since']} to {result['until']}: "
                 + ", ".join(f"{k} {v}" for k, v in result["added"].items())]
        if result["assigned"]:
            lines.append(f"assigned {result['assigned']['items']} item(s) to {', '.join(result['assigned']['per_reviewer'])}")
        return "\n".join(lines + [f"warning: {w}" for w in result["warnings"]])
    if action == "list":
        return "\n".join(f"{i['item_id']}  {i['kind']:12}  {len(i['reviewers'])} reviewer(s)  {i['labels']} label(s)  "
                         f"{i['prompt'][:60]!r}" for i in result["items"]) or "no items"
    if action == "add":
        return f"queued {result['added']} {result['kind']} item(s) ({result['already_queued']} were queued before)"
    if action == "assign":
        lines = [f"assigned {result['assigned_items']} item(s) ({result['overlap_items']} to 2+ reviewers)"]
        lines += [f"open for {r}: {n}" for r, n in sorted(result["per_reviewer"].items())]
        return "\n".join(lines + [f"warning: {w}" for w in result["warnings"]])
    item = result["item"]
    if item is None:
        return f"nothing open for {result['reviewer']}"
    body = ([f"A: {item['answer_a']}", f"B: {item['answer_b']}"] if item["kind"] == "blind_pair"
            else [f"answer: {item['answer']}"] + ([f"correction: {item['correction']}"] if item.get("correction") else []))
    return "\n".join([f"{item['item_id']} ({item['kind']}, {item['remaining']} open)", f"question: {item['prompt']}",
                      *body])


ANNOTATE = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
