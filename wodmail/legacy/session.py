"""One legacy connection: the protocol callbacks that only buffer bytes and note the end of
input, its timers, its replies (held back in batch mode, written at once in live mode) and
the SMTP dialogue its task runs, one line at a time."""

from __future__ import annotations

import asyncio
import logging

from wodmail.inbound import InboundMail
from wodmail.legacy.door import Admitted, LegacyDoor, summary
from wodmail.legacy.framing import MAIL_RE, RCPT_RE, LineReader, parse_path
from wodmail.legacy.handoff import HandOff
from wodmail.peers import LocalClient

log = logging.getLogger("wodmail.legacy")

#: Recipients per transaction; the legacy client sends one.
MAX_RECIPIENTS = 100

#: The answer to the first line after the first end of DATA.
ONE_COMMAND = "554 5.7.0 One command per connection: nothing after the first end of data is run"


def _clean(text: str) -> str:
    """A reply text on one line."""
    return text.replace("\r", " ").replace("\n", " ")


class LegacySession(asyncio.Protocol):
    """One connection: the protocol callbacks only buffer bytes and note the end of input;
    one task per connection reads the buffer, runs the SMTP dialogue and awaits the intake."""

    def __init__(self, door: LegacyDoor) -> None:
        self.door = door
        self.limits = door.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.local_client: LocalClient | None = None
        self._admitted: Admitted | None = None
        self._handoff = HandOff(door)
        # input
        self._reader = LineReader(self.limits.max_line, self.limits.max_message, self._line_too_long, self._resume)
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
        admitted = self.door.admit(self.peer, self.local_client, self._evicted)
        if isinstance(admitted, str):
            self._turn_away(admitted)
            return
        self._admitted = admitted
        log.debug("legacy %s: connected", self.peer)
        self._timers.append(self.loop.call_later(self.limits.greeting_delay, self._greet))
        self._timers.append(self.loop.call_later(self.limits.total_timeout, self.end_input, "total"))
        self._idle_timer = self.loop.call_later(self.limits.idle_timeout, self._check_idle)
        self.door.opened(self, self.loop.create_task(self._run()))
        if self.door.shutting_down:
            self.end_input("shutdown")

    def _evicted(self) -> None:
        """Closed for a trusted peer's sake (this stranger was idle longest)."""
        if self._admitted is not None:
            self._admitted.evicted()
        summary.note(logging.INFO, "evicted", "legacy %s: idle stranger closed for a trusted peer", self.peer)
        self.end_input("evicted")
        if self.transport is not None:
            self.transport.abort()

    def _turn_away(self, line: str) -> None:
        """Answered and closed when accepted; it holds nothing."""
        self._reader.end()
        if self.transport is not None:
            self.transport.write(line.encode("ascii", "replace") + b"\r\n")
            self.transport.close()

    def _release(self) -> None:
        if self._admitted is not None:
            self._admitted.release()
            self._admitted = None

    def data_received(self, data: bytes) -> None:
        if self._reader.ended or self._ended:
            return
        if self._mode is None:
            self._mode = "batch"
            log.debug("legacy %s: talk before the greeting, batch mode", self.peer)
        if self._admitted is not None:
            self._admitted.touch()
        self._reader.feed(data)
        self._last_input = self.loop.time()
        if self._reader.unread > self.limits.max_message + self.limits.max_line + 4096:
            self._pause()
        self._wakeup.set()

    def eof_received(self) -> bool:
        self._reader.end()
        self._wakeup.set()
        return True  # keep the transport open: the replies are still to be written

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if exc is not None:
            log.debug("legacy %s: connection lost: %s", self.peer, exc)
        self._reader.end()
        self._wakeup.set()

    # ---- timers --------------------------------------------------------------------------

    def _greet(self) -> None:
        if self._mode is None and not self._reader.ended:
            self._mode = "live"
            self._write(f"220 {self.door.hostname} wodmail legacy door ready")
            self._wakeup.set()

    def _check_idle(self) -> None:
        idle = self.limits.idle_timeout
        if self._handoff.busy:
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
                    if self._reader.ended or self._ended or self._batch_finished():
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
            self.door.closed(self)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    def _batch_finished(self) -> bool:
        """Batch mode: all received input processed, a DATA has ended, none begun since."""
        return (
            self._mode == "batch"
            and self._transactions > 0
            and self._mail_from is None
            and not self._in_data
            and self._reader.unread == 0
        )

    def _next_line(self) -> bytes | None:
        """The next complete line, or None for now (none before the mode is decided)."""
        if self._mode is None:
            return None
        return self._reader.next_line()

    def _line_too_long(self, partial: int) -> bool:
        """A line over `max_line` with no LF yet: answered or counted; whether to drop it
        (not while a DATA it still fits in waits for its LF)."""
        if self._transactions:  # after the command: never run, only counted
            if not self._extra_size:
                self._reply(ONE_COMMAND)
            self._extra_size += partial
            return True
        if not self._in_data:
            self._reply("500 5.5.2 Line too long")
            log.info("legacy %s: command line over %d bytes", self.peer, self.limits.max_line)
            return True
        if self._data_overflow or self._data_size + partial > self.limits.max_message:
            self._overflow()
            return True
        return False

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
        match = MAIL_RE.match(text)
        if match is None:
            self._reply("501 5.5.4 Syntax: MAIL FROM: <address>")
            return
        if self._mail_from is not None:
            self._reply("503 5.5.1 Error: nested MAIL command")
            return
        address = parse_path(match["rest"])
        if address is None:
            self._reply("501 5.5.4 Syntax: MAIL FROM: <address>")
            return
        self._mail_from = address
        self._reply("250 OK")

    def _rcpt(self, text: str) -> None:
        match = RCPT_RE.match(text)
        if match is None:
            self._reply("501 5.5.4 Syntax: RCPT TO: <address>")
            return
        if self._mail_from is None:
            self._reply("503 5.5.1 Error: need MAIL command")
            return
        address = parse_path(match["rest"])
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
            try:
                reply = await self._handoff.submit(mail)
            finally:
                self._last_input = self.loop.time()
            log.info("legacy %s: %d bytes -> %d", self.peer, len(mail.data), reply.code)
            self._reply(_clean(reply.line))
        self._reset_transaction()

    async def _finish(self) -> None:
        """Input is over: record a cut-off DATA, write what is owed, close."""
        if self._in_data:
            if self._reader.ended:
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
        await self._handoff.record_incomplete(self._mail_so_far(), reason)

    async def _record_extra(self) -> None:
        """Record what followed the first end of DATA as a refused mail (never run)."""
        mail = InboundMail(
            door="legacy",
            peer=self.peer,
            mail_from="",
            data=b"".join(line + b"\n" for line in self._extra),
            local_client=self.local_client,
        )
        size = self._extra_size
        self._extra, self._extra_size = [], 0
        await self._handoff.record_after_the_command(mail, size)

    def _reset_transaction(self) -> None:
        self._mail_from = None
        self._rcpt_tos = []
        self._in_data = False
        self._data = []
        self._data_size = 0
        self._data_overflow = False
