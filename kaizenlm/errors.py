"""Exceptions shared across packages. UsageError lives here, not in cli.py, so that
`python -m kaizenlm.cli` (which loads cli.py twice) still catches the one class."""


class UsageError(Exception):
    """Bad input from the user: printed as 'kaizen <command>: error: ...' with exit code 2."""
