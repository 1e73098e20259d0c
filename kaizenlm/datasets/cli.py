"""`kaizen dataset` and `kaizen forget`: training-data snapshots, and the right to be forgotten.

`dataset` builds, lists, shows and verifies snapshots and inspects rewards; `forget --user ID`
deletes a user's turns, feedback and signals and marks every snapshot holding their data and
every model version built from those snapshots (tainted versions cannot be served). Both go
through the controller's admin API when it runs (kaizenlm.datasets.api), else on the DuckDB
file directly (kaizenlm.datasets.client).
"""

from __future__ import annotations

import sys

import orjson

from kaizenlm.command import Command
from kaizenlm.errors import UsageError

HELP = "curate feedback into SFT/DPO dataset snapshots (build, list, show, verify, rewards)"
EXAMPLE = "kaizen dataset build --since 2025-01-01 --holdout exam.jsonl   (then: kaizen dataset list)"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="curate a window of feedback and write (or reuse) its snapshot")
    _window_arguments(b)
    b.add_argument("--holdout", action="append", default=[], metavar="FILE",
                   help="held-out texts that training data must not contain (repeatable; adds to curation.holdout_path)")
    b.add_argument("--replay", metavar="FILE",
                   help="JSONL of general examples to mix in (default: curation.replay_path; none: no replay rows)")
    b.add_argument("--dry-run", action="store_true", help="curate and report, write nothing")
    b.add_argument("--no-reviews", dest="reviews", action="store_false",
                   help="leave human review labels out (default: use them while reviewers agree, docs/ANNOTATION.md)")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")

    ls = sub.add_parser("list", help="list registered snapshots, newest first")
    ls.add_argument("--json", action="store_true", help="print JSON")

    show = sub.add_parser("show", help="print a snapshot's manifest summary (or full manifest with --json)")
    show.add_argument("snapshot_id", help="snapshot id or unambiguous prefix")
    show.add_argument("--json", action="store_true", help="print the full manifest")

    ver = sub.add_parser("verify", help="check a snapshot's files and hashes against its manifest")
    ver.add_argument("snapshot_id", help="snapshot id or unambiguous prefix")

    r = sub.add_parser("rewards", help="reward distribution of a window, and implicit-vs-explicit calibration")
    _window_arguments(r)
    r.add_argument("--json", action="store_true", help="print JSON")


def _window_arguments(p) -> None:
    p.add_argument("--since", help="first day or time (ISO 8601; default: curation.window_days before --as-of)")
    p.add_argument("--until", help="end (exclusive), ISO 8601 (default: no end)")
    p.add_argument("--as-of", dest="as_of", help="use only events ingested by then (default: now)")
    p.add_argument("--all", dest="all_data", action="store_true", help="all data: ignore curation.window_days")


def run(args, cfg) -> int:
    from kaizenlm.datasets.client import AdminClient, AdminError

    client = AdminClient(cfg)
    action = {"build": _build, "list": _list, "show": _show, "verify": _verify, "rewards": _rewards}[args.action]
    try:
        return action(args, client)
    except AdminError as e:
        raise UsageError(str(e)) from None


def _dump(data) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _build(args, client) -> int:
    m = client.build(since=args.since, until=args.until, as_of=args.as_of, all_data=args.all_data,
                     holdout=list(args.holdout), replay=args.replay, dry_run=args.dry_run, reviews=args.reviews)
    if args.json:
        _dump(m)
        return 0
    verb = "would write" if args.dry_run else ("reused" if m["reused"] else "wrote")
    print(f"{verb} snapshot {m['snapshot_id']}  ({m['path']})")
    print_summary(m)
    print_user_report(m.get("user_anomalies"))
    return 0


