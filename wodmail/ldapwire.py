"""A small LDAPv3 client on asyncio: just what wodmail needs to set a student's password.

RFC 4511 over BER with definite lengths. It encodes five requests: a simple bind (version 3),
an unbind, a modify that replaces one attribute's values, an add, and the StartTLS extended
operation; and it decodes the LDAPResult of their answers. One `LdapConnection` carries many
operations at once: each request gets a message id, and the answer that carries that id
completes it, in whatever order the server answers. The messages themselves (their encoding
and decoding, and the errors below) are wodmail.ldapber's, re-exported here.

    connection = await connect("ldap.example.com", 389, timeout=10)
    await connection.start_tls(context, "ldap.example.com")     # ldap:// with StartTLS
    result = await connection.bind(bind_dn, bind_password)      # an LdapResult
    result = await connection.modify_replace(dn, "userPassword", [hashed])
    await connection.aclose()                                   # unbind, close

A refused operation is no exception: it is an `LdapResult` whose code is not SUCCESS, for the
caller to judge. The exceptions say that the connection itself failed:

    LdapError
    ├── LdapConnectionError       the connection could not be made, or it ended: refused,
    │   │                         reset, closed by the server, no answer within the timeout,
    │   │                         a notice of disconnection. Every operation in flight on it
    │   │                         fails with it, and the connection is not used again.
    │   ├── LdapProtocolError     the server sent something that is not LDAP: malformed BER,
    │   │                         an indefinite length, a message over MAX_MESSAGE_SIZE, an
    │   │                         answer to nothing asked
    │   └── CertificateNotTrusted TLS: the server's certificate, or its name, did not verify
    └── StartTlsRefused           the server answered the StartTLS request with an error

No message and no repr carries a bind password or an attribute value: they only ever go into
the bytes sent.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Sequence

from wodmail.ldapber import (
    ADD_REQUEST,
    ADD_RESPONSE,
    BIND_REQUEST,
    BIND_RESPONSE,
    EXTENDED_REQUEST,
    EXTENDED_RESPONSE,
    MAX_MESSAGE_SIZE,
    MODIFY_REQUEST,
    MODIFY_RESPONSE,
    NOTICE_OF_DISCONNECTION_OID,
    RESULT_NAMES,
    STARTTLS_OID,
    SUCCESS,
    UNBIND_REQUEST,
    Answer,
    Buffer,
    CertificateNotTrusted,
    LdapConnectionError,
    LdapError,
    LdapProtocolError,
    LdapResult,
    StartTlsRefused,
    add_request,
    bind_request,
    decode_message,
    decode_result,
    encode_message,
    extended_request,
    message_size,
    modify_replace_request,
    unbind_request,
)

__all__ = [
    "ADD_REQUEST",
    "ADD_RESPONSE",
    "BIND_REQUEST",
    "BIND_RESPONSE",
    "EXTENDED_REQUEST",
    "EXTENDED_RESPONSE",
    "MAX_MESSAGE_SIZE",
    "MODIFY_REQUEST",
    "MODIFY_RESPONSE",
    "NOTICE_OF_DISCONNECTION_OID",
    "RESULT_NAMES",
    "STARTTLS_OID",
    "SUCCESS",
    "UNBIND_REQUEST",
    "Answer",
    "Buffer",
    "CertificateNotTrusted",
    "LdapConnection",
    "LdapConnectionError",
    "LdapError",
    "LdapProtocolError",
    "LdapResult",
    "StartTlsRefused",
    "add_request",
    "bind_request",
    "connect",
    "connect_unix",
    "decode_message",
    "decode_result",
    "encode_message",
    "extended_request",
    "message_size",
    "modify_replace_request",
    "unbind_request",
]

_LAST_MESSAGE_ID = 2**31 - 1

# --- the connection -------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """A short reason for a failed connection (no addresses repeated, no secrets in them)."""
    if isinstance(exc, ConnectionError) and exc.errno is not None:
        return os.strerror(exc.errno)
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _untrusted(exc: ssl.SSLCertVerificationError) -> CertificateNotTrusted:
    return CertificateNotTrusted(f"certificate verify failed: {exc.verify_message or _describe(exc)}")


class LdapConnection(asyncio.Protocol):
    """One connection to an LDAP server. Operations may overlap: each waits for the answer
    with its message id, `timeout` seconds at most; a late answer ends the connection."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: dict[int, tuple[asyncio.Future[LdapResult], asyncio.TimerHandle, int]] = {}
        self._last_id = 0
        self._ended: LdapConnectionError | None = None
        self._lost: asyncio.Future[None] = self._loop.create_future()

    def __repr__(self) -> str:
        state = "usable" if self.usable else f"ended: {self._ended}"
        return f"<LdapConnection {self.in_flight} in flight, {state}>"

    @property
    def in_flight(self) -> int:
        """Operations sent and not answered yet."""
        return len(self._pending)

    @property
    def usable(self) -> bool:
        """Whether a new operation may go out on this connection."""
        transport = self._transport
        return self._ended is None and transport is not None and not transport.is_closing()

    # -- operations ------------------------------------------------------------------------

    async def bind(self, dn: str, password: str) -> LdapResult:
        """Simple bind as `dn`."""
        return await self._send(bind_request(dn, password), BIND_RESPONSE)

    async def modify_replace(self, dn: str, attribute: str, values: Sequence[str]) -> LdapResult:
        """Replace the values of `attribute` of `dn`."""
        return await self._send(modify_replace_request(dn, attribute, values), MODIFY_RESPONSE)

    async def add(self, dn: str, attributes: Sequence[tuple[str, Sequence[str]]]) -> LdapResult:
        """Add the entry `dn`."""
        return await self._send(add_request(dn, attributes), ADD_RESPONSE)

    async def extended(self, oid: str, value: bytes | None = None) -> LdapResult:
        """The extended operation `oid`."""
        return await self._send(extended_request(oid, value), EXTENDED_RESPONSE)

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """StartTLS: ask, then put TLS under the connection, checking the certificate for
        `server_hostname`. Call it first, with nothing else in flight."""
        result = await self.extended(STARTTLS_OID)
        if not result.ok:
            raise StartTlsRefused(result)
        if self._pending or self._buffer or self._transport is None:
            self._end(LdapProtocolError("more than the StartTLS answer came"), abort=True)
            raise LdapProtocolError("more than the StartTLS answer came")
        try:
            transport = await self._loop.start_tls(
                self._transport,
                self,
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=self.timeout,
                ssl_shutdown_timeout=self.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            self._end(_untrusted(exc), abort=True)
            raise _untrusted(exc) from None
        except OSError as exc:  # ssl.SSLError, a reset, the handshake timeout
            reason = f"TLS handshake failed: {_describe(exc)}"
            self._end(LdapConnectionError(reason), abort=True)
            raise LdapConnectionError(reason) from None
        if transport is None:
            self.abort()
            raise LdapConnectionError("the connection closed during the TLS handshake")
        self._transport = transport

    def _send(self, operation: bytes, answer: int) -> asyncio.Future[LdapResult]:
        """Send one request; the future gets the LDAPResult of the answer `answer` to it."""
        if self._ended is not None:
            raise type(self._ended)(*self._ended.args)
        transport = self._transport
        if transport is None or transport.is_closing():
            raise LdapConnectionError("the connection is closed")
        self._last_id = message_id = self._last_id % _LAST_MESSAGE_ID + 1
        future: asyncio.Future[LdapResult] = self._loop.create_future()
        timer = self._loop.call_later(self.timeout, self._expire, message_id)
        self._pending[message_id] = (future, timer, answer)
        transport.write(encode_message(message_id, operation))
        return future

    def _expire(self, message_id: int) -> None:
        if message_id in self._pending:
            self._end(LdapConnectionError(f"the server gave no answer within {self.timeout:g} s"), abort=True)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Send an unbind (if the connection is up) and close; operations in flight fail."""
        if self._ended is None:
            self._ended = LdapConnectionError("the connection was closed")
        transport = self._transport
        if transport is None or transport.is_closing() or self._loop.is_closed():
            return
        self._last_id = message_id = self._last_id % _LAST_MESSAGE_ID + 1
        transport.write(encode_message(message_id, unbind_request()))
        transport.close()

    def abort(self) -> None:
        """Drop the connection at once, sending nothing more."""
        self._end(LdapConnectionError("the connection was abandoned"), abort=True)

    async def wait_closed(self) -> None:
        """Wait until the connection is gone (`timeout` at most, then drop it)."""
        if self._transport is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), self.timeout)
        except TimeoutError:
            self.abort()

    async def aclose(self) -> None:
        """`close`, and wait until the connection is gone."""
        self.close()
        await self.wait_closed()

    def _end(self, reason: LdapConnectionError, *, abort: bool) -> None:
        """Fail every operation in flight with `reason`; drop the transport when `abort`."""
        if self._ended is None:
            self._ended = reason
        pending, self._pending = self._pending, {}
        for future, timer, _ in pending.values():
            timer.cancel()
            if not future.done():
                future.set_exception(type(reason)(*reason.args))
        transport = self._transport
        if abort and transport is not None and not self._loop.is_closed():
            transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        try:
            while self._ended is None:
                size = message_size(buffer, offset)
                if size is None or len(buffer) - offset < size:
                    break
                self._answered(decode_message(buffer[offset : offset + size]))
                offset += size
        except LdapConnectionError as exc:  # not LDAP, or a notice of disconnection
            self._end(exc, abort=True)
            return
        del buffer[:offset]

    def _answered(self, answer: Answer) -> None:
        if answer.message_id == 0:
            if answer.operation != EXTENDED_RESPONSE:
                raise LdapProtocolError(f"an unsolicited answer 0x{answer.operation:02x}")
            notice = "" if answer.result.response_name == NOTICE_OF_DISCONNECTION_OID else " (a notification)"
            raise LdapConnectionError(f"the server ended the connection{notice}: {answer.result}")
        pending = self._pending.get(answer.message_id)
        if pending is None:
            raise LdapProtocolError(f"an answer to message {answer.message_id}, which awaits none")
        future, timer, expected = pending
        if answer.operation != expected:
            raise LdapProtocolError(
                f"message {answer.message_id}: an answer 0x{answer.operation:02x} where 0x{expected:02x} was due"
            )
        del self._pending[answer.message_id]
        timer.cancel()
        if not future.done():  # not given up by a cancelled caller
            future.set_result(answer.result)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            reason = LdapConnectionError("the server closed the connection")
        else:
            reason = LdapConnectionError(f"the connection was lost: {_describe(exc)}")
        self._end(self._ended or reason, abort=False)
        if not self._lost.done():
            self._lost.set_result(None)


async def connect(host: str, port: int, *, timeout: float, tls: ssl.SSLContext | None = None) -> LdapConnection:
    """A connection to `host`:`port` (ldap://), or with `tls` TLS from the start (ldaps://),
    the certificate checked for `host`; `timeout` seconds to connect and for each answer."""
    loop = asyncio.get_running_loop()
    try:
        _, connection = await asyncio.wait_for(
            loop.create_connection(
                lambda: LdapConnection(timeout),
                host,
                port,
                ssl=tls,
                server_hostname=host if tls is not None else None,
                ssl_handshake_timeout=timeout if tls is not None else None,
                ssl_shutdown_timeout=timeout if tls is not None else None,
            ),
            timeout,
        )
    except ssl.SSLCertVerificationError as exc:
        raise _untrusted(exc) from None
    except TimeoutError:
        raise LdapConnectionError(f"no connection within {timeout:g} s") from None
    except ssl.SSLError as exc:
        raise LdapConnectionError(f"TLS handshake failed: {_describe(exc)}") from None
    except OSError as exc:
        raise LdapConnectionError(f"cannot connect: {_describe(exc)}") from None
    return connection


async def connect_unix(path: str, *, timeout: float) -> LdapConnection:
    """A connection to the server's unix socket `path` (ldapi://)."""
    loop = asyncio.get_running_loop()
    try:
        _, connection = await asyncio.wait_for(
            loop.create_unix_connection(lambda: LdapConnection(timeout), path), timeout
        )
    except TimeoutError:
        raise LdapConnectionError(f"no connection within {timeout:g} s") from None
    except OSError as exc:
        raise LdapConnectionError(f"cannot connect to {path}: {_describe(exc)}") from None
    return connection
