"""What one `kaizen` subcommand is: a help line, an example, its arguments and its run function.

Each package's `cli.py` defines its commands as `Command` values; `kaizenlm/cli.py` maps
command names to them in one plain dict. `run` returns the exit code; bad input raises
`kaizenlm.errors.UsageError` (exit code 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    help: str
    """One line, shown in `kaizen --help` and as the command's description."""
    example: str
    """A complete command line, shown under the command's --help."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the command's arguments to its parser."""
    run: Callable[[argparse.Namespace, object], int]
    """Runs the command with the parsed arguments and the loaded Config; returns the exit code."""
