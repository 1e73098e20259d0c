"""Admin API of the registry, mounted by the controller: `app.include_router(router)`.

The controller provides `app.state.db` (its DuckDB connection; each request uses its own
`.cursor()`), `app.state.cfg` (Config: admin key, home) and, optionally,
`app.state.on_alias_moved(move: dict)`, called after every committed alias move so the
controller can publish routing state on `kaizen.control`.

Every endpoint needs `Authorization: Bearer <auth.admin_key>` (kaizenlm.auth: 401 for a
missing or unknown key, 403 for a key without the admin scope). Errors: 404 unknown version/alias, 409 refused by the registry's state (nothing to roll back,
tainted version, concurrent change), 400 invalid value; `detail` says what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from kaizenlm.auth import require_admin
from kaizenlm.ingest.cursor import db_cursor
from kaizenlm.registry import service
from kaizenlm.registry.errors import Conflict, NotFound, RegistryError

router = APIRouter(prefix="/admin/v1/registry", tags=["registry"])


@contextmanager
def http_errors() -> Iterator[None]:
    """Registry errors -> HTTP status codes (the client maps them back)."""
    try:
        yield
    except NotFound as e:
        raise HTTPException(status_code=404, detail=str(e)) from None
    except Conflict as e:
        raise HTTPException(status_code=409, detail=str(e)) from None
    except (RegistryError, FileNotFoundError) as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    except duckdb.TransactionException as e:
        raise HTTPException(status_code=409, detail=f"concurrent registry change; retry the request ({e})") from None


def _announce(request: Request, move: dict) -> dict:
    hook = getattr(request.app.state, "on_alias_moved", None)
    if hook is not None:
        hook(move)
    return move


class SetAliasBody(BaseModel):
    version_id: str = Field(min_length=1)
    reason: str = ""
    actor: str = "admin-api"


class RollbackBody(BaseModel):
    to_version: str | None = None
    reason: str = ""
    actor: str = "admin-api"


class StatusBody(BaseModel):
    status: str
    note: str | None = None


class MetricsBody(BaseModel):
    metrics: dict
    merge: bool = True


class TaintBody(BaseModel):
    snapshot_ids: list[str]


class RegisterBody(BaseModel):
    kind: str
    artifact_src_dir: str = Field(description="directory on the controller's machine")
    parent_id: str | None = None
    config: dict = Field(default_factory=dict)
    snapshot_id: str | None = None
    snapshot_hash: str | None = None
    metrics: dict = Field(default_factory=dict)
    status: str = "candidate"
    note: str | None = None
    move: bool = False


_admin = [Depends(require_admin)]


@router.get("/versions", dependencies=_admin)
def list_versions(kind: str | None = None, status: str | None = None, con=Depends(db_cursor)) -> dict:
    with http_errors():
        return {"versions": service.list_versions(con, kind=kind, status=status)}


@router.post("/versions", status_code=201, dependencies=_admin)
def register_version(body: RegisterBody, request: Request, con=Depends(db_cursor)) -> dict:
    with http_errors():
        return service.register(con, request.app.state.cfg.home, **body.model_dump())


@router.get("/versions/{version_id}", dependencies=_admin)
def show_version(version_id: str, con=Depends(db_cursor)) -> dict:
    with http_errors():
        return service.show(con, version_id)


@router.get("/versions/{version_id}/lineage", dependencies=_admin)
def version_lineage(version_id: str, con=Depends(db_cursor)) -> dict:
    with http_errors():
        return service.lineage(con, version_id)


@router.post("/versions/{version_id}/status", dependencies=_admin)
def set_status(version_id: str, body: StatusBody, con=Depends(db_cursor)) -> dict:
    with http_errors():
        return service.set_status(con, version_id, body.status, body.note)


@router.post("/versions/{version_id}/metrics", dependencies=_admin)
def set_metrics(version_id: str, body: MetricsBody, con=Depends(db_cursor)) -> dict:
    with http_errors():
        return service.set_metrics(con, version_id, body.metrics, merge=body.merge)


@router.post("/taint", dependencies=_admin)
def mark_tainted(body: TaintBody, con=Depends(db_cursor)) -> dict:
    with http_errors():
        return service.mark_tainted(con, body.snapshot_ids)


@router.get("/aliases", dependencies=_admin)
def list_aliases(con=Depends(db_cursor)) -> dict:
    with http_errors():
        return service.list_aliases(con)


@router.get("/aliases/{alias}/history", dependencies=_admin)
def alias_history(alias: str, con=Depends(db_cursor)) -> dict:
    with http_errors():
        return {"history": service.alias_history(con, alias)}


@router.post("/aliases/{alias}", dependencies=_admin)
def set_alias(alias: str, body: SetAliasBody, request: Request, con=Depends(db_cursor)) -> dict:
    with http_errors():
        move = service.set_alias(con, alias, body.version_id, reason=body.reason, actor=body.actor)
    return _announce(request, move)


@router.post("/aliases/{alias}/rollback", dependencies=_admin)
def rollback_alias(alias: str, body: RollbackBody, request: Request, con=Depends(db_cursor)) -> dict:
    with http_errors():
        move = service.rollback_alias(con, alias, to_version=body.to_version, reason=body.reason, actor=body.actor)
    return _announce(request, move)
