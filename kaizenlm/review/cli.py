"""`kaizen review`: the quarterly review report (Markdown + PNG plots) for any window.

Through the controller's admin API when it runs (it owns the DuckDB file), otherwise on
the file directly. The scheduler's quarterly tier writes the same report every quarter.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx

from kaizenlm.command import Command
from kaizenlm.errors import UsageError

HELP = "write the review report (Markdown + PNG plots): traffic, rewards, experiments, models, forgetting, data, advice"
EXAMPLE = "kaizen review --since 2025-01-01 --until 2025-04-01   (default: the last calendar quarter)"


def add_arguments(p) -> None:
    p.add_argument("--since", metavar="DATE", help="start of the window, inclusive (ISO date; default: the last quarter's)")
    p.add_argument("--until", metavar="DATE", help="end of the window, exclusive (ISO date; default: the last quarter's)")
    p.add_argument("--out", metavar="DIR", help="folder for report.md and the plots (default: $KAIZEN_HOME/reviews/<today>)")
    p.add_argument("--json", action="store_true", help="print JSON: the report path and the recommendations")


def run(args, cfg) -> int:
    from kaizenlm.ingest.admin_client import controller_is_up
    from kaizenlm.review.report import resolve_window

    try:
        since, until = resolve_window(args.since, args.until, datetime.now(UTC))
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = str(Path(args.out).expanduser().resolve()) if args.out else None
    if controller_is_up(cfg):
        response = httpx.post(cfg.controller_url + "/admin/v1/review", timeout=600,
                              json={"since": since.isoformat(), "until": until.isoformat(), "out": out},
                              headers={"Authorization": f"Bearer {cfg.auth.admin_key}"})
        if response.status_code in (401, 403):
            raise UsageError("the controller refused the admin key; set auth.admin_key (or KAIZEN_ADMIN_KEY)")
        if response.status_code == 400:
            raise UsageError(response.json().get("detail", response.text))
        response.raise_for_status()
        report = Path(response.json()["report"])
    else:
        report = _write_locally(cfg, since, until, out)
    summary = json.loads((report.parent / "review.json").read_text(encoding="utf-8"))
    fired = [r for r in summary["recommendations"] if r["fired"]]
    if args.json:
        print(json.dumps({"report": str(report), "since": since.isoformat(), "until": until.isoformat(),
                          "plots": sorted(summary["plots"].values()), "recommendations": fired}, indent=2))
        return 0
    t = summary["traffic"]
    print(f"review of {since.date()} .. {until.date()}: {t['turns']} turns, "
          f"{summary['versions']['models_in_window']} new model version(s), {len(fired)} recommendation(s)")
    for r in fired:
        print(f"  - {r['recommendation']}  [{r['numbers']}]")
    print(f"report: {report}")
    return 0


def _write_locally(cfg, since, until, out) -> Path:
    import duckdb

    from kaizenlm.ingest import store
    from kaizenlm.review.report import write_review

    if not cfg.duckdb_path.exists():
        raise UsageError(f"no DuckDB file at {cfg.duckdb_path} and no controller at {cfg.controller_url}; "
                         "run `kaizen up` (or `kaizen demo`) first")
    try:
        con = store.connect(cfg.duckdb_path)
    except duckdb.IOException as e:
        raise UsageError(f"cannot open {cfg.duckdb_path}: {e}. Another process holds it; run this while its "
                         "controller answers, or wait") from None
    try:
        return write_review(con, cfg, since, until, out_dir=out)
    finally:
        con.close()


REVIEW = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
