"""Admin API for datasets and the right to be forgotten, mounted by the controller:
`app.include_router(router)`.

- ``POST /admin/v1/datasets/build``: curate a window into a snapshot (body: `BuildBody`);
- ``GET /admin/v1/datasets``: the registered snapshots, newest first;
- ``GET /admin/v1/datasets/{snapshot_id}``: one snapshot's manifest (id or unambiguous prefix);
- ``GET /admin/v1/rewards``: the reward distribution of a window and its calibration report;
- ``GET /admin/v1/user_anomalies``: the per-user anomaly report of a window (who is flagged
  and why: correction rate, repeated corrections, bursts; kaizenlm.datasets.integrity);
- ``POST /admin/v1/forget``: delete a user's data and mark what was built from it (`ForgetBody`).

The controller provides `app.state.db` (its DuckDB connection; each request uses its own
cursor), `app.state.cfg`, `app.state.db_lock` (held by the sink while it writes a batch)
and `app.state.sink`. Every endpoint needs the admin key (`require_admin`). Errors: 400 bad
input (the detail names the field), 401/403 key, 404 unknown snapshot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from kaizenlm.auth import require_admin
from kaizenlm.datasets import service
from kaizenlm.ingest.cursor import Cursor

router = APIRouter(tags=["datasets"], dependencies=[Depends(require_admin)])


@contextlib.contextmanager
def http_errors() -> Iterator[None]:
    try:
        yield
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    except (ValueError, OSError) as e:  # bad dates, missing files, config values (ConfigError is a ValueError)
        raise HTTPException(400, str(e)) from None


class BuildBody(BaseModel):
    since: str | None = Field(None, description="first day or time (ISO 8601); default as_of - curation.window_days")
    until: str | None = Field(None, description="end (exclusive), ISO 8601")
    as_of: str | None = Field(None, description="use only events ingested by then (default: now)")
    all: bool = Field(False, description="ignore curation.window_days")
    holdout: list[str] = Field(default_factory=list, description="files of held-out texts, on the controller's machine")
    replay: str | None = Field(None, description="JSONL of general examples (default: curation.replay_path; none: no replay rows)")
    dry_run: bool = False
    curation: dict = Field(default_factory=dict, description="[curation] keys to override for this build")
    reviews: bool = Field(True, description="use human review labels while reviewers agree (docs/ANNOTATION.md)")


class ForgetBody(BaseModel):
    user_id: str = Field(min_length=1, description="the pseudonymous user id the events carry")
    dry_run: bool = False


@router.post("/admin/v1/datasets/build")
def build_dataset(body: BuildBody, request: Request, con: Cursor) -> dict:
    with http_errors():
        return service.build(con, request.app.state.cfg, since=body.since, until=body.until, as_of=body.as_of,
                             all_data=body.all, holdout=body.holdout, replay=body.replay, dry_run=body.dry_run,
                             curation_overrides=body.curation, reviews=body.reviews)


@router.get("/admin/v1/datasets")
def list_datasets(con: Cursor) -> dict:
    return {"snapshots": service.list_snapshots(con)}


@router.get("/admin/v1/datasets/{snapshot_id}")
def show_dataset(snapshot_id: str, con: Cursor) -> dict:
    with http_errors():
        return service.show(con, snapshot_id)


@router.get("/admin/v1/rewards")
def reward_report(request: Request, con: Cursor, since: str | None = None, until: str | None = None,
                  as_of: str | None = None, all_data: bool = Query(False, alias="all")) -> dict:
    with http_errors():
        return service.reward_report(con, request.app.state.cfg, since=since, until=until, as_of=as_of,
                                     all_data=all_data)


@router.get("/admin/v1/user_anomalies")
def user_anomalies(request: Request, con: Cursor, since: str | None = None, until: str | None = None,
                   as_of: str | None = None, all_data: bool = Query(False, alias="all"),
                   limit: int = Query(25, ge=1, le=1000)) -> dict:
    with http_errors():
        return service.user_anomalies(con, request.app.state.cfg, since=since, until=until, as_of=as_of,
                                      all_data=all_data, limit=limit)


@router.post("/admin/v1/forget")
def forget_user(body: ForgetBody, request: Request, con: Cursor) -> dict:
    state = request.app.state
    drained = None
    sink = getattr(state, "sink", None)
    if not body.dry_run and sink is not None and sink.thread is not None and sink.thread.is_alive():
        drained = sink.drain(30.0)  # events of this user still in the broker would land after the delete
    with http_errors(), state.db_lock:  # the sink writes batches under this lock: no write-write conflict
        report = service.forget(con, state.cfg, body.user_id, dry_run=body.dry_run)
    return {**report, "sink_drained": drained}
