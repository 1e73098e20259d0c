"""`kaizen stats`: what has landed in DuckDB (through the controller, or the file when none runs)."""

from __future__ import annotations

import json

import httpx

HELP = "show event counts in DuckDB and the sink's progress"
EXAMPLE = "kaizen stats --json"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args, cfg) -> int:
    try:
        r = httpx.get(cfg.controller_url + "/admin/v1/stats", timeout=5,
                      headers={"Authorization": f"Bearer {cfg.auth.admin_key}"})
        r.raise_for_status()
        data = r.json()
    except httpx.HTTPError:
        from kaizenlm.ingest import store

        if not cfg.duckdb_path.exists():
            print(f"no controller at {cfg.controller_url} and no DuckDB file at {cfg.duckdb_path}; "
                  "run `kaizen up` first")
            return 1
        con = store.connect(cfg.duckdb_path, read_only=True)
        data = {"counts": store.counts(con), "sink": None}
    if args.json:
        print(json.dumps(data, default=str))
    else:
        for table, n in data["counts"].items():
            print(f"{table:10s} {n:>10,d}")
    return 0
