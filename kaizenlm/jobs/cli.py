"""`kaizen jobs list|run`: the scheduler's tiers, their history, and a run on demand.

Through the controller's admin API when it runs (its scheduler runs the tier and records
it); otherwise the tier runs in this process on the DuckDB file, recorded the same way.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

import httpx

from kaizenlm.command import Command
from kaizenlm.config import with_overrides
from kaizenlm.errors import UsageError
from kaizenlm.jobs.history import TIERS

HELP = "list the scheduled tiers (next runs, history) or run a tier now: weekly, monthly, quarterly"
EXAMPLE = "kaizen jobs list && kaizen jobs run weekly"
POLL_S = 1.0


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)
    lst = sub.add_parser("list", help="each tier's cron, next fire time, run in progress, last run; recent runs")
    lst.add_argument("--tier", choices=TIERS, help="only this tier's runs")
    lst.add_argument("--limit", type=int, default=20, help="recent runs to show (default: 20)")
    run = sub.add_parser("run", help="run a tier now (refused while a run of it is going on)")
    run.add_argument("tier", choices=TIERS, metavar="TIER", help=f"one of: {', '.join(TIERS)}")
    run.add_argument("--detach", action="store_true", help="with a controller: start the run and return at once")
    for sp in (lst, run):
        sp.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args, cfg) -> int:
    from kaizenlm.ingest.admin_client import controller_is_up

    if args.jobs_command == "list" and not 1 <= args.limit <= 1000:
        raise UsageError("--limit must be in 1..1000")
    if controller_is_up(cfg):
        return _via_controller(args, cfg)
    return _in_process(args, cfg)


# ---------------------------------------------------------------- through the controller


def _request(cfg, method: str, path: str, **kw) -> httpx.Response:
    response = httpx.request(method, cfg.controller_url + "/admin/v1" + path, timeout=30,
                             headers={"Authorization": f"Bearer {cfg.auth.admin_key}"}, **kw)
    if response.status_code in (401, 403):
        raise UsageError("the controller refused the admin key; set auth.admin_key in kaizen.toml "
                         "(or KAIZEN_ADMIN_KEY) to the controller's key")
    return response


def _via_controller(args, cfg) -> int:
    if args.jobs_command == "list":
        params = {"limit": args.limit, **({"tier": args.tier} if args.tier else {})}
        response = _request(cfg, "GET", "/jobs", params=params)
        response.raise_for_status()
        return _print_overview(response.json(), args.json)
    options = {"processes": args.processes} if getattr(args, "processes", None) is not None else None
    response = _request(cfg, "POST", f"/jobs/{args.tier}/run", json=options)
    if response.status_code == 422:
        raise UsageError(f"the controller refused the run: {response.json().get('detail')}")
    if response.status_code == 409:
        print(f"kaizen jobs: {response.json().get('detail')}", file=sys.stderr)
        return 1
    response.raise_for_status()
    started = response.json()
    if args.detach:
        _print_run(started, args.json, note="started on the controller; follow it with `kaizen jobs list`")
        return 0
    bar = _progress_bar(args.tier)
    try:
        while True:
            time.sleep(POLL_S)
            r = _request(cfg, "GET", f"/jobs/runs/{started['run_id']}")
            r.raise_for_status()
            current = r.json()
            if current["status"] != "running":
                break
            progress = current.get("progress") or {}
            _update(bar, progress.get("fraction"), progress.get("message", ""))
    finally:
        bar.close()
    _print_run(current, args.json)
    return 0 if current["status"] == "succeeded" else 1


# ---------------------------------------------------------------- without a controller


def _open_db(cfg):
    import duckdb

    from kaizenlm.ingest import store

    try:
        return store.connect(cfg.duckdb_path)
    except duckdb.IOException as e:
        raise UsageError(f"cannot open {cfg.duckdb_path}: {e}. Another process holds it (a controller on another "
                         "port, or another kaizen command); run this against that controller or wait") from None


def _in_process(args, cfg) -> int:
    from kaizenlm.jobs.scheduler import Scheduler, TierBusy, default_tiers

    con = _open_db(cfg)
    try:
        scheduler = Scheduler(cfg, default_tiers(), con)
        if args.jobs_command == "list":
            return _print_overview(scheduler.overview(args.tier, args.limit), args.json,
                                   note="no controller is running: the crons are not being followed")
        scheduler.close_interrupted()  # we own the file, so a 'running' row is a dead process's
        bar = _progress_bar(args.tier)
        try:
            run_cfg = None
            if getattr(args, "processes", None) is not None:  # `kaizen retrain --processes N`: this run only
                run_cfg = with_overrides(cfg, {"retrain": {"processes": args.processes}})
            finished = scheduler.run_inline(args.tier, on_progress=lambda f, m: _update(bar, f, m), cfg=run_cfg)
        except TierBusy as e:
            print(f"kaizen jobs: {e}", file=sys.stderr)
            return 1
        finally:
            bar.close()
    finally:
        con.close()
    _print_run(finished.to_dict(), args.json, note=f"ran in this process on {cfg.duckdb_path} (no controller)")
    return 0 if finished.status == "succeeded" else 1


# ---------------------------------------------------------------- output


def _progress_bar(tier: str):
    from tqdm import tqdm

    return tqdm(total=100, desc=f"{tier}: starting", unit="%", file=sys.stderr,
                bar_format="{desc} |{bar}| {n:.0f}% [{elapsed}]")


def _update(bar, fraction: float | None, message: str) -> None:
    if message:
        bar.set_description_str(f"{bar.desc.split(':')[0]}: {message}"[:70])
    if fraction is not None:
        bar.n = max(0.0, min(100.0, fraction * 100))
    bar.refresh()


def _when(iso: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM' in UTC."""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M") if iso else "-"


