"""Registry access for processes other than the controller (the CLI, `kaizen retrain`).

DuckDB allows one read-write process per file and the controller owns it while it runs.
So: when the controller answers at `cfg.controller_url/healthz`, every call (reads too)
goes to its admin API; otherwise the client opens the DuckDB file itself, only for the
duration of one call, so a controller started later is not locked out. Both paths run
the same `kaizenlm.registry.service` functions and raise the same errors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import duckdb
import httpx

from kaizenlm.config import Config
from kaizenlm.registry import service
from kaizenlm.registry.errors import Conflict, NotFound, RegistryError

API_PREFIX = "/admin/v1/registry"


def controller_is_up(cfg: Config, timeout_s: float = 5.0) -> bool:
    # A refused connection (no controller) fails at once; the timeout only waits on a busy one.
    try:
        return httpx.get(cfg.controller_url + "/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def _error_from_response(response: httpx.Response) -> RegistryError:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if response.status_code == 404:
        return NotFound(str(detail))
    if response.status_code == 409:
        return Conflict(str(detail))
    if response.status_code in (401, 403):
        return RegistryError(
            "the controller refused the admin key; set auth.admin_key in kaizen.toml "
            "(or KAIZEN_ADMIN_KEY) to the controller's key"
        )
    if response.status_code < 500:
        return RegistryError(str(detail))
    return RegistryError(f"the controller failed ({response.status_code}): {detail}; see its log")


class RegistryClient:
    """Registry operations returning JSON-shaped dicts, through the controller when it runs.

    Inside the controller pass its connection (`RegistryClient(cfg, con=db.cursor())`):
    calls then run on it directly, so code that takes a RegistryClient needs no branch
    for "am I the controller".
    """

    def __init__(self, cfg: Config, timeout_s: float = 30.0, con: duckdb.DuckDBPyConnection | None = None):
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.con = con
        self.via_controller = con is None and controller_is_up(cfg)

    @property
    def via(self) -> str:
        if self.con is not None:
            return "connection"
        return "controller" if self.via_controller else "duckdb"

    def _http(self, method: str, path: str, body: dict | None = None, params: dict | None = None):
        response = httpx.request(
            method, self.cfg.controller_url + API_PREFIX + path, json=body,
            params={k: v for k, v in (params or {}).items() if v is not None},
            headers={"Authorization": f"Bearer {self.cfg.auth.admin_key}"}, timeout=self.timeout_s,
        )
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response.json()

    def _direct(self, operation: Callable[[duckdb.DuckDBPyConnection], object]):
        if self.con is not None:
            return operation(self.con)
        from kaizenlm.ingest.store import connect  # imported here: pyarrow is slow to import

        try:
            con = connect(self.cfg.duckdb_path)
        except duckdb.IOException as e:
            raise RegistryError(
                f"cannot open {self.cfg.duckdb_path}: {e}. Another process holds it; if that is the "
                f"controller, it did not answer at {self.cfg.controller_url}/healthz"
            ) from None
        try:
            return operation(con)
        finally:
            con.close()

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
