"""The gateway's collector routes: POST /v1/turns, /v1/feedback, /v1/signals, and GET /widget.js.

Each accepts one JSON object or an array of up to `gateway.max_batch`. A batch is all or
nothing: if any item is invalid the answer is 422 (403 for a bad feedback token) naming every
bad item and field, and nothing is published. Clients may send their own `event_id` (the
idempotency key end to end) and `ts`; otherwise the gateway assigns them.

Who may write what (kaizenlm.auth, docs/SECURITY.md): /v1/turns needs a server key (scope
`ingest`) and answers each turn's `feedback_token`. Feedback and signals need the `feedback`
scope; a server key's events are taken as they are, but a public (widget) key's events must
each name a turn and carry that turn's feedback token (kaizenlm.feedback.tokens), their
`user_id` is the token's user, their `ts` is the gateway's clock, and they are rate limited
per client address and per user (kaizenlm.feedback.ratelimit: 429 with Retry-After). The
token is checked and dropped here: it never reaches Kafka or DuckDB.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from pathlib import Path

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from kaizenlm import auth
from kaizenlm.feedback.ratelimit import Refused
from kaizenlm.feedback.tokens import FeedbackTokens, TokenError
from kaizenlm.ingest.events import ID_PATTERN, PAYLOADS, SCHEMA_VERSION, TOPIC_OF, new_event_id, validation_message
from kaizenlm.ingest.spool import SpoolFull

log = logging.getLogger(__name__)
router = APIRouter()
MIN_TS = 946_684_800  # 2000-01-01: an older timestamp is a client bug (seconds vs ms, or unset clocks)
MAX_FUTURE_S = 86_400
_ID_RE = re.compile(ID_PATTERN)
WIDGET_JS = Path(__file__).parent / "static" / "widget.js"


class BadRequest(Exception):
    def __init__(self, status: int, message: str, reason: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


def require_scope(request: Request, scope: str) -> auth.KeyInfo:
    """kaizenlm.auth's check against the app's keyring, raised as the fast routes' BadRequest."""
    try:
        return auth.check(auth.keyring_of(request.app), request.headers.get("authorization", ""), scope)
    except auth.AuthError as e:
        raise BadRequest(e.status, e.message, "unauthorized" if e.status == 401 else "forbidden") from None


def client_address(request: Request) -> str:
    """Who sent the request, for the per-address rate limit: the TCP peer, or behind a proxy
    (gateway.trust_forwarded_for) the last X-Forwarded-For entry, the one that proxy wrote."""
    if request.app.state.cfg.gateway.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded.strip():
            return forwarded.rsplit(",", 1)[-1].strip()
    return request.client.host if request.client else "unknown"


def _rate_limited(request: Request, refused: Refused | None) -> None:
    if refused is not None:
        request.app.state.metrics.inc("rate_limited_total", help="public feedback/signal requests refused by a "
                                      "rate limit (429)", limit=refused.limit)
        raise BadRequest(429, refused.message, "rate_limited", {"Retry-After": str(math.ceil(refused.retry_after_s))})


