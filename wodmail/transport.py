"""A lean HTTP/1.1 transport for httpx: keep-alive connections over asyncio streams.

wodmail talks to two HTTP servers, the registration app and JupyterHub, with small JSON
requests, thousands of them in a burst. httpx's API stays (one narrow interface, one error
hierarchy); only its default transport, whose layers (httpcore, anyio) cost more CPU than
the whole rest of a CREATE, is replaced by this one: plain HTTP/1.1 with a pool of
keep-alive connections per origin, TLS through asyncio, Content-Length and chunked
bodies, and httpx's own exceptions so callers need not know.

A request is retried once on a fresh connection when a kept-alive one turns out to have
been closed by the server before it answered anything (the ordinary keep-alive race);
never after any byte of an answer arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import defaultdict, deque
from typing import Any, Protocol

import httpx

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()


class _Stale(Exception):
    """A kept-alive connection closed before any answer: safe to send again."""


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        max_per_origin: int = 32,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._idle: defaultdict[tuple[str, str, int], deque[_Connection]] = defaultdict(deque)
        self._slots: defaultdict[tuple[str, str, int], asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(max_per_origin)
        )
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self.connections_opened = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = (request.url.scheme, request.url.host, request.url.port or _default_port(request.url.scheme))
        body = await request.aread()
        head = _request_head(request, body)
        timeout = _timeout_of(request, self._timeout)
        async with self._slots[origin]:
            for attempt in (1, 2):
                connection, reused = await self._connection(origin, request)
                try:
                    async with asyncio.timeout(timeout):  # no task of its own, unlike wait_for
                        status, headers, content, keep = await _exchange(
                            connection, head + body, reused and attempt == 1, request.method
                        )
                except _Stale:
                    connection.close()
                    continue
                except TimeoutError:
                    connection.close()
                    raise httpx.ReadTimeout(f"no answer in {timeout:.0f} s", request=request) from None
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    connection.close()
                    raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request) from None
                except BaseException:
                    connection.close()
                    raise
                if keep and connection.usable:
                    self._idle[origin].append(connection)
                else:
                    connection.close()
                return httpx.Response(status, headers=headers, content=content, request=request)
        raise httpx.RemoteProtocolError("the server closed the connection twice before answering", request=request)

    async def _connection(self, origin: tuple[str, str, int], request: httpx.Request) -> tuple[_Connection, bool]:
        idle = self._idle[origin]
        while idle:
            connection = idle.pop()
            if connection.usable:
                return connection, True
            connection.close()
        scheme, host, port = origin
        context = None
        if scheme == "https":
            context = self._ssl_context or ssl.create_default_context()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, server_hostname=host if context else None),
                self._connect_timeout,
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {host}:{port} in {self._connect_timeout:.0f} s", request=request
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {reason}", request=request) from None
        self.connections_opened += 1
        return _Connection(reader, writer), False

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _timeout_of(request: httpx.Request, default: float) -> float:
    timeouts = request.extensions.get("timeout") or {}
    read = timeouts.get("read") if isinstance(timeouts, dict) else None
    return float(read) if read else default


def _request_head(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1"]
    seen = set()
    for name, value in request.headers.multi_items():
        lower = name.lower()
        if lower in ("connection", "transfer-encoding", "content-length", "accept-encoding"):
            continue  # framing is ours; bodies come uncompressed (no Accept-Encoding)
        seen.add(lower)
        lines.append(f"{name}: {value}")
    if "host" not in seen:
        lines.append(f"Host: {request.url.netloc.decode('ascii')}")
    if body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _exchange(
    connection: _Connection, data: bytes, reused: bool, method: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    connection.writer.write(data)
    await connection.writer.drain()
    try:
        status_line = await connection.reader.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
        if reused:
            raise _Stale() from None
        raise
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    status = int(parts[1])
    headers: list[tuple[bytes, bytes]] = []
    size = 0
    while True:
        line = await connection.reader.readuntil(b"\r\n")
        size += len(line)
        if size > MAX_HEADER_BYTES:
            raise ValueError("response headers too large")
        if line == b"\r\n":
            break
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    fields = {name.lower(): value for name, value in headers}
    keep = parts[0] == b"HTTP/1.1" and fields.get(b"connection", b"").lower() != b"close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", keep
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        content = await _read_chunked(connection.reader)
    elif b"content-length" in fields:
        length = int(fields[b"content-length"])
        if length > MAX_BODY_BYTES:
            raise ValueError("response body too large")
        content = await connection.reader.readexactly(length)
    else:
        content = await connection.reader.read(MAX_BODY_BYTES)
        keep = False
    # The chunks are joined here; httpx must not try to undo the transfer encoding again.
    headers = [(n, v) for n, v in headers if n.lower() != b"transfer-encoding"]
    return status, headers, content, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(chunks)
        total += size
        if total > MAX_BODY_BYTES:
            raise ValueError("response body too large")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


class Requester(Protocol):
    """The part of httpx.AsyncClient's API that wodmail's adapters use."""

    async def request(
        self, method: str, url: str, *, json: Any = None, headers: Any = None, timeout: Any = None
    ) -> httpx.Response: ...

    async def get(self, url: str, *, headers: Any = None, timeout: Any = None) -> httpx.Response: ...

    async def post(self, url: str, *, json: Any = None, headers: Any = None, timeout: Any = None) -> httpx.Response: ...


class LeanClient:
    """httpx requests handed straight to a `LeanTransport`.

    httpx.AsyncClient's layers (redirects, auth flows, cookie jars, event hooks) are unused
    here and cost as much CPU again as the transport: the adapters get this instead, with
    the same calls and the same exceptions.
    """

    def __init__(self, transport: LeanTransport) -> None:
        self._transport = transport

    async def request(
        self, method: str, url: str, *, json: Any = None, headers: Any = None, timeout: Any = None
    ) -> httpx.Response:
        extensions = {"timeout": {"read": float(timeout)}} if isinstance(timeout, int | float) else {}
        request = httpx.Request(method, url, json=json, headers=headers, extensions=extensions)
        return await self._transport.handle_async_request(request)

    async def get(self, url: str, *, headers: Any = None, timeout: Any = None) -> httpx.Response:
        return await self.request("GET", url, headers=headers, timeout=timeout)

    async def post(self, url: str, *, json: Any = None, headers: Any = None, timeout: Any = None) -> httpx.Response:
        return await self.request("POST", url, json=json, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._transport.aclose()
