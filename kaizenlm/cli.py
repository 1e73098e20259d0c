"""`kaizen` command line. The command table is a plain dict: name -> 'module:COMMAND'.

`kaizen X` lives in `kaizenlm/<package>/cli.py` as a `Command` (kaizenlm/command.py): a help
line, an example shown under --help, `add_arguments(parser)` and `run(args, cfg) -> int`.
Only the chosen command's module is imported, so `kaizen --help` stays fast (no torch
import). Bad input exits with code 2 and a message.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys

from kaizenlm import config as config_mod
from kaizenlm.command import Command
from kaizenlm.errors import UsageError

COMMANDS: dict[str, str] = {
    "init": "kaizenlm.config.cli:INIT",
    "broker": "kaizenlm.ingest.cli:BROKER",
    "gateway": "kaizenlm.server.cli:GATEWAY",
    "controller": "kaizenlm.server.cli:CONTROLLER",
    "up": "kaizenlm.server.cli:UP",
    "stats": "kaizenlm.ingest.cli:STATS",
    "keys": "kaizenlm.keys.cli:KEYS",
    "dataset": "kaizenlm.datasets.cli:DATASET",
    "forget": "kaizenlm.datasets.cli:FORGET",
    "registry": "kaizenlm.registry.cli:REGISTRY",
    "ab": "kaizenlm.abtest.cli:AB",
    "rollback": "kaizenlm.abtest.cli:ROLLBACK",
    "knowledge": "kaizenlm.knowledge.cli:KNOWLEDGE",
    "jobs": "kaizenlm.jobs.cli:JOBS",
    "retrain": "kaizenlm.retrain.cli:RETRAIN",
    "eval": "kaizenlm.eval.cli:EVAL",
    "review": "kaizenlm.review.cli:REVIEW",
    "annotate": "kaizenlm.annotate.cli:ANNOTATE",
    "demo": "kaizenlm.demo.cli:DEMO",
    "base": "kaizenlm.base.cli:BASE",
    "dashboard": "kaizenlm.dashboard.cli:DASHBOARD",
}


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="kaizen",
        description="kaizenlm: a continuous-learning loop for LLM chat assistants.",
        epilog="Example: kaizen init && kaizen up   (then open the dashboard URL it prints)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="path to kaizen.toml (default: ./kaizen.toml or $KAIZEN_HOME/kaizen.toml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Command] = {}
    for name, module_path in COMMANDS.items():
        if command is not None and name != command:
            # Only the chosen command's module is imported; the others get a stub line in --help.
            sub.add_parser(name, help=_help_line(module_path))
            continue
        command_obj = load_command(module_path)
        p = sub.add_parser(
            name, help=command_obj.help, description=command_obj.help, epilog=f"Example:\n  {command_obj.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command_obj.add_arguments(p)
        commands[name] = command_obj
    return parser, commands


def load_command(target: str) -> Command:
    """'package.module:NAME' -> the Command it names (imports the module)."""
    module_path, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_path), attr)


def _help_line(target: str) -> str:
    # The help line without importing the module (and torch with it): read the module's source,
    # find `NAME = Command(help=...)` and resolve `help` when it names a string constant.
    module_path, _, attr = target.partition(":")
    spec = importlib.util.find_spec(module_path)
    if not (spec and spec.origin):
        return ""
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets):
            for kw in getattr(node.value, "keywords", []):
                if kw.arg == "help":
                    return kw.value.value if isinstance(kw.value, ast.Constant) else constants.get(kw.value.id, "")
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    parser, commands = build_parser(command)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"kaizen: error: {e}", file=sys.stderr)
        return 2
    try:
        return int(commands[args.command].run(args, cfg) or 0)
    except (UsageError, config_mod.ConfigError) as e:
        print(f"kaizen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["COMMANDS", "UsageError", "main"]
