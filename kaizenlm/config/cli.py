"""`kaizen init`: write a commented default kaizen.toml."""

from __future__ import annotations

from pathlib import Path

from kaizenlm.command import Command
from kaizenlm.config import default_toml
from kaizenlm.errors import UsageError

HELP = "write a commented default kaizen.toml"
EXAMPLE = "kaizen init --path kaizen.toml"


def add_arguments(p) -> None:
    p.add_argument("--path", default="kaizen.toml", help="where to write (default: ./kaizen.toml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args, cfg) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    path.write_text(default_toml(), encoding="utf-8")
    print(f"wrote {path}; edit it, then run `kaizen up`")
    return 0


INIT = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
