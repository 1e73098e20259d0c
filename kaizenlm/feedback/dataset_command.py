"""`kaizen dataset`: build, list, show and verify training-data snapshots; inspect rewards."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from kaizenlm.cli import UsageError

HELP = "curate feedback into SFT/DPO dataset snapshots (build, list, show, verify, rewards)"
EXAMPLE = "kaizen dataset build --since 2025-01-01 --holdout exam.jsonl   (then: kaizen dataset list)"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="curate a window of feedback and write (or reuse) its snapshot")
    _window_arguments(b)
    b.add_argument("--holdout", action="append", default=[], metavar="FILE",
                   help="held-out texts that training data must not contain (repeatable; adds to curation.holdout_path)")
    b.add_argument("--replay", metavar="FILE", help="general examples to mix in (default: curation.replay_path)")
    b.add_argument("--dry-run", action="store_true", help="curate and report, write nothing")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")

    ls = sub.add_parser("list", help="list snapshots, newest first")
    ls.add_argument("--json", action="store_true", help="print JSON")

    show = sub.add_parser("show", help="print a snapshot's manifest summary (or full manifest with --json)")
    show.add_argument("snapshot_id", help="snapshot id or unambiguous prefix")
    show.add_argument("--json", action="store_true", help="print the full manifest")

    ver = sub.add_parser("verify", help="check a snapshot's files and hashes against its manifest")
    ver.add_argument("snapshot_id", help="snapshot id or unambiguous prefix")

    r = sub.add_parser("rewards", help="reward distribution of the turns in a window")
    _window_arguments(r)
    r.add_argument("--json", action="store_true", help="print JSON")


def _window_arguments(p) -> None:
    p.add_argument("--since", help="first day or time (ISO 8601; default: curation.window_days before --as-of)")
    p.add_argument("--until", help="end (exclusive), ISO 8601 (default: no end)")
    p.add_argument("--as-of", dest="as_of", help="use only events ingested by then (default: now)")
    p.add_argument("--all", dest="all_data", action="store_true", help="all data: ignore curation.window_days")


def run(args, cfg) -> int:
    return {"build": _build, "list": _list, "show": _show, "verify": _verify, "rewards": _rewards}[args.action](args, cfg)


def _window(args, cfg):
    from kaizenlm.feedback.datasets import default_window

    try:
        return default_window(cfg.curation, since=args.since, until=args.until, as_of=args.as_of,
                              all_data=args.all_data)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _connect(cfg, read_only: bool):
    import duckdb

    from kaizenlm.ingest import store

    path = cfg.duckdb_path
    if not path.is_file():
        raise UsageError(f"no data yet: {path} does not exist (run `kaizen up` or `kaizen demo` first)")
    try:
        con = store.connect(path, read_only=read_only)
    except duckdb.IOException as e:
        if "lock" in str(e).lower():
            raise UsageError(f"{path} is in use by another process (a running controller?); stop it and retry") from None
        raise
    return con


def _build(args, cfg) -> int:
    from kaizenlm.feedback import curation, datasets

    window = _window(args, cfg)
    holdout_files = ([cfg.curation.holdout_path] if cfg.curation.holdout_path else []) + list(args.holdout)
    replay_file = args.replay or cfg.curation.replay_path or None
    try:
        holdout = [text for f in holdout_files for text in curation.load_holdout(f)]
        replay = datasets.load_replay(replay_file) if replay_file else []
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    sources = {"holdout_files": [str(Path(f).expanduser()) for f in holdout_files], "holdout_texts": len(holdout),
               "replay_file": str(Path(replay_file).expanduser()) if replay_file else None}
    con = _connect(cfg, read_only=args.dry_run)
    try:
        snap = datasets.build_snapshot(con, cfg, window, holdout=holdout, replay=replay, dry_run=args.dry_run,
                                       sources=sources)
    finally:
        con.close()
    if args.json:
        sys.stdout.write(orjson.dumps(snap.manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    m = snap.manifest
    verb = "would write" if args.dry_run else ("reused" if snap.reused else "wrote")
    print(f"{verb} snapshot {snap.snapshot_id}  ({snap.path})")
    _print_summary(m)
    return 0


def _print_summary(m: dict) -> None:
    w = m["window"]
    print(f"  window   since {w['since'] or '-'}  until {w['until'] or '-'}  as of {w['as_of']}")
    c = m["counts"]
    print(f"  sft      train {c['sft_train']}  eval {c['sft_eval']}")
    print(f"  dpo      train {c['dpo_train']}  eval {c['dpo_eval']}")
    cur = m.get("curation", {})
    replay = cur.get("replay") or {}
    if replay:
        print(f"  replay   {replay.get('used', 0)} general examples (wanted {replay.get('wanted', 0)})")
    pii = {k: v for k, v in (cur.get("pii_replaced") or {}).items() if v}
    if pii:
        print("  pii      replaced " + ", ".join(f"{k} {v}" for k, v in pii.items()))
    print(f"  turns    {cur.get('turns', 0)} read, {cur.get('contaminated_turns', 0)} matched held-out texts")
    for output, steps in cur.get("steps", {}).items():
        print(f"  {output}:")
        for s in steps:
            why = ", ".join(f"{k} {v}" for k, v in s.get("dropped", {}).items())
            print(f"    {s['step']:<16} {s['in']:>8} -> {s['out']:<8} {why}".rstrip())
    for warning in m.get("warnings", []):
        print(f"  warning: {warning}")


def _list(args, cfg) -> int:
    from kaizenlm.feedback import datasets

    manifests = datasets.list_snapshots(cfg.snapshots_dir)
    if args.json:
        rows = [{"snapshot_id": m["snapshot_id"], "created_at": m["created_at"], "window": m["window"],
                 "counts": m["counts"]} for m in manifests]
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not manifests:
        print(f"no snapshots under {cfg.snapshots_dir}; build one with `kaizen dataset build`")
        return 0
    print(f"{'snapshot':<20} {'created':<20} {'sft train/eval':>15} {'dpo train/eval':>15}  window")
    for m in manifests:
        c, w = m["counts"], m["window"]
        print(f"{m['snapshot_id']:<20} {m['created_at'][:19]:<20} {c['sft_train']:>9}/{c['sft_eval']:<5} "
              f"{c['dpo_train']:>9}/{c['dpo_eval']:<5}  {(w['since'] or '-')[:10]} .. {(w['until'] or '-')[:10]}")
    return 0


def _resolve(args, cfg) -> Path:
    from kaizenlm.feedback import datasets

    try:
        return datasets.resolve(cfg.snapshots_dir, args.snapshot_id)
    except datasets.SnapshotError as e:
        raise UsageError(str(e)) from None


def _show(args, cfg) -> int:
    from kaizenlm.feedback import datasets

    path = _resolve(args, cfg)
    m = datasets.read_manifest(path)
    if args.json:
        sys.stdout.write(orjson.dumps(m, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"snapshot {m['snapshot_id']}  ({path})")
    print(f"  content  {m['content_hash']}")
    print(f"  created  {m['created_at']}  by kaizenlm {m.get('kaizenlm_version', '?')}")
    _print_summary(m)
    return 0


def _verify(args, cfg) -> int:
    from kaizenlm.feedback import datasets

    path = _resolve(args, cfg)
    problems = datasets.verify(path)
    if problems:
        for p in problems:
            print(f"{path.name}: {p}", file=sys.stderr)
        return 1
    print(f"{path.name}: ok")
    return 0


def _rewards(args, cfg) -> int:
    from kaizenlm.feedback import rewards

    window = _window(args, cfg)
    con = _connect(cfg, read_only=True)
    try:
        summary = rewards.summarize(rewards.reward_frame(con, window, cfg.rewards))
    finally:
        con.close()
    summary["window"] = window.to_json()
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"turns {summary['turns']}: {summary['with_feedback']} with feedback, {summary['with_explicit']} explicit, "
          f"{summary['with_correction']} corrected; mean reward (with feedback) {summary['mean_reward_with_feedback']}")
    peak = max((b["turns"] for b in summary["histogram"]), default=0) or 1
    for b in summary["histogram"]:
        print(f"  {b['from']:+.2f} .. {b['to']:+.2f}  {b['turns']:>8}  {'#' * round(40 * b['turns'] / peak)}")
    return 0
