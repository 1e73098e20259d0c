"""Admin API of the quarterly review, mounted by the controller:

    POST /admin/v1/review    write a review report now: {since?, until?, out?} -> {report, since, until}

Needs the admin key (kaizenlm.auth).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from kaizenlm.auth import Admin
from kaizenlm.review.report import resolve_window, write_review

router = APIRouter(tags=["review"])


class ReviewBody(BaseModel):
    since: str | None = None
    until: str | None = None
    out: str | None = None


@router.post("/admin/v1/review")
def review(request: Request, body: ReviewBody, _: Admin) -> dict:
    try:
        since, until = resolve_window(body.since, body.until, datetime.now().astimezone())
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    cursor = request.app.state.db.cursor()
    try:
        path = write_review(cursor, request.app.state.cfg, since, until, out_dir=body.out)
    finally:
        cursor.close()
    return {"report": str(path), "since": since.isoformat(), "until": until.isoformat()}
