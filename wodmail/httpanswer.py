"""What wodmail's HTTP client (wodmail.transport) hands back: an answer, or a transport error.

`HttpAnswer` is the whole answer as read: its status, its header fields and its body. It is
made from what aiohttp has already parsed, and does no work until a field is asked for: the
jobs process builds one per callback, thousands in a burst (an `httpx.Response` in its place
cost ~15% of the CPU of each call).

A failed exchange raises one of these (one for one with the httpx classes they replace, and
with the same names, which `wodmail.regapp.describe` puts in its messages):

    TransportError             the exchange failed; the adapters make it a TransientError
    ├── ConnectError           no connection: refused, unreachable, TLS certificate not trusted
    ├── TransportTimeout
    │   ├── ConnectTimeout     no connection in the connect time-out
    │   └── ReadTimeout        no complete answer before the call's deadline
    ├── RemoteProtocolError    a malformed answer, or one whose body is over the limit
    ├── ReadError              any other failure while reading the answer
    └── RedirectRefused        a redirect to another host, or too many redirects

A request refused before it is sent (a control character in it) is `UnsafeRequest`
(wodmail.transport), a `StepFailed`: sending it again would not help.
"""

from __future__ import annotations

import codecs
import json as jsonlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "AnswerHeaders",
    "ConnectError",
    "ConnectTimeout",
    "HttpAnswer",
    "ReadError",
    "ReadTimeout",
    "RedirectRefused",
    "RemoteProtocolError",
    "TransportError",
    "TransportTimeout",
]

#: Fields that describe the body as it came over the wire; the body handed on is decoded.
_WIRE_FIELDS = frozenset({"content-encoding", "transfer-encoding", "content-length"})


class TransportError(Exception):
    """The HTTP exchange failed (no answer, or none that could be read); trying again may help."""


class ConnectError(TransportError):
    """No connection to the server (refused, unreachable, its TLS certificate not trusted)."""


class TransportTimeout(TransportError):
    """The exchange took longer than allowed."""


class ConnectTimeout(TransportTimeout):
    """No connection within the connect time-out."""


class ReadTimeout(TransportTimeout):
    """No complete answer (redirects and body included) before the call's deadline."""


class RemoteProtocolError(TransportError):
    """The server's answer is malformed, cut short, or its body over the limit."""


class ReadError(TransportError):
    """Reading the answer failed otherwise."""


class RedirectRefused(TransportError):
    """The server redirected to another host (or too often): not followed."""


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class AnswerHeaders(Mapping[str, str]):
    """An answer's header fields: looked up without regard to case; a field sent several
    times reads as its values joined with ", " (`get_list` gives them one by one). Fields
    about the wire framing (Content-Length, Content-Encoding, Transfer-Encoding) are left out."""

    __slots__ = ("_fields", "_raw")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._fields: dict[str, list[str]] | None = None

    def _index(self) -> dict[str, list[str]]:
        if self._fields is None:
            fields: dict[str, list[str]] = {}
            for name, value in self._raw:
                key = _text(name).lower()
                if key not in _WIRE_FIELDS:
                    fields.setdefault(key, []).append(_text(value))
            self._fields = fields
        return self._fields

    def __getitem__(self, name: str) -> str:
        return ", ".join(self._index()[name.lower()])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index()

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())

    def get_list(self, name: str) -> list[str]:
        """Every value of the field `name`, in the order the server sent them."""
        return list(self._index().get(name.lower(), ()))

    def __repr__(self) -> str:
        return f"AnswerHeaders({list(self.items())!r})"


class HttpAnswer:
    """One HTTP answer, read whole: `status_code`, `headers`, `content` (the body's bytes,
    decoded from any Content-Encoding), `text` and `json()`."""

    __slots__ = ("_headers", "_raw_headers", "content", "status_code")

    def __init__(self, status_code: int, raw_headers: Sequence[tuple[bytes, bytes]], content: bytes) -> None:
        self.status_code = status_code
        self.content = content
        self._raw_headers = raw_headers
        self._headers: AnswerHeaders | None = None

    @property
    def headers(self) -> AnswerHeaders:
        """The answer's header fields (case-insensitive)."""
        if self._headers is None:
            self._headers = AnswerHeaders(self._raw_headers)
        return self._headers

    @property
    def charset(self) -> str | None:
        """The Content-Type's charset, if it names one Python knows."""
        for param in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                name = value.strip().strip("\"'")
                try:
                    return codecs.lookup(name).name
                except LookupError:
                    return None
        return None

    @property
    def text(self) -> str:
        """The body as text: in the Content-Type's charset, else UTF-8; undecodable bytes replaced."""
        return self.content.decode(self.charset or "utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (UTF-8, -16 or -32); a ValueError when it is not JSON."""
        return jsonlib.loads(self.content)

    def __repr__(self) -> str:
        return f"<HttpAnswer [{self.status_code}]>"