async def read_json_body(request: Request, max_bytes: int):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(413, f"body: {declared} bytes is over the limit of {max_bytes}", "too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(413, f"body: over the limit of {max_bytes} bytes", "too_large")
    body = b"".join(chunks)  # no copy for the usual single chunk
    if not body:
        raise BadRequest(400, "body: empty; send a JSON object or array", "empty")
    try:
        return orjson.loads(body)  # orjson refuses invalid UTF-8 too; say where only then
    except orjson.JSONDecodeError as e:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as u:
            raise BadRequest(400, f"body: not valid UTF-8 at byte {u.start}", "invalid_utf8") from None
        raise BadRequest(400, f"body: not valid JSON ({e})", "invalid_json") from None


def _envelope(event_type: str, item, index: int | None, tokens: FeedbackTokens | None = None) -> dict:
    """Validate one event into its envelope. `tokens`: the event came with a public key, so it
    must prove its turn and user with a feedback token, and the gateway stamps its time."""
    where = "" if index is None else f"[{index}]."
    if not isinstance(item, dict):
        raise BadRequest(422, f"{where or 'body'}: must be a JSON object, got {type(item).__name__}", "invalid")
    item = dict(item)
    event_id = item.pop("event_id", None)
    ts = item.pop("ts", None)
    token = item.pop("feedback_token", None)  # checked below for public keys, never stored
    if tokens is not None:
        ts = None  # a public client's clock is not evidence: burst detection reads these times
    if event_id is not None and (not isinstance(event_id, str) or not 0 < len(event_id) <= 128
                                 or not _ID_RE.match(event_id)):
        raise BadRequest(422, f"{where}event_id: must be 1-128 characters of A-Z a-z 0-9 _ . : @ -", "invalid")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))
                           or not MIN_TS <= ts <= time.time() + MAX_FUTURE_S):
        raise BadRequest(422, f"{where}ts: must be seconds since the epoch, after 2000-01-01 and at most "
                              "a day ahead of the gateway's clock", "invalid")
    try:
        payload = PAYLOADS[event_type].model_validate(item)
    except ValidationError as e:
        raise BadRequest(422, validation_message(e, where.rstrip(".")), "invalid") from None
    if tokens is not None:
        if payload.turn_id is None:
            raise BadRequest(422, f"{where}turn_id: required with a widget (feedback-scope) key, with the turn's "
                                  "feedback_token; conversation-only signals need a server key", "invalid")
        try:
            payload.user_id = tokens.verify(token, payload.turn_id, payload.user_id)
        except TokenError as e:
            raise BadRequest(403, f"{where}{e}", "bad_feedback_token") from None
    return {"event_id": event_id or new_event_id(), "type": event_type, "schema_version": SCHEMA_VERSION,
            "ts": float(ts) if ts is not None else time.time(),
            "payload": payload.model_dump(mode="json")}


def _items(body, max_batch: int) -> list:
    if isinstance(body, list):
        if not body:
            raise BadRequest(422, "body: empty array; send at least one event", "invalid")
        if len(body) > max_batch:
            raise BadRequest(413, f"body: {len(body)} events is over the batch limit of {max_batch}", "too_large")
    return body if isinstance(body, list) else [body]


def envelopes_from_body(event_type: str, body, max_batch: int, tokens: FeedbackTokens | None = None) -> list[dict]:
    """Every event of a body (one object or an array), all or nothing; `tokens` as in `_envelope`."""
    items = _items(body, max_batch)
    if not isinstance(body, list):
        return [_envelope(event_type, body, None, tokens)]
    problems, envelopes, status, reason = [], [], 422, "invalid"
    for i, item in enumerate(items):
        try:
            envelopes.append(_envelope(event_type, item, i, tokens))
        except BadRequest as e:
            problems.append(e.message)
            if e.status == 403:  # a bad token outweighs a bad field: the request is not allowed at all
                status, reason = 403, e.reason
    if problems:
        shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise BadRequest(status, f"{len(problems)} of {len(items)} events invalid, none accepted: {shown}", reason)
    return envelopes


def record_key(envelope: dict) -> str:
    """Kafka key: one conversation's events share a partition, so they stay in order."""
    p = envelope["payload"]
    return p.get("conversation_id") or p.get("turn_id") or envelope["event_id"]


def record_for(cfg, envelope: dict) -> tuple[str, bytes, bytes]:
    return cfg.kafka.topic(TOPIC_OF[envelope["type"]]), record_key(envelope).encode(), orjson.dumps(envelope)


async def publish_envelopes(request: Request, envelopes: list[dict]) -> str:
    """Hand validated envelopes to the producer; records accepted/spooled metrics and latency."""
    state = request.app.state
    started = time.perf_counter()
    status = await state.producer.publish([record_for(state.cfg, e) for e in envelopes])
    state.metrics.observe_produce_latency(time.perf_counter() - started)
    per_type: dict[str, int] = {}  # one locked metrics update per type, not per event
    for e in envelopes:
        per_type[e["type"]] = per_type.get(e["type"], 0) + 1
    for event_type, n in per_type.items():
        state.metrics.inc("events_accepted_total", n, help="events accepted", type=event_type)
    if status == "spooled":
        state.metrics.inc("events_spooled_total", len(envelopes), help="events written to the disk spool")
    return status


