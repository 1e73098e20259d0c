"""The `openai` backend: any OpenAI-compatible upstream (vLLM serving LoRA modules, another
gateway), over kaizenlm.serving.http11; upstream failures become BackendErrors that say what to check."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from kaizenlm.abtest.routing import Target
from kaizenlm.serving import http11
from kaizenlm.serving.backends import BackendError, ChatParams, Chunk, Completion

_RETRY_STATUSES = {429, 500, 502, 503, 504}


@dataclass
class OpenAIBackend:
    """POST {base_url}/chat/completions on an OpenAI-compatible server.

    Transport: kaizenlm.serving.http11 (keep-alive, ~0.1 ms of CPU per request; httpx costs
    ~2 ms here, more than the gateway's whole budget). Retries (with doubling backoff and
    jitter) after connection errors, 429 and 500/502/503/504, never after a read timeout
    (the upstream may still be working on it). Errors map to: timeout -> 504; upstream
    400/413/422 -> 400 (the request was refused); 429 after retries -> 503 with
    Retry-After; anything else -> 502, each with a message naming the cause.
    """

    base_url: str
    api_key: str = ""
    timeout: float = 60.0
    retries: int = 2
    backoff_s: float = 0.2
    default_max_tokens: int = 128
    pool: http11.Pool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.pool = self.pool or http11.Pool(self.base_url, headers, timeout=self.timeout,
                                             connect_timeout=min(5.0, self.timeout))

    def _body(self, target: Target, messages: list[dict], params: ChatParams, stream: bool) -> dict:
        body = {"model": target.upstream_model or target.version_id, "messages": messages,
                "max_tokens": params.max_tokens or self.default_max_tokens, "temperature": params.temperature,
                "top_p": params.top_p, "stream": stream}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def _send(self, body: dict, stream: bool) -> http11.Response:
        payload = orjson.dumps(body)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self.pool.request("POST", "/chat/completions", payload, stream=stream)
            except http11.ReadTimeout:
                raise BackendError(504, f"upstream {self.base_url} did not answer within {self.timeout:g}s "
                                   "(serving.timeout_s)", "upstream_timeout") from None
            except http11.TransportError as e:
                if not last:
                    await self._pause(attempt)
                    continue
                raise BackendError(502, f"upstream {self.base_url} unreachable after {self.retries + 1} attempts: "
                                   f"{e}", "upstream_unreachable") from None
            if response.status < 400:
                return response
            detail = await _error_detail(response)
            if response.status in _RETRY_STATUSES and not last:
                await self._pause(attempt, response.headers.get("retry-after"))
                continue
            raise _map_status(response.status, detail, body["model"], self.base_url,
                              response.headers.get("retry-after"))
        raise AssertionError("unreachable")  # the last attempt always returns or raises

    async def _pause(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.backoff_s * (2**attempt) * (0.5 + random.random())
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            delay = max(delay, min(float(retry_after), 10.0))
        await asyncio.sleep(delay)

    async def complete(self, target: Target, messages: list[dict], params: ChatParams) -> Completion:
        response = await self._send(self._body(target, messages, params, stream=False), stream=False)
        try:
            data = orjson.loads(response.body)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(502, f"upstream {self.base_url} answered HTTP {response.status} with a body that "
                               f"is not a chat completion: {response.body[:200]!r}", "upstream_bad_body") from None
        usage = data.get("usage") or {}
        return Completion(text, choice.get("finish_reason") or "stop", usage.get("prompt_tokens"),
                          usage.get("completion_tokens"))

    async def stream(self, target: Target, messages: list[dict], params: ChatParams) -> AsyncIterator[Chunk]:
        response = await self._send(self._body(target, messages, params, stream=True), stream=True)
        finish, usage = None, {}
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise BackendError(502, f"upstream sent an unreadable stream event: {data[:200]!r}",
                                       "upstream_bad_body") from None
                if "error" in event:
                    raise BackendError(502, f"upstream failed mid-stream: {_message_of(event)}", "upstream_error")
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield Chunk(text)
        except http11.ReadTimeout:
            raise BackendError(504, f"upstream {self.base_url} stopped sending within {self.timeout:g}s",
                               "upstream_timeout") from None
        except http11.TransportError as e:
            raise BackendError(502, f"upstream {self.base_url} broke the stream: {e}", "upstream_unreachable") from None
        finally:
            await response.aclose()
        yield Chunk("", finish or "stop", usage.get("prompt_tokens"), usage.get("completion_tokens"))

    async def aclose(self) -> None:
        await self.pool.aclose()


def _message_of(data) -> str:
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    return str(data)[:500]


async def _error_detail(response: http11.Response) -> str:
    try:
        body = response.body or await response.read()
    except (http11.TransportError, http11.ReadTimeout):
        return "(no body)"
    finally:
        await response.aclose()
    try:
        return _message_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", errors="replace")


def _map_status(status: int, detail: str, model: str, base_url: str, retry_after: str | None) -> BackendError:
    if status in (400, 413, 422):
        return BackendError(400, f"upstream refused the request (HTTP {status}): {detail}", "upstream_rejected")
    if status in (401, 403):
        return BackendError(502, f"upstream {base_url} refused the gateway's credentials (HTTP {status}): {detail}; "
                            "check serving.upstream_api_key", "upstream_auth")
    if status == 404:
        return BackendError(502, f"upstream {base_url} has no model '{model}' (HTTP 404): {detail}; serve the "
                            "version under that name (vLLM: --lora-modules NAME=PATH) or set upstream_model in "
                            "the version's config", "upstream_model_not_found")
    if status == 429:
        after = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else 1.0
        return BackendError(503, f"upstream {base_url} is rate limiting (HTTP 429): {detail}", "upstream_busy", after)
    return BackendError(502, f"upstream {base_url} failed (HTTP {status}): {detail}", "upstream_error")
