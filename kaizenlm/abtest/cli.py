"""`kaizen ab start|status|stop|analyse` and `kaizen rollback`: experiments and rollback.

`ab` runs A/B experiments between champion and a challenger; `rollback [--to VERSION]` moves
`champion` back one step in its history (recorded in the alias history; any experiment on the
alias ends). Both go through the controller's admin API when it runs (which publishes routing
at once, so every gateway switches within about a second), else write the DuckDB file
directly and the controller publishes when it starts.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import typing

from kaizenlm.abtest.client import ABClient
from kaizenlm.command import Command
from kaizenlm.config import ABConfig
from kaizenlm.errors import UsageError
from kaizenlm.registry.errors import RegistryError

HELP = "start, inspect, analyse and stop A/B experiments (champion vs a challenger version)"
EXAMPLE = "kaizen ab start adapter-0002 --split 0.2 --set mde=0.05 && kaizen ab status"
_SETTINGS = [f.name for f in dataclasses.fields(ABConfig) if f.name != "analysis_interval_s"]


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="ab_command", metavar="SUBCOMMAND", required=True)
    start = sub.add_parser("start", help="split an alias's users between the version it serves and a challenger")
    start.add_argument("challenger", metavar="VERSION", help="the challenger's version id (see `kaizen registry list`)")
    start.add_argument("--alias", default="champion", help="alias whose traffic is split (default: champion)")
    start.add_argument("--split", type=float, help="challenger's share of users, 0..1 exclusive (default: ab.split)")
    start.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override an [ab] setting for this experiment; keys: {', '.join(_SETTINGS)}")
    status = sub.add_parser("status", help="experiments with their latest decision, or one with its decisions")
    status.add_argument("experiment_id", metavar="EXPERIMENT", nargs="?")
    status.add_argument("--limit", type=int, default=20, help="most experiments / decisions shown (default 20)")
    stop = sub.add_parser("stop", help="end a running experiment: keep the champion, or --promote the challenger")
    stop.add_argument("experiment_id", metavar="EXPERIMENT")
    stop.add_argument("--promote", action="store_true", help="promote the challenger instead of keeping the champion")
    stop.add_argument("--reason", default="", help="why; stored with the decision")
    analyse = sub.add_parser("analyse", help="analyse running experiments now and act on the decisions")
    analyse.add_argument("experiment_id", metavar="EXPERIMENT", nargs="?")
    for sp in (start, status, stop, analyse):
        sp.add_argument("--json", action="store_true", help="print JSON instead of text")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "cli"


def parse_settings(items: list[str]) -> dict:
    """['mde=0.05', 'min_samples_per_arm=50'] -> {'mde': 0.05, 'min_samples_per_arm': 50}."""
    hints = typing.get_type_hints(ABConfig)
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _SETTINGS:
            raise UsageError(f"--set {item!r}: use KEY=VALUE with KEY one of {', '.join(_SETTINGS)}")
        if hints[key] is bool:
            if value.strip().lower() not in ("true", "false"):
                raise UsageError(f"--set {key}: {value!r} must be true or false")
            out[key] = value.strip().lower() == "true"
            continue
        try:
            out[key] = int(value) if hints[key] is int else float(value)
        except ValueError:
            raise UsageError(f"--set {key}: {value!r} is not a number") from None
    return out


def run(args, cfg) -> int:
    client = ABClient(cfg)
    command = args.ab_command
    try:
        if command == "start":
            if args.split is not None and not 0 < args.split < 1:
                raise UsageError("--split: must be between 0 and 1, exclusive (e.g. 0.2)")
            result = client.start(args.challenger, args.alias, args.split, parse_settings(args.set), _actor())
        elif command == "status":
            if args.limit < 1:
                raise UsageError("--limit: must be >= 1")
            result = client.status(args.experiment_id, args.limit)
        elif command == "stop":
            result = client.stop(args.experiment_id, args.reason, args.promote, _actor())
        else:
            result = client.analyse(args.experiment_id)
    except RegistryError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return 0
    print(_TEXT[command](result))
    if command != "status" and client.via == "duckdb":
        print(f"(written to {cfg.duckdb_path}; no controller is running: gateways get the new routing when it starts)")
    return 0


def _experiment_line(e: dict) -> tuple:
    latest = e.get("latest_decision") or {}
    return (e["experiment_id"], e["alias"], e["champion"], e["challenger"], f"{e['split']:g}", e["status"],
            (e["started_at"] or "")[:19], latest.get("action", "-"))


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _start_text(r: dict) -> str:
    routing = r.get("routing") or {}
    published = (f"; routing version {routing['version']} published" if routing.get("published")
                 else "; routing not published yet" if routing else "")
    return (f"started {r['experiment_id']}: {r['alias']} = {r['champion']} (champion) vs {r['challenger']} "
            f"(challenger, {r['split']:.0%} of users){published}")


def _decision_text(d: dict) -> str:
    applied = d.get("applied") or {}
    move = applied.get("alias_move")
    moved = f"; {move['alias']}: {move['from_version']} -> {move['to_version']}" if move else ""
    return f"#{d['seq']} {d['ts'][:19]}  {d['action']}: {d['reason']}{moved}"


def _status_text(r: dict) -> str:
    if "experiments" in r:
        if not r["experiments"]:
            return "no experiments yet; start one with `kaizen ab start VERSION`"
        header = ("EXPERIMENT", "ALIAS", "CHAMPION", "CHALLENGER", "SPLIT", "STATUS", "STARTED", "LATEST")
        return _table([header] + [_experiment_line(e) for e in r["experiments"]])
    lines = [f"{r['experiment_id']}  {r['status']}  alias {r['alias']}: {r['champion']} (champion) vs "
             f"{r['challenger']} (challenger, {r['split']:.0%})",
             f"  started {r['started_at'][:19]}" + (f", ended {r['ended_at'][:19]}: {r['end_reason']}"
                                                     if r["ended_at"] else "")]
    if r["decisions"]:
        latest = r["decisions"][0]["numbers"]
        if latest.get("primary"):
            p = latest["primary"]
            users, turns = latest["users"], latest["turns"]
            lines.append(f"  champion / challenger: users {users['champion']} / {users['challenger']}, turns "
                         f"{turns['champion']} / {turns['challenger']}, mean reward {_num(p['mean_champion'])} / "
                         f"{_num(p['mean_challenger'])}, p={_num(p['p_value'])}")
        lines.append("  decisions (newest first):")
        lines += ["    " + _decision_text(d) for d in r["decisions"]]
    else:
        lines.append("  no analysis yet (the controller analyses every ab.analysis_interval_s; or `kaizen ab analyse`)")
    return "\n".join(lines)


def _stop_text(d: dict) -> str:
    return _decision_text(d)


def _analyse_text(r: dict) -> str:
    if not r["results"]:
        return "no running experiments"
    return "\n".join(f"{d['experiment_id']}: ERROR {d['error']}" if "error" in d
                     else f"{d['experiment_id']}: {_decision_text(d)}" for d in r["results"])


_TEXT = {"start": _start_text, "status": _status_text, "stop": _stop_text, "analyse": _analyse_text}


ROLLBACK_HELP = "roll champion (or --alias) back one step in its history, or back to --to VERSION; publishes routing"
ROLLBACK_EXAMPLE = "kaizen rollback --reason 'regenerate rate up after the promotion'"


def add_rollback_arguments(p) -> None:
    p.add_argument("--to", dest="to_version", metavar="VERSION",
                   help="an earlier version of the alias to go back to (default: one step back)")
    p.add_argument("--reason", default="", help="why; stored in the alias history")
    p.add_argument("--alias", default="champion", help="alias to roll back (default: champion)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_rollback(args, cfg) -> int:
    client = ABClient(cfg)
    try:
        result = client.rollback(args.alias, args.to_version, args.reason or "rollback from the CLI", _actor())
    except RegistryError as e:
        raise UsageError(f"{e} (see `kaizen registry history {args.alias}`)") from None
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    move = result["move"]
    print(f"{move['alias']}: {move['from_version']} -> {move['to_version']}  ({move['reason']}; "
          f"history #{move['seq']})")
    for experiment_id in result["stopped_experiments"]:
        print(f"ended experiment {experiment_id}: its champion no longer serves '{move['alias']}'")
    routing = result.get("routing")
    if client.via == "duckdb":
        print(f"(written to {cfg.duckdb_path}; no controller is running: routing will be published when it starts)")
    elif routing and routing.get("published"):
        print(f"routing version {routing['version']} published; gateways switch within a second")
    else:
        print("routing not published yet (broker unreachable); the controller retries every second")
    return 0


AB = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
ROLLBACK = Command(help=ROLLBACK_HELP, example=ROLLBACK_EXAMPLE, add_arguments=add_rollback_arguments, run=run_rollback)
