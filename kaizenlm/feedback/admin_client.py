"""Datasets and forgetting for processes other than the controller (`kaizen dataset`,
`kaizen forget`).

Like kaizenlm.registry.client: when the controller answers at ``cfg.controller_url/healthz``
every call goes to its admin API (kaizenlm.feedback.api); otherwise the client opens the
DuckDB file itself for the duration of one call. Both paths run the same
`kaizenlm.feedback.service` functions. Errors come back as `AdminError` with a message that
says what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import duckdb
import httpx

from kaizenlm.config import Config
from kaizenlm.feedback import service
from kaizenlm.registry.client import controller_is_up


class AdminError(Exception):
    """A dataset or forget operation failed; the message says why and what to do."""


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text


class AdminClient:
    def __init__(self, cfg: Config, timeout_s: float = 600.0):
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.via_controller = controller_is_up(cfg)

    @property
    def via(self) -> str:
        return "controller" if self.via_controller else "duckdb"

    def _http(self, method: str, path: str, body: dict | None = None, params: dict | None = None):
        response = httpx.request(
            method, self.cfg.controller_url + path, json=body,
            params={k: v for k, v in (params or {}).items() if v is not None},
            headers={"Authorization": f"Bearer {self.cfg.auth.admin_key}"}, timeout=self.timeout_s,
        )
        if response.status_code in (401, 403):
            raise AdminError("the controller refused the admin key; set auth.admin_key in kaizen.toml "
                             "(or KAIZEN_ADMIN_KEY) to the controller's key")
        if response.status_code >= 500:
            raise AdminError(f"the controller failed ({response.status_code}): {_detail(response)}; see its log")
        if response.status_code >= 400:
            raise AdminError(_detail(response))
        return response.json()

    def _direct(self, operation: Callable[[duckdb.DuckDBPyConnection], object], read_only: bool = False):
        from kaizenlm.ingest import store  # imported here: pyarrow is slow to import

        path = self.cfg.duckdb_path
        if not path.is_file():
            raise AdminError(f"no data yet: {path} does not exist (run `kaizen up` or `kaizen demo` first)")
        try:
            con = store.connect(path, read_only=read_only)
        except duckdb.IOException as e:
            raise AdminError(f"{path} is in use by another process ({e}); if that is the controller, it did not "
                             f"answer at {self.cfg.controller_url}/healthz: stop it and retry") from None
        try:
            return operation(con)
        except LookupError as e:
            raise AdminError(str(e.args[0] if e.args else e)) from None
        except (ValueError, OSError) as e:
            raise AdminError(str(e)) from None
        finally:
            con.close()

    def build(self, **options) -> dict:
        """options: since, until, as_of, all_data, holdout (files), replay (file), dry_run, curation_overrides."""
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
