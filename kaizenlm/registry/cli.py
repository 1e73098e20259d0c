"""`kaizen registry list|show|promote|tag|lineage|history|register`: inspect versions, move aliases,
register your own base model.

Goes through the controller's admin API when it runs, else opens the DuckDB file
(kaizenlm.registry.client). Every subcommand takes --json for scripts.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from kaizenlm.command import Command
from kaizenlm.errors import UsageError
from kaizenlm.registry.client import RegistryClient
from kaizenlm.registry.errors import RegistryError
from kaizenlm.registry.versions import KINDS, STATUSES

HELP = "list and inspect model versions, promote or tag them, show their lineage"
EXAMPLE = "kaizen registry list && kaizen registry promote adapter-0002 --reason 'won A/B'"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="registry_command", metavar="SUBCOMMAND", required=True)
    lst = sub.add_parser("list", help="versions, oldest first, with their aliases")
    lst.add_argument("--kind", choices=KINDS, help="only this kind")
    lst.add_argument("--status", choices=STATUSES, help="only this status")
    show = sub.add_parser("show", help="one version: config, metrics, snapshot, artifacts")
    show.add_argument("version_id", metavar="ID")
    promote = sub.add_parser("promote", help="point an alias (default: champion) at a version")
    promote.add_argument("version_id", metavar="ID")
    promote.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    promote.add_argument("--reason", default="", help="why; stored in the alias history")
    tag = sub.add_parser("tag", help="point any alias (e.g. challenger, staging) at a version")
    tag.add_argument("version_id", metavar="ID")
    tag.add_argument("alias", metavar="ALIAS")
    tag.add_argument("--reason", default="", help="why; stored in the alias history")
    lineage = sub.add_parser("lineage", help="version -> parents -> dataset snapshots -> time windows")
    lineage.add_argument("version_id", metavar="ID")
    history = sub.add_parser("history", help="every move of an alias, oldest first")
    history.add_argument("alias", metavar="ALIAS")
    register = sub.add_parser("register", help="register your own base model directory (a Hugging Face causal LM)",
                              epilog="Example: kaizen registry register base /models/Qwen2.5-0.5B-Instruct --champion")
    register.add_argument("kind", choices=["base"], help="what the directory holds (base: a causal LM directory)")
    register.add_argument("path", help="the model directory (with config.json); its files are copied into the store")
    register.add_argument("--champion", action="store_true", help="also point champion at it (publishes routing)")
    register.add_argument("--note", default="", help="a note stored with the version")
    for sp in (lst, show, promote, tag, lineage, history, register):
        sp.add_argument("--json", action="store_true", help="print JSON instead of text")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "cli"


def run(args, cfg) -> int:
    client = RegistryClient(cfg)
    try:
        result = _dispatch(args, client)
    except RegistryError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(_TEXT[args.registry_command](result))
        if args.registry_command in ("promote", "tag", "register") and client.via == "duckdb":
            print(f"(written to {cfg.duckdb_path}; no controller is running)")
    return 0


def _dispatch(args, client: RegistryClient) -> dict:
    command = args.registry_command
    if command == "list":
        return {"versions": client.list_versions(kind=args.kind, status=args.status)}
    if command == "show":
        return client.show(args.version_id)
    if command == "promote":
        return client.set_alias(args.alias, args.version_id, reason=args.reason or "promoted from the CLI",
                                actor=_actor())
    if command == "tag":
        return client.set_alias(args.alias, args.version_id, reason=args.reason or "tagged from the CLI",
                                actor=_actor())
    if command == "lineage":
        return client.lineage(args.version_id)
    if command == "register":
        return _register(args, client)
    return {"alias": args.alias, "history": client.alias_history(args.alias)}


def _register(args, client: RegistryClient) -> dict:
    path = Path(args.path).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise UsageError(f"path: {path} holds no Hugging Face model (no config.json); pass the model's directory")
    version = client.register_version(args.kind, path, config={"base_path": str(path)}, status="promoted",
                                      note=args.note or f"registered from {path}")
    move = None
    if args.champion:
        move = client.set_alias("champion", version["version_id"], reason="registered as champion", actor=_actor())
    return {"version": version, "move": move}


def _register_text(result: dict) -> str:
    v = result["version"]
    line = f"registered {v['version_id']} ({v['kind']}) from {v['config'].get('base_path')}"
    return line + (f"\n{_move_text(result['move'])}" if result["move"] else "")


def _status(v: dict) -> str:
    return v["status"] + (" TAINTED" if v["tainted"] else "")


def _list_text(result: dict) -> str:
    versions = result["versions"]
    if not versions:
        return "no versions yet; a retrain or knowledge refresh registers one"
    rows = [("VERSION", "KIND", "STATUS", "PARENT", "SNAPSHOT", "CREATED", "ALIASES")]
    for v in versions:
        rows.append((v["version_id"], v["kind"], _status(v), v["parent_id"] or "-", v["snapshot_id"] or "-",
                     (v["created_at"] or "")[:19], ",".join(v["aliases"]) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _show_text(v: dict) -> str:
    lines = [f"{v['version_id']}  ({v['kind']}, {_status(v)})"]
    for key in ("aliases", "parent_id", "snapshot_id", "snapshot_hash", "artifact_dir", "artifact_hash",
                "created_at", "note"):
        value = ", ".join(v[key]) if key == "aliases" else v[key]
        lines.append(f"  {key + ':':15}{value if value not in (None, '') else '-'}")
    for key in ("config", "metrics"):
        body = json.dumps(v[key], indent=2, sort_keys=True).replace("\n", "\n  ")
        lines.append(f"  {key}: {body}")
    return "\n".join(lines)


def _move_text(move: dict) -> str:
    return f"{move['alias']}: {move['from_version'] or '(unset)'} -> {move['to_version']}  ({move['reason']})"


def _lineage_text(result: dict) -> str:
    lines = []
    for depth, link in enumerate(result["chain"]):
        v, snap = link["version"], link["snapshot"]
        pad = "  " * depth
        aliases = f"  [{', '.join(link['aliases'])}]" if link["aliases"] else ""
        lines.append(f"{pad}{v['version_id']}  {v['kind']}  {_status(v)}{aliases}")
        if v["snapshot_id"] is None:
            lines.append(f"{pad}  snapshot: none recorded")
        elif snap is None:
            lines.append(f"{pad}  snapshot: {v['snapshot_id']} (not found in dataset_snapshots)")
        else:
            check = "hash ok" if link["snapshot_verified"] else "HASH CHANGED since registration"
            lines.append(f"{pad}  snapshot: {v['snapshot_id']}  {check}")
            lines.append(f"{pad}  window:   {snap['since'] or 'beginning'} .. {snap['until'] or 'end'}"
                         f"  (ingested by {snap['as_of']})")
    return "\n".join(lines)


def _history_text(result: dict) -> str:
    if not result["history"]:
        return f"alias '{result['alias']}' has never been set"
    return "\n".join(
        f"#{m['seq']}  {(m['ts'] or '')[:19]}  {m['action']:8}  {m['from_version'] or '(unset)'} -> "
        f"{m['to_version']}  by {m['actor']}: {m['reason']}"
        for m in result["history"]
    )


_TEXT = {"list": _list_text, "show": _show_text, "promote": _move_text, "tag": _move_text,
         "lineage": _lineage_text, "history": _history_text, "register": _register_text}


REGISTRY = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
