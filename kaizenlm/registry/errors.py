"""Registry errors. Messages name the problem and say what to do next; the CLI prints
them with exit code 2 and the admin API maps them to 404 / 409 / 400."""

from __future__ import annotations


class RegistryError(ValueError):
    """Invalid registry request (bad kind, status, alias name, or a refused move)."""


class NotFound(RegistryError):
    """No such version or alias."""


class Conflict(RegistryError):
    """The request contradicts the registry's state (e.g. nothing left to roll back)."""