def print_user_report(report: dict | None, shown: int = 10) -> None:
    """The per-user anomaly report of a build: who is flagged and why, then the heaviest correctors."""
    if not report:
        return
    t = report["thresholds"]
    action = "their turns are left out" if t["hold_flagged_users"] else "kept (curation.hold_flagged_users = false)"
    print(f"  users    {report['users']} in the window, {report['flagged']} flagged ({action}; flags: correction "
          f"rate >= {t['anomaly_correction_rate']} over >= {t['anomaly_min_corrections']} corrections, >= "
          f"{t['anomaly_duplicate_texts']} identical corrections, >= {t['anomaly_burst_events']} events in "
          f"{t['anomaly_burst_seconds']} s)")
    rows = [r for r in report["rows"] if r["flags"] or r["corrected_turns"]][:max(shown, report["flagged"])]
    if rows:
        print(f"    {'user':<24} {'turns':>6} {'corrected':>9} {'rate':>5} {'repeats':>7} {'burst':>5}  flags")
    for r in rows:
        print(f"    {r['user_id'][:24]:<24} {r['turns']:>6} {r['corrected_turns']:>9} {r['correction_rate']:>5.2f} "
              f"{r['duplicate_corrections']:>7} {r['burst_events']:>5}  {', '.join(r['flags']) or '-'}")


def step_rows(m: dict) -> list[tuple[str, dict]]:
    """(output, step) for every curation step of a manifest, in pipeline order."""
    return [(output, s) for output, steps in m.get("curation", {}).get("steps", {}).items() for s in steps]


def print_summary(m: dict) -> None:
    w = m["window"]
    print(f"  window   since {w['since'] or '-'}  until {w['until'] or '-'}  as of {w['as_of']}")
    c = m["counts"]
    print(f"  sft      train {c['sft_train']}  eval {c['sft_eval']}")
    print(f"  dpo      train {c['dpo_train']}  eval {c['dpo_eval']}")
    mix = m.get("mix_ratio") or {}
    if mix:
        print(f"  replay   {mix['replay_rows']} of {mix['sft_train_rows']} sft train rows ({mix['actual']}; configured "
              f"{mix['configured']}) from {mix['source']}")
    sources = m.get("pair_sources") or {}
    if sources:
        print("  pairs    " + ", ".join(f"{k} {v}" for k, v in sources.items()) + " (mined, before filters)")
    reviews = m.get("reviews")
    if reviews:
        used = reviews["used"]
        print(f"  reviews  {'used' if reviews['gate_open'] else 'NOT used'}: {reviews['reason']}"
              + (f"; {used['sft']} reviewed sft row(s), {used['pairs']} blind-comparison pair(s), "
                 f"{len(reviews['rejected_items'])} rejection(s)" if reviews["gate_open"] else ""))
    cur = m.get("curation", {})
    pii = {k: v for k, v in (cur.get("pii_replaced") or {}).items() if v}
    if pii:
        print("  pii      replaced " + ", ".join(f"<{k}> {v}" for k, v in pii.items()))
    print(f"  turns    {cur.get('turns', 0)} in the window, {cur.get('contaminated_turns', 0)} matched held-out texts")
    output = None
    for out, s in step_rows(m):
        if out != output:
            print(f"  {out}:")
            output = out
        why = ", ".join(f"{k} {v}" for k, v in s.get("dropped", {}).items())
        print(f"    {s['step']:<16} {s['in']:>8} -> {s['out']:<8} {why}".rstrip())
    for f in m.get("forgotten", []):
        print(f"  FORGOTTEN: holds data of a user who asked to be forgotten (subject {f['subject']}, {f['at']}); "
              "do not train on it")
    for warning in m.get("warnings", []):
        print(f"  warning: {warning}")


def _list(args, client) -> int:
    rows = client.list_snapshots()
    if args.json:
        _dump(rows)
        return 0
    if not rows:
        print("no snapshots yet; build one with `kaizen dataset build`")
        return 0
    print(f"{'snapshot':<20} {'created':<20} {'sft train/eval':>15} {'dpo train/eval':>15}  window")
    for r in rows:
        c, w = r["counts"], r["window"]
        flag = "  FORGOTTEN" if r["forgotten"] else ""
        print(f"{r['snapshot_id']:<20} {r['created_at'][:19]:<20} {c['sft_train']:>9}/{c['sft_eval']:<5} "
              f"{c['dpo_train']:>9}/{c['dpo_eval']:<5}  {(w['since'] or '-')[:10]} .. {(w['until'] or '-')[:10]}{flag}")
    return 0


