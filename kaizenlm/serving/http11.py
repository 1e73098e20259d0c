"""A small asyncio HTTP/1.1 client with a keep-alive pool: the openai backend's transport.

Why not httpx: the gateway's budget is a few hundred microseconds per request, and httpx
(httpcore + anyio) spends about 2 ms of CPU per request on this project's 2-core machine
(4.7 ms with 32 requests in flight), this client about 0.1 ms (benchmarks/RESULTS.md,
"Gateway overhead"). It does what talking to one inference server needs and nothing else:
POST/GET with a body, keep-alive reuse, responses with Content-Length, chunked or
read-to-close bodies, TLS, streaming line by line, a timeout per request (per read while
streaming). No redirects, proxies, cookies, compression or HTTP/2.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024


class TransportError(Exception):
    """The connection failed or the server broke the protocol."""


class ConnectError(TransportError):
    """No connection could be made (refused, unreachable, connect timeout)."""


class ReadTimeout(Exception):
    """The server accepted the request but did not answer in time."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.reused = False

    def close(self) -> None:
        self.writer.close()

    @property
    def stale(self) -> bool:
        return self.reader.at_eof() or self.writer.is_closing()


class Response:
    """Status, lower-cased headers, and the body (`body` after `read()`, or `aiter_lines()`)."""

    def __init__(self, pool: Pool, conn: _Connection, status: int, headers: dict[str, str], timeout: float):
        self._pool, self._conn, self._timeout = pool, conn, timeout
        self.status, self.headers = status, headers
        self.body = b""
        self._done = False
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._mode = "chunked" if chunked else "length" if length is not None else "close"
        self._left = int(length) if length is not None and length.isdigit() else 0
        if status in (204, 304) or 100 <= status < 200:  # no body, whatever the headers say
            self._mode, self._left = "length", 0
        self._keep = headers.get("connection", "").lower() != "close" and self._mode != "close"

    async def _next_piece(self) -> bytes:
        """The next piece of the body, b'' at its end."""
        r = self._conn.reader
        if self._mode == "length":
            if self._left <= 0:
                return b""
            data = await r.read(min(self._left, 65536))
            if not data:
                raise TransportError("server closed the connection before the end of the body")
            self._left -= len(data)
            return data
        if self._mode == "chunked":
            size_line = await r.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await r.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the empty line
                    pass
                return b""
            data = await r.readexactly(size + 2)
            return data[:-2]
        return await r.read(65536)

    async def _piece(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._next_piece()
        except TimeoutError:
            self._fail()
            raise ReadTimeout(f"no data within {self._timeout:g}s") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as e:
            self._fail()
            raise TransportError(f"broken response body: {type(e).__name__}: {e}") from None

    async def read(self) -> bytes:
        if self._mode == "length" and not self._done:  # the common case: one read, no per-piece timeout
            try:
                async with asyncio.timeout(self._timeout):
                    self.body = await self._conn.reader.readexactly(self._left) if self._left else b""
            except TimeoutError:
                self._fail()
                raise ReadTimeout(f"no data within {self._timeout:g}s") from None
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                self._fail()
                raise TransportError(f"broken response body: {type(e).__name__}: {e}") from None
            self._left = 0
            self._finish()
            return self.body
        pieces = []
        while not self._done:
            piece = await self._piece()
            if not piece:
                self._finish()
                break
            pieces.append(piece)
        self.body = b"".join(pieces)
        return self.body

    async def aiter_lines(self) -> AsyncIterator[str]:
        buffer = b""
        while not self._done:
            piece = await self._piece()
            if not piece:
                self._finish()
                break
            buffer += piece
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", errors="replace")
        if buffer:
            yield buffer.rstrip(b"\r").decode("utf-8", errors="replace")

    def _finish(self) -> None:
        self._done = True
        if self._keep:
            self._pool._release(self._conn)
        else:
            self._conn.close()

    def _fail(self) -> None:
        self._done = True
        self._conn.close()

    async def aclose(self) -> None:
        """Give the connection back (a body not read to its end closes it instead)."""
        if not self._done:
            self._fail()


class Pool:
    """Keep-alive connections to one origin (scheme://host:port); every path is relative to base_url."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 60.0,
                 connect_timeout: float = 5.0, max_idle: int = 256):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = self.port == (443 if self.ssl else 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        self.base_headers = (f"host: {host_header}\r\nuser-agent: kaizenlm-gateway\r\n"
                             + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()))
        self.timeout, self.connect_timeout, self.max_idle = timeout, connect_timeout, max_idle
        self._idle: deque[_Connection] = deque()

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None,
                    limit=_MAX_HEAD)
        except TimeoutError:
            raise ConnectError(f"connect to {self.host}:{self.port} timed out after {self.connect_timeout:g}s") from None
        except OSError as e:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {e}") from None
        return _Connection(reader, writer)

    async def _acquire(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # the most recently used one is the least likely to be stale
            if not conn.stale:
                conn.reused = True
                return conn
            conn.close()
        return await self._connect()

    def _release(self, conn: _Connection) -> None:
        if len(self._idle) < self.max_idle and not conn.stale:
            self._idle.append(conn)
        else:
            conn.close()

    async def request(self, method: str, path: str, body: bytes = b"", stream: bool = False,
                      content_type: str = "application/json") -> Response:
        """Send one request; the response's body is read unless stream=True (then read it with
        `aiter_lines()`/`read()` and `aclose()` it). A reused connection the server had closed
        is replaced once, transparently (the request never reached the server)."""
        head = (f"{method} {self.prefix}{path} HTTP/1.1\r\n{self.base_headers}content-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode("latin-1")
        for attempt in (0, 1):
            conn = await self._acquire()
            try:
                async with asyncio.timeout(self.timeout):
                    conn.writer.write(head + body)
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
                    response = _parse_head(self, conn, raw)
                    if not stream:
                        await response.read()
                    return response
            except TimeoutError:
                conn.close()
                raise ReadTimeout(f"no answer within {self.timeout:g}s") from None
            except asyncio.IncompleteReadError as e:
                conn.close()
                if conn.reused and not e.partial and attempt == 0:
                    continue  # the server had closed this idle connection: try a fresh one
                raise TransportError("server closed the connection without a complete answer") from None
            except (ConnectionError, asyncio.LimitOverrunError, ValueError) as e:
                conn.close()
                if conn.reused and isinstance(e, ConnectionError) and attempt == 0:
                    continue
                raise TransportError(f"{type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _parse_head(pool: Pool, conn: _Connection, raw: bytes) -> Response:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if parts[0] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
        headers["connection"] = "close"
    return Response(pool, conn, int(parts[1]), headers, pool.timeout)
