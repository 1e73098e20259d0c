"""Admin API of the ingest path, mounted by the controller: what landed, draining, and the
raw tables (turns, feedback, dead letters). The controller provides `app.state.db` (its DuckDB
connection) and `app.state.sink`. Every route needs the admin key (kaizenlm.auth)."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Query, Request

from kaizenlm.auth import Admin
from kaizenlm.ingest import store

router = APIRouter(tags=["ingest"])


def _rows(cur, sql: str, params: list) -> list[dict]:
    result = cur.execute(sql, params)
    cols = [d[0] for d in result.description]
    return [dict(zip(cols, row)) for row in result.fetchall()]



@router.get("/admin/v1/stats")
def stats(request: Request, _: Admin) -> dict:
    cur = request.app.state.db.cursor()
    return {"counts": store.counts(cur), "feedback_mix": store.feedback_mix(cur), "sink": request.app.state.sink.stats}


@router.post("/admin/v1/drain")
def drain(request: Request, _: Admin, timeout: float = Query(60.0, gt=0, le=600)) -> dict:
    """Block until the sink has written everything the broker holds (for shutdown, demos, tests)."""
    done = request.app.state.sink.drain(timeout)
    if not done:
        raise HTTPException(504, f"sink still behind after {timeout:.0f}s; check `kaizen stats`")
    return {"drained": True, "counts": store.counts(request.app.state.db.cursor())}


@router.get("/admin/v1/turns")
def turns(request: Request, _: Admin, limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0),
          user_id: str | None = None, conversation_id: str | None = None) -> dict:
    where, params = [], []
    if user_id:
        where.append("user_id = ?")
        params.append(user_id)
    if conversation_id:
        where.append("conversation_id = ?")
        params.append(conversation_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    cur = request.app.state.db.cursor()
    total = cur.execute(f"SELECT count(*) FROM turns {clause}", params).fetchone()[0]
    rows = _rows(cur, f"SELECT * FROM turns {clause} ORDER BY ts DESC, event_id "
                      f"LIMIT ? OFFSET ?", [*params, limit, offset])
    for row in rows:  # JSON columns as JSON, not as strings
        row["messages"] = json.loads(row["messages"]) if row["messages"] else []
        row["retrieved_doc_ids"] = json.loads(row["retrieved_doc_ids"]) if row["retrieved_doc_ids"] else []
    return {"total": total, "limit": limit, "offset": offset, "items": rows}


@router.get("/admin/v1/feedback")
def feedback(request: Request, _: Admin, limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0),
             turn_id: str | None = None) -> dict:
    clause, params = ("WHERE turn_id = ?", [turn_id]) if turn_id else ("", [])
    cur = request.app.state.db.cursor()
    total = cur.execute(f"SELECT count(*) FROM feedback {clause}", params).fetchone()[0]
    rows = _rows(cur, f"SELECT * FROM feedback {clause} ORDER BY ts DESC, event_id LIMIT ? OFFSET ?",
                 [*params, limit, offset])
    return {"total": total, "limit": limit, "offset": offset, "items": rows}


@router.get("/admin/v1/dlq")
def dlq(request: Request, _: Admin, limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict:
    cur = request.app.state.db.cursor()
    total = cur.execute("SELECT count(*) FROM dlq").fetchone()[0]
    rows = _rows(cur, "SELECT topic, kafka_partition, kafka_offset, reason, ingested_at, "
                      "to_base64(raw) AS raw_b64 FROM dlq ORDER BY ingested_at DESC LIMIT ? OFFSET ?",
                 [limit, offset])
    return {"total": total, "limit": limit, "offset": offset, "items": rows}

