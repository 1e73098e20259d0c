"""`kaizen retrain`: one monthly cycle now.

`retrain` runs snapshot -> SFT -> DPO -> evaluate -> gate -> A/B, the same run as the
scheduler's monthly tier, recorded in the job history: through the controller when it runs
(it owns DuckDB and publishes routing), else in this process.
"""

from __future__ import annotations

import argparse

from kaizenlm.command import Command
from kaizenlm.config import ConfigError, RetrainConfig
from kaizenlm.errors import UsageError
from kaizenlm.jobs import cli as cli_jobs

HELP = "retrain now: curate a snapshot, LoRA SFT + DPO, evaluate, gate, and start an A/B test if it passes"
EXAMPLE = "kaizen retrain --processes 2 --json"


def add_arguments(p) -> None:
    p.add_argument("--detach", action="store_true", help="with a controller: start the run and return at once")
    p.add_argument("--processes", metavar="N", default=None,
                   help="train in N processes under `accelerate launch` (DDP; 'auto' = one per GPU) for this run "
                        "(default: retrain.processes in kaizen.toml)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args, cfg) -> int:
    processes = args.processes
    if processes is not None:
        try:  # refuse bad input here, before any snapshot or controller call
            processes = RetrainConfig(processes=processes).processes
        except ConfigError as e:
            raise UsageError(f"--processes: {e}") from None
    jobs_args = argparse.Namespace(jobs_command="run", tier="monthly", detach=args.detach, json=args.json,
                                   limit=20, processes=processes)
    return cli_jobs.run(jobs_args, cfg)


RETRAIN = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
