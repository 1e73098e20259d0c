"""A/B and rollback operations for the CLI: through the controller's admin API when it
runs, else directly on the DuckDB file (then nothing is published: the controller
publishes the full routing state when it starts). Both paths run the same
kaizenlm.abtest.experiments functions and raise the registry's errors."""

from __future__ import annotations

from urllib.parse import quote

from kaizenlm.config import Config
from kaizenlm.ingest.admin_client import ControllerOrDuckDB
from kaizenlm.registry.client import registry_error


class ABClient:
    def __init__(self, cfg: Config, timeout_s: float = 60.0):
        self.cfg = cfg
        self.transport = ControllerOrDuckDB(cfg, timeout_s, registry_error, "/admin/v1")
        self.via_controller = self.transport.via_controller
        self._http, self._direct = self.transport.http, self.transport.direct

    @property
    def via(self) -> str:
        return self.transport.via

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
