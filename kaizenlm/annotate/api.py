"""Admin API of human review (the annotation queue), mounted by the controller: `app.include_router(router)`.

Routes under /admin/v1/annotate (docs/ANNOTATION.md):

- reviewers (scope `review`; the admin key has it too):
  ``GET queue`` (counts and the training gate), ``GET next`` (the calling reviewer's next open
  item), ``POST items/{item_id}/labels`` (a verdict), ``GET stats`` (kappa);
- queue management (scope `admin`): ``GET items`` (with each item's reviewers: which items are
  the overlap stays hidden from reviewers, so none can agree there and stray elsewhere),
  ``POST items`` (rows), ``POST sources`` (corrections,
  disagreements, a sample), ``POST sweep`` (the weekly sweep now), ``POST assign``,
  ``GET export`` (Label Studio tasks + configs), ``POST import`` (a Label Studio JSON export).

Who reviews: a `review` key names its reviewer (`kaizen keys create --scope review --reviewer
NAME`); such a key acts as that reviewer only (naming another is a 403) and labels only items
assigned to it. The admin key may name any `reviewer` (default: "admin") and label any item.
Reviewers never see the versions behind a blind pair or whose text an item is.

The controller provides `app.state.db` (each request uses its own cursor) and `app.state.cfg`.
Errors: 400 bad input (`detail` names the field: "verdict: must be one of accept, edit, reject"),
401/403 key, 404 unknown item, 409 a concurrent write (retry). Nothing is stored on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb
from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import BaseModel, Field

from kaizenlm.annotate import service
from kaizenlm.annotate.settings import KINDS, AnnotateError, NotFound
from kaizenlm.auth import ADMIN, Admin, KeyInfo, Reviewer
from kaizenlm.ingest.cursor import Cursor

PREFIX = "/admin/v1/annotate"
router = APIRouter(prefix=PREFIX, tags=["annotate"])


@contextlib.contextmanager
def http_errors() -> Iterator[None]:
    try:
        yield
    except NotFound as e:
        raise HTTPException(404, str(e)) from None
    except AnnotateError as e:
        raise HTTPException(400, str(e)) from None
    except duckdb.TransactionException as e:
        raise HTTPException(409, f"a concurrent write to the review tables; retry the request ({e})") from None


def reviewer_of(key: KeyInfo, asked: str | None) -> tuple[str, bool]:
    """(the reviewer a request acts as, whether the key is the admin's)."""
    asked = asked.strip() if isinstance(asked, str) and asked.strip() else None
    if ADMIN in key.scopes:
        return asked or key.reviewer or "admin", True
    if not key.reviewer:
        raise HTTPException(403, f"this key ({key.key_id}) names no reviewer; create one with "
                                 "`kaizen keys create --scope review --reviewer NAME`")
    if asked is not None and asked != key.reviewer:
        raise HTTPException(403, f"reviewer: this key ({key.key_id}) belongs to {key.reviewer!r} and cannot act "
                                 f"for {asked!r}")
    return key.reviewer, False


class RowsBody(BaseModel):
    kind: str = Field(description=f"one of {', '.join(KINDS)}")
    rows: list = Field(description="row objects (docs/ANNOTATION.md lists each kind's fields)")
    batch: str | None = None


class SourceBody(BaseModel):
    source: str = Field(description="corrections | disagreements | sample")
    since: str | None = Field(None, description="start of the window, inclusive (ISO 8601)")
    until: str | None = Field(None, description="end of the window, exclusive (ISO 8601)")
    size: int | None = Field(None, description="sample size (default annotate.sample_size)")
    limit: int | None = Field(None, description="at most this many items (corrections, disagreements)")
    batch: str | None = None


class SweepBody(BaseModel):
    until: str | None = Field(None, description="end of the window (default: now)")
    days: float = Field(7.0, description="length of the window in days")


class AssignBody(BaseModel):
    reviewers: list[str] = Field(default_factory=list, description="names (default annotate.reviewers)")
    overlap: float | None = Field(None, description="share of items for 2+ reviewers (default annotate.overlap)")


class LabelBody(BaseModel):
    verdict: str = Field(description="accept | edit | reject; on a blind pair a | b | tie | both_bad")
    label: str | None = Field(None, description="a label of annotate.schema (required on answers)")
    gold_answer: str | None = Field(None, description="the corrected answer (verdict edit)")
    note: str | None = None
    reviewer: str | None = Field(None, description="admin key only: whom the label is by (default: the key's reviewer)")


@router.get("/queue")
def queue_status(request: Request, con: Cursor, _: Reviewer) -> dict:
    with http_errors():
        return service.status(con, request.app.state.cfg)


@router.get("/items")
def list_items(con: Cursor, _: Admin, kind: str | None = None, reviewer: str | None = None,
               limit: int = Query(50, ge=1, le=10_000)) -> dict:
    with http_errors():
        return service.items(con, kind=kind, reviewer=reviewer, limit=limit)


@router.post("/items")
def add_items(body: RowsBody, con: Cursor, _: Admin) -> dict:
    with http_errors():
        return service.add_rows(con, body.kind, body.rows, batch=body.batch)


@router.post("/sources")
def add_from_source(body: SourceBody, request: Request, con: Cursor, _: Admin) -> dict:
    with http_errors():
        return service.add_from(con, request.app.state.cfg, body.source, since=body.since, until=body.until,
                                size=body.size, limit=body.limit, batch=body.batch)


@router.post("/sweep")
def sweep(body: SweepBody, request: Request, con: Cursor, _: Admin) -> dict:
    with http_errors():
        return service.sweep(con, request.app.state.cfg, until=body.until, days=body.days)


@router.post("/assign")
def assign(body: AssignBody, request: Request, con: Cursor, _: Admin) -> dict:
    with http_errors():
        return service.assign(con, request.app.state.cfg, body.reviewers, overlap=body.overlap)


@router.get("/next")
def next_item(con: Cursor, key: Reviewer, reviewer: str | None = None, kind: str | None = None) -> dict:
    name, _ = reviewer_of(key, reviewer)
    with http_errors():
        return service.next_item(con, name, kind=kind)


@router.post("/items/{item_id}/labels")
def label_item(item_id: str, body: LabelBody, request: Request, con: Cursor, key: Reviewer) -> dict:
    name, admin = reviewer_of(key, body.reviewer)
    with http_errors():
        return service.label(con, request.app.state.cfg, item_id, name, body.verdict, label=body.label,
                             gold_answer=body.gold_answer, note=body.note, require_assignment=not admin)


@router.get("/stats")
def stats(request: Request, con: Cursor, _: Reviewer, min_kappa: float | None = None) -> dict:
    with http_errors():
        return service.stats(con, request.app.state.cfg, min_kappa=min_kappa)


@router.get("/export")
def export(request: Request, con: Cursor, _: Admin, kind: str | None = None, reviewer: str | None = None,
           limit: int = Query(1000, ge=1, le=10_000)) -> dict:
    with http_errors():
        return service.export(con, request.app.state.cfg, kind=kind, reviewer=reviewer, limit=limit)


@router.post("/import")
def import_labels(request: Request, con: Cursor, _: Admin,
                  data: list | dict = Body(..., description="Label Studio's JSON export (a list of tasks)")) -> dict:
    with http_errors():
        return service.import_export(con, request.app.state.cfg, data)