def json_response(content: dict, status: int, headers: dict | None = None) -> Response:
    """JSONResponse's body, encoded by orjson (the stdlib encoder costs more than the rest of a
    single-event request's handling in this module)."""
    return Response(orjson.dumps(content), status_code=status, headers=headers, media_type="application/json")


async def _collect(request: Request, event_type: str) -> Response:
    try:
        return await _collect_or_raise(request, event_type)
    except Exception:  # a bug, not bad input: say so without leaking details
        log.exception("collecting %s events failed", event_type)
        return json_response({"error": "internal error in the gateway; see its log"}, 500)


async def _collect_or_raise(request: Request, event_type: str) -> Response:
    state = request.app.state
    try:
        if state.draining:
            raise BadRequest(503, "gateway is shutting down; retry against another replica", "draining",
                             {"Retry-After": "1"})
        key = require_scope(request, auth.INGEST if event_type == "turn" else auth.FEEDBACK)
        body = await read_json_body(request, state.cfg.gateway.max_body_bytes)
        if key.server_side:
            envelopes = envelopes_from_body(event_type, body, state.cfg.gateway.max_batch)
        else:
            _rate_limited(request, state.rate_limits.charge_address(client_address(request),
                                                                    len(_items(body, state.cfg.gateway.max_batch))))
            envelopes = envelopes_from_body(event_type, body, state.cfg.gateway.max_batch, state.feedback_tokens)
            _rate_limited(request, state.rate_limits.charge_users(Counter(e["payload"]["user_id"] for e in envelopes)))
        status = await publish_envelopes(request, envelopes)
    except BadRequest as e:
        state.metrics.inc("events_rejected_total", help="requests rejected", reason=e.reason)
        return json_response({"error": e.message}, e.status, e.headers)
    except SpoolFull as e:
        state.metrics.inc("events_rejected_total", help="requests rejected", reason="spool_full")
        return json_response({"error": f"broker unreachable and spool full ({e}); retry later"}, 503,
                             {"Retry-After": "5"})
    answer = {"accepted": len(envelopes), "status": status, "event_ids": [e["event_id"] for e in envelopes]}
    if event_type == "turn":  # what the caller hands to the widget, so its users can give feedback
        turns = [(e["payload"]["turn_id"], e["payload"]["user_id"]) for e in envelopes]
        answer["turn_ids"] = [t for t, _ in turns]
        answer["feedback_tokens"] = [state.feedback_tokens.issue(t, u) for t, u in turns]
    return json_response(answer, 202)


@router.get("/widget.js")
async def widget() -> Response:
    """The embeddable feedback widget (kaizenlm/feedback/static/widget.js)."""
    return Response(WIDGET_JS.read_text(encoding="utf-8"), media_type="application/javascript",
                    headers={"Cache-Control": "max-age=300"})


@router.post("/v1/turns", status_code=202)
async def post_turns(request: Request) -> Response:
    """Log chat turns produced elsewhere (one object or an array); needs a server key (scope `ingest`).
    The answer carries `turn_ids` and a `feedback_token` per turn, for the widget."""
    return await _collect(request, "turn")


@router.post("/v1/feedback", status_code=202)
async def post_feedback(request: Request) -> Response:
    """Explicit feedback on a turn: thumbs, rating, comment, correction. A widget key's feedback
    carries the turn's `feedback_token`."""
    return await _collect(request, "feedback")


@router.post("/v1/signals", status_code=202)
async def post_signals(request: Request) -> Response:
    """Implicit signals: regenerate, copy, edit, abandon, completed, follow_up. A widget key's
    signals name a turn and carry its `feedback_token`."""
    return await _collect(request, "signal")


# What the gateway's fast path (kaizenlm.server.gateway.FastRoutes) answers without FastAPI's routing.
FAST_ROUTES = {"/v1/turns": post_turns, "/v1/feedback": post_feedback, "/v1/signals": post_signals}
