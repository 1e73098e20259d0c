"""A minimal OpenAI-compatible server that answers at once: the upstream of benchmarks,
tests and offline demos of the `openai` backend.

    python tests/echo_upstream.py --port 8500

POST /v1/chat/completions answers "[<model>] <last user message>" (streamed as SSE when
asked); GET /v1/models lists nothing in particular; GET /stats counts requests per model.
Model names starting with ``fail-<status>`` answer that HTTP status, ``slow-<ms>`` wait
that long first, so the gateway's error mapping can be exercised against a real server.

Plain asyncio and a hand-written HTTP/1.1 keep-alive loop: it costs a few tens of
microseconds per request, so a benchmark measures the gateway, not the upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import orjson

_STATUS_TEXT = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
                500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class EchoUpstream:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                await self.respond(method, path, body, writer)
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def respond(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        if method == "GET" and path.endswith("/stats"):
            return _send(writer, 200, orjson.dumps({"requests": dict(self.requests)}))
        if method == "GET" and path.endswith("/models"):
            return _send(writer, 200, orjson.dumps({"object": "list", "data": []}))
        if method != "POST" or not path.endswith("/chat/completions"):
            return _send(writer, 404, orjson.dumps({"error": {"message": f"no route {method} {path}"}}))
        try:
            req = orjson.loads(body)
            model = str(req["model"])
            messages = req["messages"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _send(writer, 400, orjson.dumps({"error": {"message": "body must have model and messages"}}))
        self.requests[model] += 1
        if model.startswith("fail-") and model[5:].isdigit():
            status = int(model[5:])
            return _send(writer, status, orjson.dumps({"error": {"message": f"injected failure {status}"}}),
                         {"Retry-After": "0"} if status == 429 else None)
        if model.startswith("slow-") and model[5:].isdigit():
            await asyncio.sleep(int(model[5:]) / 1000)
        last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        text = f"[{model}] {str(last)[:4000]}"
        if req.get("stream"):
            return _send_stream(writer, model, text)
        now = int(time.time())
        _send(writer, 200, orjson.dumps({
            "id": f"chatcmpl-echo-{now}", "object": "chat.completion", "created": now, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in messages),
                      "completion_tokens": len(text.split()), "total_tokens": 0},
        }))


def _send(writer: asyncio.StreamWriter, status: int, body: bytes, extra: dict | None = None) -> None:
    head = (f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Status')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n")
    head += "".join(f"{k}: {v}\r\n" for k, v in (extra or {}).items())
    writer.write(head.encode() + b"\r\n" + body)


def _send_stream(writer: asyncio.StreamWriter, model: str, text: str) -> None:
    events = []
    words = text.split(" ")
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        events.append({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}], "model": model})
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "model": model})
    payload = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    # Chunked transfer: one chunk holding every event, then the terminator.
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                 + f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n")


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    upstream = EchoUpstream()
    server = await asyncio.start_server(upstream.handle, host, port, backlog=4096)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8500)
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(f"echo upstream on http://{args.host}:{args.port}/v1", flush=True)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
