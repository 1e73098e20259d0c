"""How a process other than the controller reaches the controller's data.

DuckDB allows one read-write process per file and the controller owns it while it runs.
So: when the controller answers at `cfg.controller_url/healthz`, calls go to its admin API
(`http`); otherwise `direct` opens the DuckDB file itself for the duration of one call, so
a controller started later is not locked out. The registry, A/B and dataset clients each
hold one `ControllerOrDuckDB` and run the same service functions on both paths.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import httpx

from kaizenlm.config import Config


def controller_is_up(cfg: Config, timeout_s: float = 5.0) -> bool:
    # A refused connection (no controller) fails at once; the timeout only waits on a busy one.
    try:
        return httpx.get(cfg.controller_url + "/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def response_detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text


def generic_error(status: int, detail: str) -> str:
    """The message for an admin API error, saying what to do where there is something to do."""
    if status in (401, 403):
        return ("the controller refused the admin key; set auth.admin_key in kaizen.toml "
                "(or KAIZEN_ADMIN_KEY) to the controller's key")
    if status >= 500:
        return f"the controller failed ({status}): {detail}; see its log"
    return detail


class ControllerOrDuckDB:
    """`http` to the controller's admin API when it runs, else `direct` on the DuckDB file.

    error(status, detail) builds the exception an API error raises (status 0: no answer or
    the file could not be opened); `con` (inside the controller) makes every call direct on it.
    """

    def __init__(self, cfg: Config, timeout_s: float, error: Callable[[int, str], Exception],
                 prefix: str = "", con: duckdb.DuckDBPyConnection | None = None):
        self.cfg, self.timeout_s, self.error, self.prefix, self.con = cfg, timeout_s, error, prefix, con
        self.via_controller = con is None and controller_is_up(cfg)

    @property
    def via(self) -> str:
        if self.con is not None:
            return "connection"
        return "controller" if self.via_controller else "duckdb"

    def http(self, method: str, path: str, body: dict | None = None, params: dict | None = None):
        try:
            response = httpx.request(
                method, self.cfg.controller_url + self.prefix + path, json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers={"Authorization": f"Bearer {self.cfg.auth.admin_key}"}, timeout=self.timeout_s)
        except httpx.HTTPError as e:
            raise self.error(0, f"the controller at {self.cfg.controller_url} stopped answering: {e}") from None
        if response.status_code >= 400:
            raise self.error(response.status_code, response_detail(response))
        return response.json()

    def direct(self, operation: Callable[[duckdb.DuckDBPyConnection], object], read_only: bool = False):
        if self.con is not None:
            return operation(self.con)
        from kaizenlm.ingest.store import connect  # imported here: pyarrow is slow to import

        path = self.cfg.duckdb_path
        try:
            con = connect(path, read_only=read_only)
        except duckdb.IOException as e:
            raise self.error(0, f"cannot open {path}: it is in use by another process ({e}); if that is the "
                                f"controller, it did not answer at {self.cfg.controller_url}/healthz: stop it and "
                                "retry") from None
        try:
            return operation(con)
        finally:
            con.close()
