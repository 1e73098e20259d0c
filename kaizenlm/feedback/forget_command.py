"""`kaizen forget --user ID`: the right to be forgotten.

Deletes the user's turns, feedback and signals, and lists (and marks) every dataset snapshot
holding their data and every model version built from those snapshots (registry lineage;
tainted versions cannot be served). Through the controller's admin API when it runs, else on
the DuckDB file directly.
"""

from __future__ import annotations

import sys

import orjson

from kaizenlm.cli import UsageError

HELP = "delete a user's turns, feedback and signals; mark the snapshots and model versions built from them"
EXAMPLE = "kaizen forget --user user-0042 --dry-run   (then without --dry-run)"


def add_arguments(p) -> None:
    p.add_argument("--user", required=True, metavar="ID", help="the pseudonymous user id the events carry")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted and marked")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args, cfg) -> int:
    from kaizenlm.feedback.admin_client import AdminClient, AdminError

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
    print(f"{verb} user {report['user_id']}: {d['turns']} turns, {d['feedback']} feedback, {d['signals']} signals")
    mark = "would mark" if args.dry_run else "marked"
    print(f"snapshots holding their data ({mark} forgotten): {', '.join(report['snapshots']) or 'none'}")
    print(f"model versions built from them ({mark} tainted): {', '.join(report['model_versions']) or 'none'}")
    if report["snapshots"] and not args.dry_run:
        print("next: build a new snapshot (`kaizen dataset build`) and retrain; tainted versions cannot be served")
    return 0
