"""Annotation access for processes other than the controller (the CLI).

Through the controller's admin API (/admin/v1/annotate) when it runs, else on the DuckDB file
for one call (kaizenlm.ingest.admin_client.ControllerOrDuckDB); both paths run the same
`kaizenlm.annotate.service` functions and raise the same errors: AnnotateError for bad input
(the message names the field), NotFound for an unknown item, AnnotateUnavailable when neither
the controller nor the file can be used.
"""

from __future__ import annotations

from urllib.parse import quote

import duckdb

from kaizenlm.annotate import service
from kaizenlm.annotate.settings import AnnotateError, NotFound
from kaizenlm.config import Config
from kaizenlm.ingest.admin_client import ControllerOrDuckDB, generic_error

PREFIX = "/admin/v1/annotate"  # kaizenlm.annotate.api.PREFIX (not imported: the CLI need not load FastAPI)


class AnnotateUnavailable(RuntimeError):
    """The controller refused the key, failed, stopped answering, or the file is held."""


def annotate_error(status: int, detail: str) -> Exception:
    """The exception of an admin API answer (status 0: no answer, or the file could not be opened)."""
    if status == 404 and detail == "Not Found":  # FastAPI's answer for a route it does not have
        return AnnotateUnavailable("the running controller has no /admin/v1/annotate routes: upgrade kaizenlm there, "
                                   "or stop it to work on the DuckDB file")
    if status == 404:
        return NotFound("item_id", detail.split(": ", 1)[-1])
    if 400 <= status < 500 and status not in (401, 403):
        field, _, problem = detail.partition(": ")
        if not problem or field.startswith("["):  # not "field: problem" (FastAPI's 422 list, say)
            return AnnotateError("request", detail)
        return AnnotateError(field, problem)  # str() gives the detail back as it was
    return AnnotateUnavailable(generic_error(status, detail))


class AnnotateClient:
    """The review queue through the controller when it runs (as the admin key: the CLI may
    name any reviewer), else on the DuckDB file. Inside the controller pass its connection."""

    def __init__(self, cfg: Config, timeout_s: float = 120.0, con: duckdb.DuckDBPyConnection | None = None):
        self.cfg = cfg
        self.transport = ControllerOrDuckDB(cfg, timeout_s, annotate_error, PREFIX, con)
        self.via_controller = self.transport.via_controller
        self._http = self.transport.http

    @property
    def via(self) -> str:
        return self.transport.via

    def _direct(self, operation):
        return self.transport.direct(operation)  # creates the file (and the review tables) when there is none

    def status(self) -> dict:
        if self.via_controller:
            return self._http("GET", "/queue")
        return self._direct(lambda con: service.status(con, self.cfg))

    def items(self, kind: str | None = None, reviewer: str | None = None, limit: int = 50) -> dict:
        if self.via_controller:
            return self._http("GET", "/items", params={"kind": kind, "reviewer": reviewer, "limit": limit})
        return self._direct(lambda con: service.items(con, kind=kind, reviewer=reviewer, limit=limit))

    def add_rows(self, kind: str, rows: list, batch: str | None = None) -> dict:
        if self.via_controller:
            return self._http("POST", "/items", {"kind": kind, "rows": rows, "batch": batch})
        return self._direct(lambda con: service.add_rows(con, kind, rows, batch=batch))

    def add_from(self, source: str, **options) -> dict:
        """options: since, until (ISO 8601), size, limit, batch."""
        if self.via_controller:
            return self._http("POST", "/sources", {"source": source, **options})
        return self._direct(lambda con: service.add_from(con, self.cfg, source, **options))

    def sweep(self, until: str | None = None, days: float = 7.0) -> dict:
        if self.via_controller:
            return self._http("POST", "/sweep", {"until": until, "days": days})
        return self._direct(lambda con: service.sweep(con, self.cfg, until=until, days=days))

    def assign(self, reviewers: list[str] | None = None, overlap: float | None = None) -> dict:
        if self.via_controller:
            return self._http("POST", "/assign", {"reviewers": list(reviewers or []), "overlap": overlap})
        return self._direct(lambda con: service.assign(con, self.cfg, reviewers, overlap=overlap))

    def next_item(self, reviewer: str, kind: str | None = None) -> dict:
        if self.via_controller:
            return self._http("GET", "/next", params={"reviewer": reviewer, "kind": kind})
        return self._direct(lambda con: service.next_item(con, reviewer, kind=kind))

    def label(self, item_id: str, reviewer: str, verdict: str, label: str | None = None,
              gold_answer: str | None = None, note: str | None = None) -> dict:
        if self.via_controller:
            return self._http("POST", f"/items/{quote(item_id, safe='')}/labels",
                              {"verdict": verdict, "label": label, "gold_answer": gold_answer, "note": note,
                               "reviewer": reviewer})
        return self._direct(lambda con: service.label(con, self.cfg, item_id, reviewer, verdict, label=label,
                                                      gold_answer=gold_answer, note=note))

    def stats(self, min_kappa: float | None = None) -> dict:
        if self.via_controller:
            return {**self._http("GET", "/stats", params={"min_kappa": min_kappa}), "source": "controller"}
        return self._direct(lambda con: service.stats(con, self.cfg, min_kappa=min_kappa))

    def export(self, kind: str | None = None, reviewer: str | None = None, limit: int = 1000) -> dict:
        if self.via_controller:
            return self._http("GET", "/export", params={"kind": kind, "reviewer": reviewer, "limit": limit})
        return self._direct(lambda con: service.export(con, self.cfg, kind=kind, reviewer=reviewer, limit=limit))

    def import_export(self, data: list) -> dict:
        """Record the labels of a parsed Label Studio JSON export."""
        if self.via_controller:
            return self._http("POST", "/import", data)
        return self._direct(lambda con: service.import_export(con, self.cfg, data))
