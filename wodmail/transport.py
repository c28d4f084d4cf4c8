"""HTTP for wodmail's adapters: aiohttp's client, answered with wodmail's own answers and errors.

wodmail talks to two HTTP servers, the registration app and JupyterHub, with small JSON
requests, thousands of them in a burst. The adapters see one narrow interface
(`Requester`: `request`/`get`/`post`, returning an `HttpAnswer` and raising a
`TransportError`, both from wodmail.httpanswer). The requests go through `HttpClient`:
aiohttp's connection pool and its llhttp parser, which read what the server sends; wodmail
parses no HTTP of its own.

aiohttp was chosen by measurement (user+system CPU of the client process per PUT with a
JSON body, 5,000 requests, 16 at once, keep-alive, against a local server in another
process; resource.getrusage): httpx's own transport (httpcore) ~2,400-2,700 us, aiohttp
~250-270 us, the hand-written transport it replaced ~250-320 us.

What this layer adds on top of aiohttp:

- A request whose method, URL or header would carry a control character (CR, LF, NUL...)
  is refused before anything is sent: `UnsafeRequest`, a permanent error (`StepFailed`).
- Redirects are followed only on the same host (same scheme and port, or http to https),
  at most MAX_REDIRECTS; one to another host is refused (`RedirectRefused`): the app's
  token would go with it.
- TLS certificates are verified (the system's CA store, or the context given).
- One deadline for the whole exchange, connection, redirects and body included, so a
  server dripping its answer a byte at a time cannot hold a call (`ReadTimeout`).
- The body is read up to MAX_BODY_BYTES.
- Every failure of the exchange is a `TransportError` (the adapters turn it into a
  `TransientError`, retried with backoff): a malformed answer (a 1xx taken as final would
  be one, a bad status line, conflicting Content-Length, chunked framing errors, header
  lines over aiohttp's limit) is `RemoteProtocolError`.
- The answer is an `HttpAnswer` around what aiohttp parsed: no second parse of its head.
- Idle connections are kept KEEPALIVE seconds, under the 5 s after which Node.js (the
  registration app) closes them, so a kept connection is rarely found closed.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import re
import ssl
from typing import TYPE_CHECKING, Any, Protocol

from wodmail.errors import StepFailed
from wodmail.httpanswer import (
    ConnectError,
    ConnectTimeout,
    HttpAnswer,
    ReadError,
    ReadTimeout,
    RedirectRefused,
    RemoteProtocolError,
    TransportError,
)

if TYPE_CHECKING:  # imported where used: the doors' process loads them only with APIENDPOINT (its outbox)
    import aiohttp
    from yarl import URL

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_REDIRECTS = 5
KEEPALIVE = 4.0
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class UnsafeRequest(StepFailed):
    """A request that would carry a control character (CR, LF, ...) in its method, URL or a
    header: refused before sending; sending it again would not help."""


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _control_character(text: str) -> str | None:
    found = _CONTROL.search(text)
    return repr(found.group()) if found else None


def check_header_value(name: str, value: str) -> None:
    """Refuse (UnsafeRequest) a header whose name or value would break the request's framing.

    The message names the header, never its value (it may be a token)."""
    if not name or not name.isascii() or _control_character(name) or ":" in name or " " in name:
        raise UnsafeRequest(f"HTTP header name {name[:40]!r} is not a valid token")
    bad = _control_character(value)
    if bad is not None:
        raise UnsafeRequest(f"HTTP header {name} holds a control character ({bad}): request not sent")


def check_request(method: str, url: str, headers: dict[str, str]) -> None:
    """Refuse (UnsafeRequest) a request that would carry a control character anywhere."""
    if not method.isascii() or not method.isalpha():
        raise UnsafeRequest(f"HTTP method {method[:20]!r} is not a plain word")
    bad = _control_character(url)
    if bad is not None:
        raise UnsafeRequest(f"URL {_shown(url)} holds a control character ({bad}): request not sent")
    for name, value in headers.items():
        check_header_value(name, value)


def _shown(url: str) -> str:
    """A URL to name in a message: printable, without its query (it may carry a secret)."""
    text = url.split("?", 1)[0][:200]
    return "".join(c if " " <= c < "\x7f" else "?" for c in text)


def _origin(url: URL) -> str:
    return f"{url.scheme}://{url.host}:{url.port}"


def _same_host(old: URL, new: URL) -> bool:
    if new.host != old.host or not new.host:
        return False
    if new.scheme == old.scheme:
        return new.port == old.port
    return old.scheme == "http" and new.scheme == "https"  # an upgrade, never a downgrade


def _redirect_method(method: str, status: int) -> str:
    """What a client sends after a redirect (RFC 9110 15.4, as browsers and httpx do)."""
    if status == 303 and method != "HEAD":
        return "GET"
    if status in (301, 302) and method == "POST":
        return "GET"
    return method


class HttpClient:
    """Requests sent with aiohttp: a keep-alive pool of at most `max_per_origin` connections
    per origin, a `timeout` for each whole call, TLS verified. `async with` closes it."""

    def __init__(
        self,
        *,
        max_per_origin: int = 32,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        keepalive: float = KEEPALIVE,
        ssl_context: ssl.SSLContext | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self._max_per_origin = max_per_origin
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._max_body = max_body
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: aiohttp binds a session to the running event loop.
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self._max_per_origin, keepalive_timeout=self._keepalive, ssl=self._ssl
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),  # token auth only: no cookie is kept or sent
            trust_env=False,
            headers={"User-Agent": "wodmail"},
        )
        return self._session

    async def request(
        self, method: str, url: str, *, json: Any = None, headers: Any = None, timeout: Any = None
    ) -> HttpAnswer:
        """Send one request; follow same-host redirects; the whole answer, or a TransportError."""
        import aiohttp
        from yarl import URL

        fields = {str(name): str(value) for name, value in dict(headers or {}).items()}
        check_request(method, url, fields)
        body: bytes | None = None
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            fields.setdefault("Content-Type", "application/json")
        deadline = float(timeout) if isinstance(timeout, int | float) else self._timeout
        session = self._session or self._open()
        try:
            async with asyncio.timeout(deadline):  # connection, redirects and body: one deadline
                return await self._exchange(session, method, URL(url), fields, body)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise ConnectTimeout(f"no connection to {_origin(URL(url))} in {self._connect_timeout:g} s") from None
            raise ReadTimeout(f"no complete answer to {method} {_shown(url)} in {deadline:g} s") from None
        except aiohttp.ClientError as exc:
            raise _translated(exc, URL(url)) from None

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: bytes | None,
    ) -> HttpAnswer:
        from yarl import URL

        for _hop in range(MAX_REDIRECTS + 1):
            async with session.request(method, url, data=body, headers=headers, allow_redirects=False) as answer:
                content = await _read_body(answer, self._max_body)
                status = answer.status
                location = answer.headers.get("Location") if status in REDIRECTS else None
                raw = answer.raw_headers
            if location is None:
                return HttpAnswer(status, raw, content)
            target = url.join(URL(location))
            if not _same_host(url, target):
                raise RedirectRefused(
                    f"{_origin(url)} redirected {method} to {_origin(target)}: redirects to another host are"
                    " not followed",
                )
            new_method = _redirect_method(method, status)
            if new_method != method:
                body = None
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            method, url = new_method, target
        raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects from {_origin(url)}")

    async def get(self, url: str, *, headers: Any = None, timeout: Any = None) -> HttpAnswer:
        """`request("GET", ...)`."""
        return await self.request("GET", url, headers=headers, timeout=timeout)

    async def post(self, url: str, *, json: Any = None, headers: Any = None, timeout: Any = None) -> HttpAnswer:
        """`request("POST", ...)`."""
        return await self.request("POST", url, json=json, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        """Close the pool's connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def _translated(exc: aiohttp.ClientError, url: URL) -> TransportError:
    """aiohttp's error as the transport error that says the same, in one line naming the server."""
    import aiohttp

    origin = _origin(url)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        verify = getattr(exc.certificate_error, "verify_message", "") or exc.certificate_error
        return ConnectError(f"the TLS certificate of {origin} is not trusted: {verify}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(f"cannot connect to {origin}: {exc.strerror or type(exc.os_error).__name__}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return RemoteProtocolError(f"{origin} closed the connection before a complete answer")
    if isinstance(exc, aiohttp.ClientResponseError):  # the answer's head did not parse
        return RemoteProtocolError(f"malformed answer from {origin}: {_one_line(exc.message)}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return RemoteProtocolError(f"malformed body from {origin}: {_one_line(exc)}")
    return ReadError(f"{type(exc).__name__} from {origin}: {_one_line(exc)}")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:200]


async def _read_body(answer: aiohttp.ClientResponse, limit: int) -> bytes:
    if answer.content_length is not None and answer.content_length > limit:
        raise RemoteProtocolError(f"answer body of {answer.content_length} bytes is over the {limit} byte limit")
    chunks: list[bytes] = []
    total = 0
    async for chunk in answer.content.iter_any():
        total += len(chunk)
        if total > limit:
            raise RemoteProtocolError(f"answer body over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class Requester(Protocol):
    """What wodmail's adapters send their requests through (`HttpClient`)."""

    async def request(
        self, method: str, url: str, *, json: Any = None, headers: Any = None, timeout: Any = None
    ) -> HttpAnswer: ...

    async def get(self, url: str, *, headers: Any = None, timeout: Any = None) -> HttpAnswer: ...

    async def post(self, url: str, *, json: Any = None, headers: Any = None, timeout: Any = None) -> HttpAnswer: ...
