"""Registry access for processes other than the controller (the CLI, `kaizen retrain`).

Through the controller's admin API when it runs, else on the DuckDB file for one call
(kaizenlm.ingest.admin_client); both paths run the same `kaizenlm.registry.service` functions
and raise the same errors.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import duckdb

from kaizenlm.config import Config
from kaizenlm.ingest.admin_client import ControllerOrDuckDB, generic_error
from kaizenlm.registry import service
from kaizenlm.registry.errors import Conflict, NotFound, RegistryError

API_PREFIX = "/admin/v1/registry"


def registry_error(status: int, detail: str) -> RegistryError:
    """The registry's exception for an admin API error (status 0: no answer, or the file is held)."""
    if status == 404:
        return NotFound(detail)
    if status == 409:
        return Conflict(detail)
    return RegistryError(generic_error(status, detail))


class RegistryClient:
    """Registry operations returning JSON-shaped dicts, through the controller when it runs.

    Inside the controller pass its connection (`RegistryClient(cfg, con=db.cursor())`):
    calls then run on it directly, so code that takes a RegistryClient needs no branch
    for "am I the controller".
    """

    def __init__(self, cfg: Config, timeout_s: float = 30.0, con: duckdb.DuckDBPyConnection | None = None):
        self.cfg = cfg
        self.transport = ControllerOrDuckDB(cfg, timeout_s, registry_error, API_PREFIX, con)
        self.via_controller = self.transport.via_controller
        self._http, self._direct = self.transport.http, self.transport.direct

    @property
    def via(self) -> str:
        return self.transport.via

    def list_versions(self, kind: str | None = None, status: str | None = None) -> list[dict]:
        if self.via_controller:
            return self._http("GET", "/versions", params={"kind": kind, "status": status})["versions"]
        return self._direct(lambda con: service.list_versions(con, kind=kind, status=status))

    def show(self, version_id: str) -> dict:
        if self.via_controller:
            return self._http("GET", f"/versions/{quote(version_id, safe='')}")
        return self._direct(lambda con: service.show(con, version_id))

    def lineage(self, version_id: str) -> dict:
        if self.via_controller:
            return self._http("GET", f"/versions/{quote(version_id, safe='')}/lineage")
        return self._direct(lambda con: service.lineage(con, version_id))

    def register_version(self, kind: str, artifact_src_dir: str | Path, **fields) -> dict:
        """Fields as in versions.register_version (parent_id, config, snapshot_id, snapshot_hash,
        metrics, status, note, move). Via the controller the path must be on its machine."""
        src = str(Path(artifact_src_dir).resolve())
        if self.via_controller:
            return self._http("POST", "/versions", {"kind": kind, "artifact_src_dir": src, **fields})
        return self._direct(lambda con: service.register(con, self.cfg.home, kind, src, **fields))

    def set_status(self, version_id: str, status: str, note: str | None = None) -> dict:
        if self.via_controller:
            return self._http("POST", f"/versions/{quote(version_id, safe='')}/status", {"status": status, "note": note})
        return self._direct(lambda con: service.set_status(con, version_id, status, note))

    def set_metrics(self, version_id: str, metrics: dict, merge: bool = True) -> dict:
        if self.via_controller:
            return self._http("POST", f"/versions/{quote(version_id, safe='')}/metrics",
                              {"metrics": metrics, "merge": merge})
        return self._direct(lambda con: service.set_metrics(con, version_id, metrics, merge=merge))

    def mark_tainted(self, snapshot_ids: list[str]) -> list[str]:
        if self.via_controller:
            return self._http("POST", "/taint", {"snapshot_ids": snapshot_ids})["tainted"]
        return self._direct(lambda con: service.mark_tainted(con, snapshot_ids))["tainted"]

    def list_aliases(self) -> dict[str, str]:
        if self.via_controller:
            return self._http("GET", "/aliases")["aliases"]
        return self._direct(lambda con: service.list_aliases(con))["aliases"]

    def alias_history(self, alias: str) -> list[dict]:
        if self.via_controller:
            return self._http("GET", f"/aliases/{quote(alias, safe='')}/history")["history"]
        return self._direct(lambda con: service.alias_history(con, alias))

    def set_alias(self, alias: str, version_id: str, reason: str = "", actor: str = "cli") -> dict:
        if self.via_controller:
            return self._http("POST", f"/aliases/{quote(alias, safe='')}",
                              {"version_id": version_id, "reason": reason, "actor": actor})
        return self._direct(lambda con: service.set_alias(con, alias, version_id, reason=reason, actor=actor))

    def rollback_alias(self, alias: str, to_version: str | None = None, reason: str = "",
                       actor: str = "cli") -> dict:
        if self.via_controller:
            return self._http("POST", f"/aliases/{quote(alias, safe='')}/rollback",
                              {"to_version": to_version, "reason": reason, "actor": actor})
        return self._direct(
            lambda con: service.rollback_alias(con, alias, to_version=to_version, reason=reason, actor=actor)
        )
