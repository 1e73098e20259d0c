"""A/B and rollback operations for the CLI: through the controller's admin API when it
runs, else directly on the DuckDB file (then nothing is published: the controller
publishes the full routing state when it starts). Both paths run the same
kaizenlm.abtest.experiments functions and raise the registry's errors."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import duckdb
import httpx

from kaizenlm.config import Config
from kaizenlm.registry.client import _error_from_response, controller_is_up
from kaizenlm.registry.errors import RegistryError


class ABClient:
    def __init__(self, cfg: Config, timeout_s: float = 60.0):
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.via_controller = controller_is_up(cfg)

    @property
    def via(self) -> str:
        return "controller" if self.via_controller else "duckdb"

    def _http(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> dict:
        try:
            response = httpx.request(
                method, self.cfg.controller_url + "/admin/v1" + path, json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers={"Authorization": f"Bearer {self.cfg.auth.admin_key}"}, timeout=self.timeout_s)
        except httpx.HTTPError as e:
            raise RegistryError(f"the controller at {self.cfg.controller_url} stopped answering: {e}") from None
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response.json()

    def _direct(self, operation: Callable[[duckdb.DuckDBPyConnection], object]):
        from kaizenlm.ingest.store import connect  # imported here: pyarrow is slow to import

        try:
            con = connect(self.cfg.duckdb_path)
        except duckdb.IOException as e:
            raise RegistryError(
                f"cannot open {self.cfg.duckdb_path}: {e}. Another process holds it; if that is the "
                f"controller, it did not answer at {self.cfg.controller_url}/healthz") from None
        try:
            return operation(con)
        finally:
            con.close()

    def start(self, challenger: str, alias: str = "champion", split: float | None = None,
              settings: dict | None = None, actor: str = "cli") -> dict:
        if self.via_controller:
            return self._http("POST", "/ab/experiments", {"challenger": challenger, "alias": alias, "split": split,
                                                         "settings": settings or {}, "actor": actor})
        from kaizenlm.abtest import experiments as ab

        return self._direct(lambda con: ab.start_experiment(con, self.cfg, challenger, alias, split, settings,
                                                            actor).to_dict())

    def status(self, experiment_id: str | None = None, limit: int = 20) -> dict:
        if self.via_controller:
            path = f"/ab/experiments/{quote(experiment_id, safe='')}" if experiment_id else "/ab/experiments"
            return self._http("GET", path, params={"limit": limit})
        from kaizenlm.abtest import experiments as ab

        return self._direct(lambda con: ab.status(con, experiment_id, limit))

    def stop(self, experiment_id: str, reason: str = "", promote: bool = False, actor: str = "cli") -> dict:
        if self.via_controller:
            return self._http("POST", f"/ab/experiments/{quote(experiment_id, safe='')}/stop",
                              {"reason": reason, "promote": promote, "actor": actor})
        from kaizenlm.abtest import experiments as ab

        return self._direct(lambda con: ab.stop_experiment(con, experiment_id, reason, promote, actor))

    def analyse(self, experiment_id: str | None = None) -> dict:
        if self.via_controller:
            return self._http("POST", "/ab/analyse", {"experiment_id": experiment_id})
        from kaizenlm.abtest import experiments as ab

        return self._direct(lambda con: {"results": ab.analyse_running(con, self.cfg, experiment_id=experiment_id,
                                                                       actor="ab-analysis:cli"), "routing": None})

    def rollback(self, alias: str = "champion", to_version: str | None = None, reason: str = "",
                 actor: str = "cli") -> dict:
        if self.via_controller:
            return self._http("POST", "/rollback", {"alias": alias, "to_version": to_version, "reason": reason,
                                                    "actor": actor})
        from kaizenlm.abtest import experiments as ab

        return self._direct(lambda con: ab.rollback(con, alias, to_version, reason, actor))
