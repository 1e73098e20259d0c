"""Datasets and forgetting for processes other than the controller (`kaizen dataset`,
`kaizen forget`).

Through the controller's admin API (kaizenlm.datasets.api) when it runs, else on the DuckDB
file for one call (kaizenlm.ingest.admin_client); both paths run the same
`kaizenlm.datasets.service` functions. Errors come back as `AdminError` with a message that
says what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import duckdb

from kaizenlm.config import Config
from kaizenlm.datasets import service
from kaizenlm.ingest.admin_client import ControllerOrDuckDB, generic_error


class AdminError(Exception):
    """A dataset or forget operation failed; the message says why and what to do."""


def _admin_error(status: int, detail: str) -> AdminError:
    return AdminError(generic_error(status, detail))


class AdminClient:
    def __init__(self, cfg: Config, timeout_s: float = 600.0):
        self.cfg = cfg
        self.transport = ControllerOrDuckDB(cfg, timeout_s, _admin_error)
        self.via_controller = self.transport.via_controller
        self._http = self.transport.http

    @property
    def via(self) -> str:
        return self.transport.via

    def _direct(self, operation: Callable[[duckdb.DuckDBPyConnection], object], read_only: bool = False):
        path = self.cfg.duckdb_path
        if not path.is_file():
            raise AdminError(f"no data yet: {path} does not exist (run `kaizen up` or `kaizen demo` first)")
        try:
            return self.transport.direct(operation, read_only=read_only)
        except LookupError as e:
            raise AdminError(str(e.args[0] if e.args else e)) from None
        except (ValueError, OSError) as e:
            raise AdminError(str(e)) from None

    def build(self, **options) -> dict:
        """options: since, until, as_of, all_data, holdout (files), replay (file), dry_run, curation_overrides,
        reviews (use human review labels while reviewers agree; default true)."""
        if self.via_controller:
            body = {k: v for k, v in options.items() if k not in ("all_data", "curation_overrides")}
            body.update({"all": options.get("all_data", False), "curation": options.get("curation_overrides") or {}})
            # the controller reads the files: name them absolutely (it runs elsewhere, in its own directory)
            body["holdout"] = [str(Path(f).expanduser().resolve()) for f in options.get("holdout") or []]
            if options.get("replay"):
                body["replay"] = str(Path(options["replay"]).expanduser().resolve())
            return self._http("POST", "/admin/v1/datasets/build", body)
        return self._direct(lambda con: service.build(con, self.cfg, **options), read_only=options.get("dry_run", False))

    def list_snapshots(self) -> list[dict]:
        if self.via_controller:
            return self._http("GET", "/admin/v1/datasets")["snapshots"]
        if not self.cfg.duckdb_path.is_file():
            return []
        return self._direct(service.list_snapshots, read_only=True)

    def show(self, snapshot_id: str) -> dict:
        if self.via_controller:
            return self._http("GET", f"/admin/v1/datasets/{quote(snapshot_id, safe='')}")
        return self._direct(lambda con: service.show(con, snapshot_id), read_only=True)

    def reward_report(self, since=None, until=None, as_of=None, all_data: bool = False) -> dict:
        if self.via_controller:
            return self._http("GET", "/admin/v1/rewards",
                              params={"since": since, "until": until, "as_of": as_of, "all": all_data or None})
        return self._direct(lambda con: service.reward_report(con, self.cfg, since=since, until=until, as_of=as_of,
                                                              all_data=all_data), read_only=True)

    def forget(self, user_id: str, dry_run: bool = False) -> dict:
        if self.via_controller:
            return self._http("POST", "/admin/v1/forget", {"user_id": user_id, "dry_run": dry_run})
        return self._direct(lambda con: service.forget(con, self.cfg, user_id, dry_run=dry_run), read_only=dry_run)
