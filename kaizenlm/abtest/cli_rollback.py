"""`kaizen rollback [--to VERSION] [--reason TEXT]`: move `champion` back one step in its history.

Through the controller's admin API when it runs: the move is recorded in the alias
history, any experiment on the alias ends, and the routing is published, so every
gateway serves the restored version within about a second. Without a controller the
move is written to the DuckDB file and published when the controller starts.
"""

from __future__ import annotations

import json

from kaizenlm.abtest.cli import _actor
from kaizenlm.abtest.client import ABClient
from kaizenlm.cli import UsageError
from kaizenlm.registry.errors import RegistryError

HELP = "roll champion (or --alias) back one step in its history, or back to --to VERSION; publishes routing"
EXAMPLE = "kaizen rollback --reason 'regenerate rate up after the promotion'"


def add_arguments(p) -> None:
    p.add_argument("--to", dest="to_version", metavar="VERSION",
                   help="an earlier version of the alias to go back to (default: one step back)")
    p.add_argument("--reason", default="", help="why; stored in the alias history")
    p.add_argument("--alias", default="champion", help="alias to roll back (default: champion)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args, cfg) -> int:
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
