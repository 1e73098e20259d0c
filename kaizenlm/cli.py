"""`kaizen` command line. The command table is a plain dict: name -> module.

Each command module exposes HELP (one line), EXAMPLE (shown under --help),
`add_arguments(parser)` and `run(args, cfg) -> int`. Modules are imported lazily so that
`kaizen --help` stays fast (no torch import). Bad input exits with code 2 and a message.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kaizenlm import config as config_mod
from kaizenlm.errors import UsageError

COMMANDS: dict[str, str] = {
    "init": "kaizenlm.commands.init",
    "broker": "kaizenlm.commands.broker",
    "gateway": "kaizenlm.commands.gateway",
    "controller": "kaizenlm.commands.controller",
    "up": "kaizenlm.commands.up",
    "stats": "kaizenlm.commands.stats",
    "dataset": "kaizenlm.feedback.dataset_command",
    "forget": "kaizenlm.feedback.forget_command",
    "registry": "kaizenlm.registry.cli",
    "ab": "kaizenlm.abtest.cli",
    "rollback": "kaizenlm.abtest.cli_rollback",
    "knowledge": "kaizenlm.retrain.cli_knowledge",
    "jobs": "kaizenlm.retrain.cli_jobs",
    "retrain": "kaizenlm.retrain.cli_retrain",
    "eval": "kaizenlm.retrain.cli_eval",
    "review": "kaizenlm.retrain.cli_review",
    "demo": "kaizenlm.demo.run",
    "base": "kaizenlm.retrain.cli_base",
    "dashboard": "kaizenlm.commands.dashboard",
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
    modules = {}
    for name, module_path in COMMANDS.items():
        if command is not None and name != command:
            # Only the chosen command's module is imported; the others get a stub line in --help.
            sub.add_parser(name, help=_help_line(module_path))
            continue
        module = importlib.import_module(module_path)
        p = sub.add_parser(
            name, help=module.HELP, description=module.HELP, epilog=f"Example:\n  {module.EXAMPLE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def _help_line(module_path: str) -> str:
    # Read HELP without importing heavy dependencies: it is the module's first HELP = "..." line.
    spec = importlib.util.find_spec(module_path)
    if spec and spec.origin:
        with open(spec.origin, encoding="utf-8") as f:
            for line in f:
                if line.startswith("HELP = "):
                    return line.split("=", 1)[1].strip().strip('"')
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    parser, modules = build_parser(command)
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
        return int(modules[args.command].run(args, cfg) or 0)
    except (UsageError, config_mod.ConfigError) as e:
        print(f"kaizen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["COMMANDS", "UsageError", "main"]
