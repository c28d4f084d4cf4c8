"""The legacy door: a small SMTP listener for the registration app's crude client.

The registration app in use today opens a TCP connection and writes its whole dialogue at
once, before the server's greeting::

    HELO <apidb>\\nMAIL FROM: <addr>\\nRCPT TO: <addr>\\nDATA\\nSubject: <command>\\n<body>\\n.\\n

with bare LF line endings, no angle brackets, no blank line before the body and no QUIT. It
never reads the replies: it destroys the socket as soon as anything arrives, which resets the
connection while its bytes may still be in flight. A stream-based SMTP server loses every such
mail (the reader raises the connection error before handing over what it had buffered). This
door never loses one:

* It is a plain `asyncio.Protocol`: every byte the kernel hands over is kept in our own buffer
  before anything else happens, and a reset (`connection_lost` with an exception) only marks
  the end of input; everything buffered is still processed.
* **Talk before the greeting** (bytes within `LegacyLimits.greeting_delay` of connecting) marks
  the legacy client. The door then says *nothing* until the transaction is read to its ``.``
  line (or the input ends) and the intake has committed it; then it writes every reply at once
  (220, the 250s, 354, the intake's reply, 221 if QUIT was sent) and closes. Answering any
  earlier would make the client read, reset, and lose its unsent bytes. In this "batch" mode the
  connection ends once everything received has been processed, at least one DATA has ended and
  no new transaction has begun; a client that talks before the greeting and then waits for a
  reply gets none until the idle timeout.
* **Silence** for `greeting_delay` means a standard client: the door greets and answers one
  reply per command, so smtplib (CRLF, ``<>``, QUIT) works on it too.
* Lines are split on LF, one trailing CR is stripped; verbs are case-insensitive; ``MAIL FROM:``
  and ``RCPT TO:`` take the address with or without ``<>`` and with or without a space after
  the colon (ESMTP parameters after it are ignored). HELO/EHLO are optional. DATA ends at a line
  that is exactly ``.``; ``..x`` is unstuffed to ``.x``. The message handed on has LF line
  endings: every line, the last included, ends with ``\\n``.
* At each end of DATA the door builds one `InboundMail` (door ``"legacy"``) and awaits
  `Intake.submit`; the reply line is the intake's. Whether this peer may send at all is the
  intake's decision (it answers 550), not the door's. For a client on this host the door
  asks the kernel, when the connection is accepted, who opened it (`wodmail.peers`): on a
  host with students, 127.x says nothing about who is sending. The submit runs in its own
  task, shielded from the connection: it runs to completion whether or not the client is
  still there, and writes to a closed transport are skipped.
* **Input that ends inside DATA** (EOF, reset, or a timeout before the ``.`` line) is never
  submitted: the mail may be truncated, and a truncated command (a cut-off student id, say)
  must not run. It is recorded instead: ``intake.record_incomplete(mail, reason)`` is called if
  the intake has that method (it may be sync or async), else a warning names the peer and the
  byte count. A final line without its LF at EOF still counts as a line, so a ``.`` whose LF
  got lost still ends the DATA.
* **One command per connection.** The app never sends two; a second one is an injection
  (a ``.`` line inside a body ends the mail there, and what follows would read as a new
  transaction). So nothing after the first end of DATA is run: QUIT, NOOP and RSET are
  answered, anything else (up to `max_message` bytes of it, all of what is buffered) is
  recorded as refused, ``intake.record_refused(mail, 554, reason)`` if the intake has that
  method, and answered once with 554; a standard client is then disconnected.
* Limits (`LegacyLimits`): message size (552, the rest of that DATA discarded, nothing
  submitted), command line length (500), idle and total time (the connection is closed
  after whatever complete input it holds is processed; 421 in conversation mode). A client
  sending one byte a second is cut by the total timeout.
* Nothing from a message (it may hold secrets) is logged: only the peer, sizes and reply codes.
* **Admission before reading** (`LegacyPolicy`, from the location): a peer outside LEGACYPEERS
  is answered 554 and closed when the connection is accepted, before a byte is read, and
  holds no slot. A listed address may hold `LegacyLimits.peer_connections` connections at
  once (421 beyond); every connection takes a slot of the `ConnectionBudget` the doors share
  (wodmail.admission): a trusted one, or a stranger's for a local user outside
  LOCALPEERUSERS (a student on loopback). Refusals are logged once per interval, with counts.

Shutdown: `drain(server)` (or `LegacyDoor.drain`) closes the listener, lets open connections
finish for `grace` seconds (default 1), ends the rest (processing what they already sent), and
returns once every connection has closed and every submit and record has returned::

    server = await start_legacy_server(intake, host, port)
    ...
    await drain(server, grace=2.0)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import socket
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from wodmail.admission import ConnectionBudget, Listener, PerAddress, Slot, Summary
from wodmail.errors import Refusal, TryLater
from wodmail.inbound import InboundMail, Intake, Reply
from wodmail.location import Location
from wodmail.peers import HostPeers, LocalClient, parse_address

log = logging.getLogger(__name__)

__all__ = ["LegacyDoor", "LegacyLimits", "LegacyPolicy", "drain", "start_legacy_server"]

summary = Summary(log)

#: Recipients per transaction; the legacy client sends one.
MAX_RECIPIENTS = 100

#: The answer to the first line after the first end of DATA.
ONE_COMMAND = "554 5.7.0 One command per connection: nothing after the first end of data is run"

_MAIL_RE = re.compile(r"MAIL\s+FROM\s*:(?P<rest>.*)\Z", re.IGNORECASE | re.DOTALL)
_RCPT_RE = re.compile(r"RCPT\s+TO\s*:(?P<rest>.*)\Z", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class LegacyLimits:
    """Size and time caps of one legacy connection."""

    max_message: int = 65536
    """Bytes of message data; beyond, the transaction is refused (552), the rest discarded."""
    max_line: int = 4096
    """Bytes of one command line; a longer one gets 500."""
    idle_timeout: float = 10.0
    """Seconds without a byte (while the door waits for input) before the connection ends."""
    total_timeout: float = 60.0
    """Seconds a connection may last at most."""
    greeting_delay: float = 0.25
    """Seconds the door waits for talk before the greeting before it greets."""
    peer_connections: int = 50
    """Connections open at once from one address (LEGACYPEERCONNECTIONS)."""


@dataclass(frozen=True)
class LegacyPolicy:
    """Which peers may connect at all: LEGACYPEERS, and on this host LOCALPEERUSERS."""

    location: Location

    def refusal(self, peer: str | None) -> str | None:
        """Why `peer` may not use the legacy door at all, or None if its address may."""
        if peer is None or not self.location.peer_is_legacy(peer):
            return f"{peer} may not use the legacy port (not in LEGACYPEERS)"
        return None

    def trusted(self, peer: str, local_client: LocalClient | None) -> bool:
        """Whether a listed peer is the app: not a local user outside LOCALPEERUSERS (a
        student on this host connects from a listed loopback address as easily). Those
        others are strangers: capped and evicted like any, and the intake refuses their
        commands with the reason and a record."""
        if local_client is not None:
            return local_client.uid is not None and local_client.uid in self.location.local_peer_uids
        address = parse_address(peer)
        return address is None or not address.is_loopback


def _parse_path(rest: str) -> str | None:
    """The address of a MAIL FROM:/RCPT TO: argument, brackets stripped; None if malformed."""
    rest = rest.strip()
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return None
        return rest[1:end].strip()
    return rest.split(None, 1)[0] if rest else ""


def _clean(text: str) -> str:
    """A reply text on one line."""
    return text.replace("\r", " ").replace("\n", " ")


class LegacyDoor:
    """The listener's shared state: the intake, the limits, and what is still running."""

    def __init__(
        self,
        intake: Intake,
        limits: LegacyLimits = LegacyLimits(),
        host_peers: HostPeers | None = None,
        policy: LegacyPolicy | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self.intake = intake
        self.limits = limits
        self.host_peers = host_peers or HostPeers()
        self.policy = policy
        self.budget = budget or ConnectionBudget()
        self.per_address = PerAddress(limits.peer_connections)
        self.hostname = socket.gethostname() or "localhost"
        self._sessions: set[_LegacySession] = set()
        self._session_tasks: set[asyncio.Task[None]] = set()
        self._commits: set[asyncio.Task[Any]] = set()
        self._server: Listener | None = None
        self.shutting_down = False

    async def start(self, host: str, port: int) -> Listener:
        """Listen on host:port; the returned server is what `drain` takes."""
        server = await Listener.start(lambda: _LegacySession(self), host, port, summary, "legacy")
        self._server = server
        _DOORS[server] = self
        return server

    def track_commit(self, awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run `awaitable` in a task nothing cancels on a disconnect, and remember it."""
        task: asyncio.Task[Any] = asyncio.ensure_future(awaitable)
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        return task

    @property
    def in_flight(self) -> int:
        """Open connections plus submits and records still running."""
        return len(self._session_tasks) + len(self._commits)

    async def drain(self, grace: float = 1.0) -> None:
        """Stop listening, let open connections end by themselves for `grace` seconds (a
        legacy client's dialogue arrives within milliseconds), then end the others: what
        they already sent is still processed, a cut-off DATA is recorded as incomplete.
        Returns once every session has closed and every submit and record has returned,
        so it waits as long as the intake takes to commit."""
        if self._server is not None:
            self._server.close()
        if grace > 0 and self._session_tasks:
            await asyncio.wait(set(self._session_tasks), timeout=grace)
        self.shutting_down = True
        for session in list(self._sessions):
            session.end_input("shutdown")
        while self._session_tasks or self._commits:
            await asyncio.gather(*self._session_tasks, *self._commits, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


_DOORS: weakref.WeakKeyDictionary[Listener, LegacyDoor] = weakref.WeakKeyDictionary()


async def start_legacy_server(
    intake: Intake,
    host: str,
    port: int,
    limits: LegacyLimits = LegacyLimits(),
    host_peers: HostPeers | None = None,
    policy: LegacyPolicy | None = None,
    budget: ConnectionBudget | None = None,
) -> Listener:
    """Start the legacy door on host:port. Shut it down with `drain(server)`. Without a
    `policy` every peer is admitted (the intake still decides who may send commands)."""
    return await LegacyDoor(intake, limits, host_peers, policy, budget).start(host, port)


async def drain(server: Listener, grace: float = 1.0) -> None:
    """Shut down a server from `start_legacy_server`: see `LegacyDoor.drain`."""
    door = _DOORS.get(server)
    if door is None:
        server.close()
        await server.wait_closed()
        return
    await door.drain(grace)


class _LegacySession(asyncio.Protocol):
    """One connection: the protocol callbacks only buffer bytes and note the end of input;
    one task per connection reads the buffer, runs the SMTP dialogue and awaits the intake."""

    def __init__(self, door: LegacyDoor) -> None:
        self.door = door
        self.limits = door.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.local_client: LocalClient | None = None
        self._slot: Slot | None = None
        self._counted = False  # counted in door.per_address
        # input
        self._buf = bytearray()
        self._pos = 0
        self._skip_partial = False  # the next line's head was dropped (too long)
        self._eof = False  # EOF or reset: no more bytes will come
        self._ended: str | None = None  # why input was ended (timeout, shutdown); None if not
        self._wakeup = asyncio.Event()
        self._paused = False
        # mode: None until decided, then "batch" (talk before greeting) or "live"
        self._mode: str | None = None
        self._batch: list[str] = []
        self._done = False
        # transaction
        self._mail_from: str | None = None
        self._rcpt_tos: list[str] = []
        self._in_data = False
        self._data: list[bytes] = []
        self._data_size = 0
        self._data_overflow = False
        self._transactions = 0
        # after the first end of DATA: what followed it (never run), and its size
        self._extra: list[bytes] = []
        self._extra_size = 0
        # timers
        self._busy = False
        self._last_input = self.loop.time()
        self._timers: list[asyncio.TimerHandle] = []
        self._idle_timer: asyncio.TimerHandle | None = None

    # ---- protocol callbacks: buffer and signal, nothing else --------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else None
        # Asked at once: the client's socket is open now; by the end of DATA it may not be.
        self.local_client = self.door.host_peers.client_of(transport.get_extra_info("sockname"), peername)
        if not self._admit():
            return
        log.debug("legacy %s: connected", self.peer)
        self._timers.append(self.loop.call_later(self.limits.greeting_delay, self._greet))
        self._timers.append(self.loop.call_later(self.limits.total_timeout, self.end_input, "total"))
        self._idle_timer = self.loop.call_later(self.limits.idle_timeout, self._check_idle)
        self.door._sessions.add(self)
        task = self.loop.create_task(self._run())
        self.door._session_tasks.add(task)
        task.add_done_callback(self.door._session_tasks.discard)
        if self.door.shutting_down:
            self.end_input("shutdown")

    def _admit(self) -> bool:
        """Whether this connection may stay; else it is answered, closed, and holds nothing."""
        door = self.door
        policy = door.policy
        refusal = policy.refusal(self.peer) if policy is not None else None
        if refusal is not None:
            summary.note(logging.INFO, "denied", "legacy %s: refused when accepted: %s", self.peer, refusal)
            return self._turn_away(f"554 5.7.1 {refusal}")
        if not door.per_address.admit(self.peer or "?"):
            summary.note(
                logging.WARNING,
                "per-address",
                "legacy %s: over %d connections from one address, refused",
                self.peer,
                door.per_address.limit,
            )
            return self._turn_away(
                f"421 4.7.0 too many connections from your address (at most {door.per_address.limit})"
            )
        self._counted = True
        trusted = policy is None or policy.trusted(self.peer or "?", self.local_client)
        self._slot = door.budget.admit(trusted, self._evicted)
        if self._slot is None:
            summary.note(logging.WARNING, "budget", "legacy %s: every connection slot taken, refused", self.peer)
            return self._turn_away("421 4.7.0 too busy, try again later")
        return True

    def _evicted(self) -> None:
        """Closed for a trusted peer's sake (this stranger was idle longest)."""
        self._slot = None
        summary.note(logging.INFO, "evicted", "legacy %s: idle stranger closed for a trusted peer", self.peer)
        self.end_input("evicted")
        if self.transport is not None:
            self.transport.abort()

    def _turn_away(self, line: str) -> bool:
        self._eof = True
        self._release()
        if self.transport is not None:
            self.transport.write(line.encode("ascii", "replace") + b"\r\n")
            self.transport.close()
        return False

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.door.per_address.release(self.peer or "?")
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    def data_received(self, data: bytes) -> None:
        if self._eof or self._ended:
            return
        if self._mode is None:
            self._mode = "batch"
            log.debug("legacy %s: talk before the greeting, batch mode", self.peer)
        if self._slot is not None:
            self._slot.touch()
        self._buf += data
        self._last_input = self.loop.time()
        if len(self._buf) - self._pos > self.limits.max_message + self.limits.max_line + 4096:
            self._pause()
        self._wakeup.set()

    def eof_received(self) -> bool:
        self._eof = True
        self._wakeup.set()
        return True  # keep the transport open: the replies are still to be written

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if exc is not None:
            log.debug("legacy %s: connection lost: %s", self.peer, exc)
        self._eof = True
        self._wakeup.set()

    # ---- timers --------------------------------------------------------------------------

    def _greet(self) -> None:
        if self._mode is None and not self._eof:
            self._mode = "live"
            self._write(f"220 {self.door.hostname} wodmail legacy door ready")
            self._wakeup.set()

    def _check_idle(self) -> None:
        idle = self.limits.idle_timeout
        if self._busy:
            self._idle_timer = self.loop.call_later(idle, self._check_idle)
            return
        remaining = self._last_input + idle - self.loop.time()
        if remaining > 0:
            self._idle_timer = self.loop.call_later(remaining, self._check_idle)
        else:
            self.end_input("idle")

    def end_input(self, reason: str) -> None:
        """Read no more from this connection; what is buffered is still processed."""
        if self._ended is None and not self._done:
            self._ended = reason
            self._pause()
            self._wakeup.set()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            self._paused = True

    def _resume(self) -> None:
        if self._paused and self._ended is None and self.transport is not None:
            if not self.transport.is_closing():
                self.transport.resume_reading()
            self._paused = False

    # ---- output --------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text.encode("utf-8", "replace") + b"\r\n")

    def _reply(self, line: str) -> None:
        if self._mode == "batch":
            self._batch.append(line)
        else:
            self._write(line)

    # ---- the session ---------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                line = self._next_line()
                if line is None:
                    if self._eof or self._ended or self._batch_finished():
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._handle(line)
                if self._done or self._batch_finished():
                    break
            await self._finish()
        finally:
            for timer in self._timers:
                timer.cancel()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self.door._sessions.discard(self)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    def _batch_finished(self) -> bool:
        """Batch mode: all received input processed, a DATA has ended, none begun since."""
        return (
            self._mode == "batch"
            and self._transactions > 0
            and self._mail_from is None
            and not self._in_data
            and self._pos == len(self._buf)
        )

    def _next_line(self) -> bytes | None:
        """The next complete line (without LF and one trailing CR), or None for now."""
        if self._mode is None:
            return None
        buf = self._buf
        nl = buf.find(b"\n", self._pos)
        if nl >= 0:
            line = bytes(buf[self._pos : nl])
            self._pos = nl + 1
        elif self._eof and self._pos < len(buf):
            line = bytes(buf[self._pos :])  # a last line whose LF never came
            self._pos = len(buf)
        else:
            self._check_partial()
            self._compact()
            return None
        self._compact()
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._skip_partial:
            # The tail of a line whose head was dropped: a command already answered 500,
            # or data of a message already over its size.
            self._skip_partial = False
            return self._next_line()
        return line

    def _check_partial(self) -> None:
        """Bound what an unterminated line may hold in memory."""
        partial = len(self._buf) - self._pos
        if partial <= self.limits.max_line:
            return  # short enough to wait for its LF (it may be the "." line)
        if self._transactions:  # after the command: never run, only counted
            if not self._extra_size:
                self._reply(ONE_COMMAND)
            self._extra_size += partial
            self._drop_partial()
            return
        if not self._in_data:
            self._reply("500 5.5.2 Line too long")
            log.info("legacy %s: command line over %d bytes", self.peer, self.limits.max_line)
            self._drop_partial()
        elif self._data_overflow or self._data_size + partial > self.limits.max_message:
            self._overflow()
            self._drop_partial()

    def _drop_partial(self) -> None:
        self._pos = len(self._buf)
        self._skip_partial = True

    def _compact(self) -> None:
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0
        if len(self._buf) - self._pos <= self.limits.max_message:
            self._resume()

    async def _handle(self, line: bytes) -> None:
        if self._transactions:
            self._after_the_command(line)
            return
        if self._in_data:
            if line == b".":
                await self._end_of_data()
            elif not self._data_overflow:
                self._add_data(line[1:] if line.startswith(b".") else line)
            return
        if len(line) > self.limits.max_line:
            self._reply("500 5.5.2 Line too long")
            log.info("legacy %s: command line over %d bytes", self.peer, self.limits.max_line)
            return
        text = line.decode("utf-8", "replace").strip()
        verb = text.split(None, 1)[0].upper() if text else ""
        if verb in ("HELO", "EHLO"):
            self._reset_transaction()
            if verb == "EHLO":
                self._reply(f"250-{self.door.hostname}")
                self._reply(f"250-SIZE {self.limits.max_message}")
                self._reply("250 8BITMIME")
            else:
                self._reply(f"250 {self.door.hostname}")
        elif verb == "MAIL":
            self._mail(text)
        elif verb == "RCPT":
            self._rcpt(text)
        elif verb == "DATA":
            if self._mail_from is None:
                self._reply("503 5.5.1 Error: need MAIL command")
            elif not self._rcpt_tos:
                self._reply("503 5.5.1 Error: need RCPT command")
            else:
                self._in_data = True
                self._reply("354 End data with <CR><LF>.<CR><LF>")
        elif verb == "RSET":
            self._reset_transaction()
            self._reply("250 OK")
        elif verb == "NOOP":
            self._reply("250 OK")
        elif verb == "QUIT":
            self._reply("221 Bye")
            self._done = True
        else:
            self._reply("500 5.5.2 Error: command not recognized")

    def _after_the_command(self, line: bytes) -> None:
        """A line after the first end of DATA: never run; kept for the refusal record."""
        verb = line.strip().upper()
        if not self._extra_size and verb in (b"QUIT", b"NOOP", b"RSET", b""):
            if verb == b"QUIT":
                self._reply("221 Bye")
                self._done = True
            elif verb:
                self._reply("250 OK")
            return
        if not self._extra_size:
            self._reply(ONE_COMMAND)
        self._extra_size += len(line) + 1
        if self._extra_size <= self.limits.max_message:
            self._extra.append(line)
        if self._mode == "live":
            # A standard client waits for each reply: take what it already sent, then close.
            while (more := self._next_line()) is not None:
                self._extra_size += len(more) + 1
                if self._extra_size <= self.limits.max_message:
                    self._extra.append(more)
            self._done = True

    def _mail(self, text: str) -> None:
        match = _MAIL_RE.match(text)
        if match is None:
            self._reply("501 5.5.4 Syntax: MAIL FROM: <address>")
            return
        if self._mail_from is not None:
            self._reply("503 5.5.1 Error: nested MAIL command")
            return
        address = _parse_path(match["rest"])
        if address is None:
            self._reply("501 5.5.4 Syntax: MAIL FROM: <address>")
            return
        self._mail_from = address
        self._reply("250 OK")

    def _rcpt(self, text: str) -> None:
        match = _RCPT_RE.match(text)
        if match is None:
            self._reply("501 5.5.4 Syntax: RCPT TO: <address>")
            return
        if self._mail_from is None:
            self._reply("503 5.5.1 Error: need MAIL command")
            return
        address = _parse_path(match["rest"])
        if not address:
            self._reply("501 5.5.4 Syntax: RCPT TO: <address>")
            return
        if len(self._rcpt_tos) >= MAX_RECIPIENTS:
            self._reply("452 4.5.3 Too many recipients")
            return
        self._rcpt_tos.append(address)
        self._reply("250 OK")

    def _add_data(self, line: bytes) -> None:
        self._data_size += len(line) + 1
        if self._data_size > self.limits.max_message:
            self._overflow()
        else:
            self._data.append(line)

    def _overflow(self) -> None:
        if not self._data_overflow:
            self._data_overflow = True
            self._data = []
            log.info("legacy %s: message over %d bytes", self.peer, self.limits.max_message)

    def _mail_so_far(self) -> InboundMail:
        return InboundMail(
            door="legacy",
            peer=self.peer,
            mail_from=self._mail_from or "",
            rcpt_tos=tuple(self._rcpt_tos),
            data=b"".join(line + b"\n" for line in self._data),
            local_client=self.local_client,
        )

    async def _end_of_data(self) -> None:
        self._transactions += 1
        if self._data_overflow:
            self._reply("552 5.3.4 Message exceeds fixed maximum message size")
            log.info("legacy %s: refused, over %d bytes", self.peer, self.limits.max_message)
        else:
            mail = self._mail_so_far()
            reply = await self._commit(mail)
            log.info("legacy %s: %d bytes -> %d", self.peer, len(mail.data), reply.code)
            self._reply(_clean(reply.line))
        self._reset_transaction()

    async def _commit(self, mail: InboundMail) -> Reply:
        """`intake.submit(mail)` in a task that outlives the connection."""
        self._busy = True
        try:
            task = self.door.track_commit(self.door.intake.submit(mail))
            try:
                reply = await asyncio.shield(task)
            except (Refusal, TryLater) as exc:
                return Reply(exc.smtp_code, str(exc))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("legacy %s: the intake failed on a %d-byte mail", self.peer, len(mail.data))
                return Reply(451, "4.3.0 The command could not be committed, try again later")
            if not isinstance(reply, Reply):
                log.error(
                    "legacy %s: the intake answered %r, not a Reply",
                    self.peer,
                    type(reply).__name__,
                )
                return Reply(451, "4.3.0 The command could not be committed, try again later")
            return reply
        finally:
            self._busy = False
            self._last_input = self.loop.time()

    async def _finish(self) -> None:
        """Input is over: record a cut-off DATA, write what is owed, close."""
        if self._in_data:
            if self._eof:
                reason = "connection ended before the end of data"
            elif self._ended == "shutdown":
                reason = "door shut down before the end of data"
            else:
                reason = f"{self._ended} timeout before the end of data"
            await self._record_incomplete(reason)
            self._reply("451 4.3.0 Data incomplete, nothing committed")
            self._reset_transaction()
        if self._extra_size:
            await self._record_extra()
        if self._ended == "shutdown" and not self._done:
            self._reply("421 4.3.2 Shutting down, closing")
        elif self._ended and not self._done:
            self._reply("421 4.4.2 Timeout, closing")
            log.info("legacy %s: %s timeout", self.peer, self._ended)
        if self._mode == "batch" and self._batch:
            lines = [f"220 {self.door.hostname} wodmail legacy door ready", *self._batch]
            self._batch = []
            self._mode = "live"
            self._write("\r\n".join(lines))
        log.debug("legacy %s: closing after %d transactions", self.peer, self._transactions)

    async def _record_incomplete(self, reason: str) -> None:
        if self._data_overflow:
            log.warning("legacy %s: over-size DATA cut off (%s); nothing submitted", self.peer, reason)
            return
        mail = self._mail_so_far()
        size = len(mail.data)
        record = getattr(self.door.intake, "record_incomplete", None)
        if record is None:
            log.warning("legacy %s: %s after %d bytes; not submitted", self.peer, reason, size)
            return
        self._busy = True
        try:
            result = record(mail, reason)
            if inspect.isawaitable(result):
                await asyncio.shield(self.door.track_commit(result))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("legacy %s: recording a %d-byte incomplete mail failed", self.peer, size)
        finally:
            self._busy = False

    async def _record_extra(self) -> None:
        """Record what followed the first end of DATA as a refused mail (never run)."""
        size = self._extra_size
        reason = f"one command per connection: {size} bytes after the first end of data were not run"
        summary.note(logging.WARNING, "after the command", "legacy %s: %s", self.peer, reason)
        record = getattr(self.door.intake, "record_refused", None)
        if record is None:
            return
        mail = InboundMail(
            door="legacy",
            peer=self.peer,
            mail_from="",
            data=b"".join(line + b"\n" for line in self._extra),
            local_client=self.local_client,
        )
        self._extra, self._extra_size = [], 0
        self._busy = True
        try:
            result = record(mail, 554, reason)
            if inspect.isawaitable(result):
                await asyncio.shield(self.door.track_commit(result))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("legacy %s: recording %d bytes after the command failed", self.peer, size)
        finally:
            self._busy = False

    def _reset_transaction(self) -> None:
        self._mail_from = None
        self._rcpt_tos = []
        self._in_data = False
        self._data = []
        self._data_size = 0
        self._data_overflow = False
