"""POST /v1/chat/completions: OpenAI-compatible chat through the A/B router.

`model` names an alias (`serving.default_alias`, "champion", when empty or "default") or
a version id. While an experiment runs on the alias, each user is assigned to champion or
challenger by a hash of (experiment, user) (kaizenlm.abtest.routing). The answer is the
OpenAI shape plus `model_version`, `turn_id`, `feedback_token`, `variant` and `experiment_id`
(and the headers X-Kaizen-Model-Version / X-Kaizen-Turn-Id / X-Kaizen-Feedback-Token);
`stream: true` gives SSE chunks with the same extra fields. The feedback token
(kaizenlm.feedback.tokens) is what the widget sends back to give feedback on this turn as
this user; the endpoint needs the `chat` scope, which the public widget key lacks.

When the controller publishes a `knowledge` version and `knowledge.chat_retrieval` is on,
the last user message is answered with the top chunks of that index in the prompt
(kaizenlm.serving.retrieval); the turn logs the retrieved doc ids, and the answer
carries them as `retrieved_doc_ids`.

Every answered turn is logged to Kafka (kaizen.turns) with its variant, model_version,
experiment_id and latency. The log is written after the answer is sent, in batches of up to
100 ms (`TurnLog`), so neither the broker's round trip nor the Kafka client's per-request
cost is paid per answer; the gateway publishes what it holds before it shuts down. A
backend failure (5xx) is logged as a turn with an empty response: that is what the
error-rate guardrail counts.

The endpoint is answered by the gateway's ASGI fast path in front of FastAPI's router
(kaizenlm.server.gateway.FastRoutes): FastAPI's per-request machinery costs more CPU than the endpoint.

Who is the user: the request's `user` (OpenAI's field). Without one, the request is its
own user ("anon-<turn id>"), so it is randomised alone. The conversation is the
`conversation_id` field or X-Kaizen-Conversation-Id header when sent, else a hash of the
user and the first message (chat clients resend the whole history, so it is stable).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kaizenlm.abtest.routing import Route, RoutingFollower, RoutingState, UnknownModel
from kaizenlm.config import Config
from kaizenlm.feedback import collector
from kaizenlm.ingest.events import ID_PATTERN, MAX_ID, MAX_MESSAGES, MAX_TEXT, make_envelope, validation_message
from kaizenlm.ingest.spool import SpoolFull
from kaizenlm.serving.backends import BackendError, ChatParams, Completion, LocalServing
from kaizenlm.serving.openai_backend import OpenAIBackend
from kaizenlm.serving.retrieval import KnowledgeServing
from kaizenlm.serving.turn_shipper import ShipperClient, shipper_argv

log = logging.getLogger(__name__)
router = APIRouter()
_ID_RE = re.compile(ID_PATTERN)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
          "function": "tool"}


# --------------------------------------------------------------------------------------
# Gateway state: routing follower, backend, pending turn logs
# --------------------------------------------------------------------------------------


class TurnLog:
    """Chat turns go to Kafka in small batches: one publish per `flush_s` window instead of
    one per turn (a produce request costs the Python Kafka client about a millisecond of
    CPU; batching makes that per batch, not per turn). With a `shipper` (the default,
    `gateway.turn_shipper`) each batch is one frame to the worker's turn shipper process,
    which produces it (kaizenlm/serving/turn_shipper.py says why); without one, or while it is
    down, the worker publishes the batch itself. Turns reach the broker at most `flush_s`
    after their answer; `close` publishes what is left."""

    def __init__(self, flush_s: float = 0.1, max_batch: int = 1000):
        self.flush_s, self.max_batch = flush_s, max_batch
        self.buffer: list[dict] = []
        self.request: Request | None = None  # any request of this app: publish_envelopes reads its app.state
        self.pending: set[asyncio.Task] = set()
        self.shipper: ShipperClient | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, request: Request, envelope: dict) -> None:
        self.buffer.append(envelope)
        self.request = request
        if len(self.buffer) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_s, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        if self.shipper is not None and self.shipper.send(batch):
            return
        task = asyncio.get_running_loop().create_task(_publish(self.request, batch))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def close(self, timeout: float = 20.0) -> None:
        self._flush()
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=timeout)
        if self.shipper is not None:
            await self.shipper.close(timeout)


@dataclass
class Serving:
    cfg: Config
    follower: RoutingFollower
    backend: object
    knowledge: KnowledgeServing
    turns: TurnLog = field(default_factory=TurnLog)


def make_backend(serving) -> LocalServing | OpenAIBackend:
    """The backend the `[serving]` config names."""
    if serving.backend == "openai":
        return OpenAIBackend(serving.upstream_url, serving.upstream_api_key, serving.timeout_s, serving.retries,
                             serving.retry_backoff_s, serving.max_new_tokens)
    return LocalServing(serving.device, serving.threads, serving.max_new_tokens, serving.merge_adapters_max_params,
                        serving.precision)


def start_serving(cfg: Config) -> Serving:
    """Start following routing and create the backend (call from the gateway's lifespan)."""
    backend = make_backend(cfg.serving)
    knowledge = KnowledgeServing(cfg.knowledge)

    def on_change(state: RoutingState) -> None:  # load what the new routing serves before it is asked for
        knowledge.update(state.knowledge)
        if isinstance(backend, LocalServing):
            wanted = set(state.aliases.values())
            wanted |= {v for e in state.experiments for v in (e.champion, e.challenger)}
            targets = [state.targets[v] for v in sorted(wanted) if v in state.targets]
            threading.Thread(target=backend.warm, args=(targets,), name="local-warm", daemon=True).start()
    follower = RoutingFollower(cfg, on_change=on_change).start()
    return Serving(cfg, follower, backend, knowledge)


async def start_turn_shipper(serving: Serving, replica: str) -> None:
    """Give the turn log its shipper process (gateway.turn_shipper); call from the lifespan."""
    if serving.cfg.gateway.turn_shipper:
        shipper = ShipperClient(shipper_argv(serving.cfg, replica), serving.cfg.home / "logs" / f"{replica}-turns.log")
        await shipper.start()
        serving.turns.shipper = shipper


async def stop_serving(serving: Serving, timeout: float = 20.0) -> None:
    """Publish the turns not yet logged, then stop the follower and the backend."""
    await serving.turns.close(timeout)
    serving.follower.stop()
    await serving.backend.aclose()


# --------------------------------------------------------------------------------------
# Request
# --------------------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list | None = None


class ChatRequest(BaseModel):
    """The OpenAI fields the gateway uses; other fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(default="", max_length=MAX_ID)
    messages: list[_Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=512)
    stream: bool = False
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    conversation_id: str | None = Field(default=None, max_length=MAX_ID)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.headers = status, message, code, kind, headers


def _error_response(e: ApiError) -> JSONResponse:
    # OpenAI's error shape, so OpenAI clients show the message.
    return JSONResponse({"error": {"message": e.message, "type": e.kind, "code": e.code, "param": None}},
                        status_code=e.status, headers=e.headers)


def _text_of(content, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages[{index}].content: only text parts are supported", "unsupported_content")
        parts.append(part["text"])
    return "".join(parts)


def _messages(req: ChatRequest) -> list[dict]:
    out = []
    for i, m in enumerate(req.messages):
        role = _ROLES.get(m.role)
        if role is None:
            raise ApiError(400, f"messages[{i}].role: '{m.role}' is not one of {', '.join(_ROLES)}", "invalid_role")
        text = _text_of(m.content, i)
        if len(text) > MAX_TEXT:
            raise ApiError(400, f"messages[{i}].content: {len(text)} characters is over the limit of {MAX_TEXT}",
                           "message_too_long")
        if "\x00" in text:
            raise ApiError(400, f"messages[{i}].content: must not contain NUL characters", "invalid_content")
        out.append({"role": role, "content": text})
    return out


def _params(req: ChatRequest, cfg: Config) -> ChatParams:
    if req.n != 1:
        raise ApiError(400, "n: only n=1 is supported (ask again for another answer)", "unsupported_n")
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None and max_tokens > cfg.serving.max_tokens_limit:
        raise ApiError(400, f"max_tokens: {max_tokens} is over this gateway's limit of "
                       f"{cfg.serving.max_tokens_limit} (serving.max_tokens_limit)", "max_tokens_too_large")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > 4:
        raise ApiError(400, "stop: at most 4 sequences", "too_many_stop")
    return ChatParams(max_tokens, 1.0 if req.temperature is None else req.temperature,
                      1.0 if req.top_p is None else req.top_p, stop, req.seed)


def _user_id(user: str | None, turn_id: str) -> str:
    if not user:
        return f"anon-{turn_id[:16]}"
    if len(user) <= MAX_ID and _ID_RE.match(user):
        return user
    return "u-" + hashlib.sha256(user.encode()).hexdigest()[:24]  # keep it pseudonymous and valid


def _conversation_id(req: ChatRequest, request: Request, user_id: str, messages: list[dict]) -> str:
    given = req.conversation_id or request.headers.get("x-kaizen-conversation-id")
    if given:
        if not _ID_RE.match(given) or len(given) > MAX_ID:
            raise ApiError(400, "conversation_id: must be 1-128 characters of A-Z a-z 0-9 _ . : @ -",
                           "invalid_conversation_id")
        return given
    first = next((m["content"] for m in messages if m["role"] == "user"), messages[0]["content"])
    return "c-" + hashlib.sha256(f"{user_id}\x00{first}".encode()).hexdigest()[:24]


@dataclass
class _Turn:
    turn_id: str
    conversation_id: str
    user_id: str
    route: Route
    messages: list[dict]  # as the user sent them: what the turn log records
    started: float
    prompt: list[dict] = field(default_factory=list)  # what the backend is asked: messages + retrieved context
    retrieved_doc_ids: list[str] = field(default_factory=list)
    feedback_token: str = ""


async def _prepare(request: Request) -> tuple[_Turn, ChatRequest, ChatParams]:
    state = request.app.state
    if state.draining:
        raise ApiError(503, "gateway is shutting down; retry against another replica", "draining", "server_error",
                       {"Retry-After": "1"})
    started = time.perf_counter()
    try:
        collector.require_scope(request, "chat")
    except collector.BadRequest as e:
        raise ApiError(e.status, e.message, e.reason, "authentication_error") from None
    try:  # the collector's reader: size limit while reading, UTF-8 and JSON checks
        body = await collector.read_json_body(request, state.cfg.gateway.max_body_bytes)
    except collector.BadRequest as e:
        raise ApiError(e.status, e.message, e.reason) from None
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        raise ApiError(400, validation_message(e), "invalid_request") from None
    messages = _messages(req)
    params = _params(req, state.cfg)
    routing = state.serving.follower.state
    if routing is None:
        raise ApiError(503, "no routing state yet: this gateway has not heard from the controller on "
                       f"{state.cfg.kafka.topic('control')}; is `kaizen controller` running?", "no_routing",
                       "server_error", {"Retry-After": "1"})
    model = req.model.strip()
    model = state.cfg.serving.default_alias if model in ("", "default") else model
    turn_id = uuid.uuid4().hex
    user_id = _user_id(req.user, turn_id)
    try:
        route = routing.route(model, req.user or user_id)
    except UnknownModel as e:
        if model == state.cfg.serving.default_alias and not routing.aliases:  # a fresh install, base not ready
            raise ApiError(503, f"no '{model}' yet: the controller registers the base model at its first start "
                           "(converting the embedded one takes about a minute; see its log), or run "
                           "`kaizen base build`", "no_champion", "server_error", {"Retry-After": "5"}) from None
        raise ApiError(404, str(e), "model_not_found") from None
    turn = _Turn(turn_id, _conversation_id(req, request, user_id, messages), user_id, route, messages, started,
                 feedback_token=state.feedback_tokens.issue(turn_id, user_id))
    turn.prompt, turn.retrieved_doc_ids = await _retrieve(state.serving.knowledge, messages)
    return turn, req, params


async def _retrieve(knowledge: KnowledgeServing, messages: list[dict]) -> tuple[list[dict], list[str]]:
    try:
        return await knowledge.augment(messages)
    except Exception:  # retrieval is an aid: a failure must not fail the answer
        log.exception("retrieval failed; answering without it")
        return messages, []


# --------------------------------------------------------------------------------------
# Turn logging
# --------------------------------------------------------------------------------------


def _log_turn(request: Request, turn: _Turn, text: str, completion: Completion | None) -> None:
    """Queue the turn for the next batch to Kafka (see TurnLog)."""
    state = request.app.state
    latency_ms = (time.perf_counter() - turn.started) * 1000.0
    payload = {
        "turn_id": turn.turn_id, "conversation_id": turn.conversation_id, "user_id": turn.user_id,
        "model_version": turn.route.version_id, "variant": turn.route.variant,
        "experiment_id": turn.route.experiment_id, "messages": turn.messages, "response": text[:MAX_TEXT],
        "retrieved_doc_ids": turn.retrieved_doc_ids,
        "latency_ms": round(latency_ms, 3),
        "prompt_tokens": completion.prompt_tokens if completion else None,
        "completion_tokens": completion.completion_tokens if completion else None,
    }
    try:
        envelope = make_envelope("turn", payload)
    except ValidationError as e:  # should not happen: requests are checked against the same limits
        log.warning("turn %s not logged: %s", turn.turn_id, validation_message(e))
        return
    state.serving.turns.add(request, envelope)


async def _publish(request: Request, envelopes: list[dict]) -> None:
    try:
        await collector.publish_envelopes(request, envelopes)
    except SpoolFull as e:
        request.app.state.metrics.inc("turns_dropped_total", len(envelopes), help="chat turns not logged")
        log.error("%d turns not logged: broker unreachable and spool full (%s)", len(envelopes), e)
    except Exception:
        request.app.state.metrics.inc("turns_dropped_total", len(envelopes), help="chat turns not logged")
        log.exception("%d turns not logged", len(envelopes))


def _count(request: Request, turn: _Turn | None, status: int) -> None:
    labels = {"status": str(status)}
    if turn is not None:
        labels["model_version"] = turn.route.version_id
        labels["variant"] = turn.route.variant or "-"
    request.app.state.metrics.inc("chat_requests_total", help="chat completion requests", **labels)


# --------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------


def _extras(turn: _Turn) -> dict:
    r = turn.route
    return {"model_version": r.version_id, "turn_id": turn.turn_id, "feedback_token": turn.feedback_token,
            "variant": r.variant, "experiment_id": r.experiment_id, "retrieved_doc_ids": turn.retrieved_doc_ids}


def _headers(turn: _Turn) -> dict:
    return {"X-Kaizen-Model-Version": turn.route.version_id, "X-Kaizen-Turn-Id": turn.turn_id,
            "X-Kaizen-Feedback-Token": turn.feedback_token}


def _completion_body(turn: _Turn, c: Completion) -> dict:
    prompt, completion = c.prompt_tokens or 0, c.completion_tokens or 0
    return {
        "id": f"chatcmpl-{turn.turn_id}", "object": "chat.completion", "created": int(time.time()),
        "model": turn.route.version_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                     "logprobs": None}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        **_extras(turn),
    }


def _chunk(turn: _Turn, created: int, delta: dict, finish: str | None, usage: dict | None = None) -> bytes:
    body = {"id": f"chatcmpl-{turn.turn_id}", "object": "chat.completion.chunk", "created": created,
            "model": turn.route.version_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **_extras(turn)}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _backend_error(e: BackendError) -> ApiError:
    headers = {"Retry-After": f"{e.retry_after:g}"} if e.retry_after is not None else None
    return ApiError(e.status, e.message, e.code, "invalid_request_error" if e.status < 500 else "server_error",
                    headers)


async def chat_completions(request: Request) -> Response:
    """OpenAI-compatible chat completion through the A/B router (see the module docstring)."""
    try:
        return await _chat_completions(request)
    except Exception:
        log.exception("chat completion failed")
        return _error_response(ApiError(500, "internal error in the gateway; see its log", "internal_error",
                                        "server_error"))


async def _chat_completions(request: Request) -> Response:
    turn = None
    try:
        turn, req, params = await _prepare(request)
        backend = request.app.state.serving.backend
        if req.stream:
            return await _stream(request, backend, turn, params)
        completion = await backend.complete(turn.route.target, turn.prompt, params)
    except ApiError as e:
        _count(request, turn, e.status)
        return _error_response(e)
    except BackendError as e:
        if e.status >= 500:
            _log_turn(request, turn, "", None)  # a failed turn: counted by the error-rate guardrail
        _count(request, turn, e.status)
        return _error_response(_backend_error(e))
    _log_turn(request, turn, completion.text, completion)
    _count(request, turn, 200)
    return Response(orjson.dumps(_completion_body(turn, completion)), media_type="application/json",
                    headers=_headers(turn))


async def _stream(request: Request, backend, turn: _Turn, params: ChatParams) -> Response:
    chunks = backend.stream(turn.route.target, turn.prompt, params)
    # Wait for the first piece before answering 200, so an upstream failure is a proper HTTP error.
    first = await chunks.__anext__()
    created = int(time.time())

    async def events():
        text, last, failed = "", first, False
        try:
            yield _chunk(turn, created, {"role": "assistant", "content": ""}, None)
            piece = first
            while True:
                if piece.finish_reason is not None:
                    last = piece
                    if piece.text:
                        text += piece.text
                        yield _chunk(turn, created, {"content": piece.text}, None)
                    break
                if piece.text:
                    text += piece.text
                    yield _chunk(turn, created, {"content": piece.text}, None)
                try:
                    piece = await chunks.__anext__()
                except StopAsyncIteration:
                    break
            prompt, completion = last.prompt_tokens, last.completion_tokens
            usage = ({"prompt_tokens": prompt or 0, "completion_tokens": completion or 0,
                      "total_tokens": (prompt or 0) + (completion or 0)} if completion is not None else None)
            yield _chunk(turn, created, {}, last.finish_reason or "stop", usage)
            yield b"data: [DONE]\n\n"
        except BackendError as e:
            failed = True
            yield b"data: " + orjson.dumps({"error": {"message": e.message, "type": "server_error",
                                                      "code": e.code}}) + b"\n\n"
        finally:
            # Log before the first await: a client that hangs up (the OpenAI SDK does, right after
            # [DONE]) cancels this generator at its next await, and the turn would be lost.
            if failed:
                _log_turn(request, turn, "", None)
            else:  # also when the client went away mid-answer: log what it was shown
                _log_turn(request, turn, text, Completion(text, last.finish_reason or "stop", last.prompt_tokens,
                                                          last.completion_tokens))
            _count(request, turn, 502 if failed else 200)
            await chunks.aclose()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**_headers(turn), "Cache-Control": "no-cache"})


def install(app) -> None:
    """Mount the discovery routes (/v1/models, /v1/routing). POST /v1/chat/completions is
    answered by the gateway's fast path (kaizenlm.server.gateway.FastRoutes) with `chat_completions`."""
    app.include_router(router)


# --------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------


def _routing_or_error(request: Request) -> RoutingState:
    try:
        collector.require_scope(request, "chat")
    except collector.BadRequest as e:
        raise ApiError(e.status, e.message, e.reason, "authentication_error") from None
    state = request.app.state.serving.follower.state
    if state is None:
        raise ApiError(503, "no routing state yet; is `kaizen controller` running?", "no_routing", "server_error")
    return state


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """OpenAI-style model list: every alias (with the version it serves) and every servable version."""
    try:
        state = _routing_or_error(request)
    except ApiError as e:
        return _error_response(e)
    created = int(state.published_at)
    data = [{"id": alias, "object": "model", "created": created, "owned_by": "kaizen", "model_version": version}
            for alias, version in sorted(state.aliases.items())]
    data += [{"id": v, "object": "model", "created": created, "owned_by": "kaizen", "model_version": v}
             for v in sorted(state.targets)]
    return JSONResponse({"object": "list", "data": data})


@router.get("/v1/routing")
async def routing(request: Request) -> Response:
    """The routing state this gateway applies now (version, aliases, running experiments)."""
    try:
        state = _routing_or_error(request)
    except ApiError as e:
        return _error_response(e)
    return JSONResponse({"version": state.version, "published_at": state.published_at, "aliases": state.aliases,
                         "experiments": [e.__dict__ for e in state.experiments],
                         "knowledge": request.app.state.serving.knowledge.status()})
