"""Who gets a connection slot on the doors, decided when a connection is accepted.

Both doors share one `ConnectionBudget`: at most `total` connections open at once, of which
`reserved` only trusted peers may take (the registration app's addresses, TRUSTEDPEERS and
LEGACYPEERS, root on this host, and a client once it passed SMTP AUTH). So no number of
strangers can lock the app out: strangers get `total - reserved` slots between them, and
when a trusted peer finds every slot taken, the stranger idle longest is closed for it.
Each door also caps connections per address (SMTPPEERCONNECTIONS, LEGACYPEERCONNECTIONS),
and the legacy door closes a peer outside LEGACYPEERS at once, with a 5xx, before it reads
a byte (see wodmail.legacy).

`total` is at most three quarters of the process's file descriptor limit (at least
DESCRIPTOR_MARGIN less): the database, the log, the listeners and the connections accepted
but not yet turned away need the rest, so the doors stop admitting well before accept()
fails. Should it fail all the same (EMFILE), the doors' `Listener` stops accepting on that
socket for ACCEPT_PAUSE and says so in one summarised line per interval. (asyncio's own
server, in Python 3.11, keeps calling accept() after that error and reschedules itself once
per call: a spin that wrote tracebacks at thousands of lines a second; CPython gh-151615.)

Location keys (with their defaults):

    MAXCONNECTIONS        1000  connections open at once on both doors together
    RESERVEDCONNECTIONS   100   of those, slots only trusted peers may take
    LEGACYPEERCONNECTIONS 50    connections open at once from one LEGACYPEERS address
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from wodmail.location import ConnectionSettings, Location

log = logging.getLogger(__name__)

#: File descriptors kept for everything but client connections.
DESCRIPTOR_MARGIN = 100
#: How often a repeated log line is summarised.
SUMMARY_INTERVAL = 10.0
#: Seconds a listener stops accepting after running out of descriptors (or memory).
ACCEPT_PAUSE = 1.0
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Slot:
    """One admitted connection's hold on the budget; `release` once it is closed."""

    __slots__ = ("_budget", "evict", "released", "trusted")

    def __init__(self, budget: ConnectionBudget, trusted: bool, evict: Callable[[], None]) -> None:
        self._budget = budget
        self.trusted = trusted
        self.evict = evict
        self.released = False

    def touch(self) -> None:
        """The peer sent something: it is not idle."""
        if not self.trusted and not self.released:
            self._budget._strangers.move_to_end(self)

    def trust(self) -> None:
        """The peer proved who it is (SMTP AUTH): its slot is no longer a stranger's."""
        if not self.trusted and not self.released:
            del self._budget._strangers[self]
            self.trusted = True
            self._budget._stranger_count -= 1

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._budget._open -= 1
        if not self.trusted:
            self._budget._strangers.pop(self, None)
            self._budget._stranger_count -= 1