def _print_overview(data: dict, as_json: bool, note: str = "") -> int:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return 0
    enabled = "on" if data.get("enabled") else "off (schedule.enabled = false)"
    print(f"schedule: {enabled}" + (f"; {note}" if note else ""))
    print(f"{'tier':10s} {'cron':18s} {'next run':17s} last run")
    for t in data["tiers"]:
        last = t.get("last_run")
        last_text = (f"{last['status']} {_when(last['started_at'])} ({last['trigger']}, "
                     f"{last['duration_s'] or 0:.1f} s)" if last else "never")
        extra = ""
        if t.get("running_run_id"):
            p = t.get("progress") or {}
            extra += f"  RUNNING {t['running_run_id']} {p.get('message', '')}"
        if t.get("pending_retry"):
            extra += f"  retry {t['pending_retry']['attempt']} at {_when(t['pending_retry']['due_at'])}"
        print(f"{t['tier']:10s} {t['cron']:18s} {_when(t['next_fire_time']):17s} {last_text}{extra}")
    print("(times in UTC; the crons run in schedule.timezone = "
          f"{data['tiers'][0]['timezone'] if data['tiers'] else 'UTC'})")
    if data["runs"]:
        print("\nrecent runs:")
        print(f"{'run id':34s} {'trigger':9s} {'try':>3s} {'status':9s} {'started':16s} {'secs':>7s}  log / error")
        for r in data["runs"]:
            tail = r["error"] or r["log_path"]
            secs = f"{r['duration_s']:.1f}" if r["duration_s"] is not None else "-"
            print(f"{r['run_id']:34s} {r['trigger']:9s} {r['attempt']:>3d} {r['status']:9s} "
                  f"{_when(r['started_at']):16s} {secs:>7s}  {tail}")
    else:
        print("\nno runs yet; start one with `kaizen jobs run weekly`")
    return 0


def _print_run(run: dict, as_json: bool, note: str = "") -> None:
    if as_json:
        print(json.dumps(run, indent=2, sort_keys=True, default=str))
        return
    duration = f" after {run['duration_s']:.1f} s" if run.get("duration_s") is not None else ""
    print(f"{run['tier']} run {run['run_id']}: {run['status']}{duration}" + (f" ({note})" if note else ""))
    if run.get("error"):
        print(f"error: {run['error']}")
    if run.get("result"):
        print("result: " + json.dumps(run["result"], sort_keys=True, default=str))
    print(f"log: {run['log_path']}")


JOBS = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