def _show(args, client) -> int:
    m = client.show(args.snapshot_id)
    if args.json:
        _dump(m)
        return 0
    print(f"snapshot {m['snapshot_id']}  ({m['path']})")
    print(f"  content  {m['content_hash']}")
    code = m.get("code_version") or {}
    commit = f", commit {code['git_commit'][:12]}" if code.get("git_commit") else ""
    print(f"  created  {m['created_at']}  by kaizenlm {m.get('kaizenlm_version', '?')}{commit}")
    print_summary(m)
    return 0


def _verify(args, client) -> int:
    from pathlib import Path

    from kaizenlm.datasets import snapshots as datasets

    m = client.show(args.snapshot_id)
    path = Path(m["path"])
    if not path.is_dir():
        raise UsageError(f"{path} is not on this machine; run `kaizen dataset verify` where the controller runs")
    problems = datasets.verify(path)
    if problems:
        for p in problems:
            print(f"{path.name}: {p}", file=sys.stderr)
        return 1
    print(f"{path.name}: ok")
    return 0


def _rewards(args, client) -> int:
    summary = client.reward_report(since=args.since, until=args.until, as_of=args.as_of, all_data=args.all_data)
    if args.json:
        _dump(summary)
        return 0
    print(f"turns {summary['turns']}: {summary['with_reward']} with a reward ({summary['without_reward']} without), "
          f"{summary['with_explicit']} explicit, {summary['with_correction']} corrected; mean reward "
          f"{summary['mean_reward']}, mean confidence {summary['mean_confidence']}")
    peak = max((b["turns"] for b in summary["histogram"]), default=0) or 1
    for b in summary["histogram"]:
        print(f"  {b['from']:+.2f} .. {b['to']:+.2f}  {b['turns']:>8}  {'#' * round(40 * b['turns'] / peak)}")
    cal = summary["calibration"]
    print(f"calibration (implicit-only reward vs explicit ratings, {cal['turns_with_both']} turns with both): "
          f"agreement {cal['agreement']}, AUC {cal['auc']}")
    return 0


FORGET_HELP = "delete a user's turns, feedback and signals; mark the snapshots and model versions built from them"
FORGET_EXAMPLE = "kaizen forget --user user-0042 --dry-run   (then without --dry-run)"


def add_forget_arguments(p) -> None:
    p.add_argument("--user", required=True, metavar="ID", help="the pseudonymous user id the events carry")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted and marked")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_forget(args, cfg) -> int:
    from kaizenlm.datasets.client import AdminClient, AdminError

    if not args.user.strip():
        raise UsageError("--user is empty; pass the pseudonymous user id the events carry")
    try:
        report = AdminClient(cfg).forget(args.user, dry_run=args.dry_run)
    except AdminError as e:
        raise UsageError(str(e)) from None
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    d = report["deleted"]
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} user {report['user_id']}: {d['turns']} turns, {d['feedback']} feedback, {d['signals']} signals, "
          f"{d.get('review_items', 0)} review items ({d.get('review_labels', 0)} labels)")
    mark = "would mark" if args.dry_run else "marked"
    print(f"snapshots holding their data ({mark} forgotten): {', '.join(report['snapshots']) or 'none'}")
    print(f"model versions built from them ({mark} tainted): {', '.join(report['model_versions']) or 'none'}")
    if report["snapshots"] and not args.dry_run:
        print("next: build a new snapshot (`kaizen dataset build`) and retrain; tainted versions cannot be served")
    return 0


DATASET = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
FORGET = Command(help=FORGET_HELP, example=FORGET_EXAMPLE, add_arguments=add_forget_arguments, run=run_forget)