class ConnectionBudget:
    """Slots for connections on both doors; see the module's docstring."""

    def __init__(self, total: int = ConnectionSettings.total, reserved: int = ConnectionSettings.reserved) -> None:
        limit = descriptor_limit()
        # Accepted connections not yet turned away hold descriptors too: keep a quarter free.
        self.total = max(2, min(total, limit - max(DESCRIPTOR_MARGIN, limit // 4)) if limit else total)
        self.reserved = min(reserved, self.total - 1)
        self._open = 0
        self._stranger_count = 0
        self._strangers: collections.OrderedDict[Slot, None] = collections.OrderedDict()
        """Strangers' slots, the one idle longest first."""
        self.refused = 0
        self.evicted = 0

    @classmethod
    def from_location(cls, location: Location) -> ConnectionBudget:
        """MAXCONNECTIONS and RESERVEDCONNECTIONS of `location`."""
        return cls(location.connections.total, location.connections.reserved)

    @property
    def open(self) -> int:
        return self._open

    def admit(self, trusted: bool, evict: Callable[[], None]) -> Slot | None:
        """A slot for a new connection, or None (refuse it): strangers only up to
        `total - reserved`; a trusted peer up to `total`, closing the stranger idle longest
        when every slot is taken. `evict` closes this connection, if it is ever chosen."""
        if trusted:
            if self._open >= self.total and self._strangers:
                oldest, _ = self._strangers.popitem(last=False)
                self.evicted += 1
                oldest.release()
                oldest.evict()
            if self._open >= self.total:
                self.refused += 1
                return None
        elif self._stranger_count >= self.total - self.reserved or self._open >= self.total:
            self.refused += 1
            return None
        slot = Slot(self, trusted, evict)
        self._open += 1
        if not trusted:
            self._stranger_count += 1
            self._strangers[slot] = None
        return slot


def descriptor_limit() -> int:
    """The soft limit on open files of this process (0 if unknown or unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY and soft > 0 else 0


class PerAddress:
    """Connections open per client address, capped at `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: collections.Counter[str] = collections.Counter()

    def admit(self, peer: str) -> bool:
        if self.open[peer] >= self.limit:
            return False
        self.open[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]


class Summary:
    """Repeated log lines, one per interval: `note(key, ...)` logs the first at once, then
    counts; the next after the interval says how many there were meanwhile."""

    def __init__(self, logger: logging.Logger, interval: float = SUMMARY_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._count: collections.Counter[str] = collections.Counter()

    def note(self, level: int, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._count[key] += 1
            return
        self._last[key] = now
        if len(self._last) > 10_000:  # keys are addresses at most: stay bounded all the same
            self._last = {key: now}
            self._count.clear()
        skipped = self._count.pop(key, 0)
        if skipped and last is not None:
            self.logger.log(level, message + " (and %d more like it in the last %.0f s)", *args, skipped, now - last)
        else:
            self.logger.log(level, message, *args)


class _Accepted(socket.socket):
    """An accepted socket that still names its peer once the peer is gone: asyncio asks
    getpeername() when it makes the transport, and a client that wrote its mail and reset
    the connection at once (the legacy client may) has none by then. asyncio's own server
    hands it the address accept() returned; connect_accepted_socket has no way to."""

    _peer: Any = None

    @classmethod
    def wrap(cls, connection: socket.socket, peer: Any) -> _Accepted:
        accepted = cls(connection.family, connection.type, connection.proto, fileno=connection.detach())
        accepted._peer = peer
        return accepted

    def getpeername(self) -> Any:
        try:
            return super().getpeername()
        except OSError:
            return self._peer


class Listener(asyncio.AbstractServer):
    """Listening sockets served by an accept loop of our own (sock_accept and
    connect_accepted_socket, both public asyncio API): out of descriptors, it pauses that
    socket for ACCEPT_PAUSE and logs one summarised line, never a spin (see the module's
    docstring). Otherwise what `loop.create_server` gives: `sockets`, `close`,
    `wait_closed`; closing stops accepting and leaves open connections to their doors."""

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        summary: Summary,
        name: str,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.sockets = tuple(sockets)
        self._factory = protocol_factory
        self._summary = summary
        self._name = name
        self._connecting: set[asyncio.Task[None]] = set()
        self._accepting = [self._loop.create_task(self._accept(sock), name=f"{name}-accept") for sock in sockets]
        self._closed = asyncio.Event()
        self.accepted = 0
        """Connections accepted (wodmail.metrics)."""

    @classmethod
    async def start(
        cls,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
        summary: Summary,
        name: str,
        backlog: int = 511,
    ) -> Listener:
        """Listen on every address `host` names (as `loop.create_server` does)."""
        try:  # an address as it is (no resolver thread): listening starts at once
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return cls(sockets, protocol_factory, summary, name)

    async def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _address = await self._loop.sock_accept(listener)
            except OSError as exc:
                if listener.fileno() == -1:
                    return
                if exc.errno in _EXHAUSTED:
                    self._summary.note(
                        logging.WARNING,
                        "accept",
                        "%s: cannot accept connections (%s): accepting paused for %g s",
                        self._name,
                        exc.strerror or type(exc).__name__,
                        ACCEPT_PAUSE,
                    )
                    await asyncio.sleep(ACCEPT_PAUSE)
                else:  # ECONNABORTED and the like: that one connection is gone
                    self._summary.note(logging.INFO, "accept-error", "%s: accept failed: %s", self._name, exc)
                continue
            self.accepted += 1
            task = self._loop.create_task(self._connect(_Accepted.wrap(connection, _address)))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, connection: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, connection)
        except OSError:
            connection.close()

    def close(self) -> None:
        for task in self._accepting:
            task.cancel()
        for sock in self.sockets:
            sock.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._connecting, return_exceptions=True)

    def is_serving(self) -> bool:
        return not self._closed.is_set()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def start_serving(self) -> None:
        """Already serving since it was made."""

    async def serve_forever(self) -> None:
        await self._closed.wait()
