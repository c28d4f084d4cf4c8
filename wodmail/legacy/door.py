"""The legacy door's listener: its limits, who may connect (`LegacyPolicy`), the state its
connections share (`LegacyDoor`), the admission of each connection before a byte is read,
and the drain at shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from wodmail.admission import ConnectionBudget, Listener, PerAddress, Slot, Summary
from wodmail.inbound import Intake
from wodmail.location import Location
from wodmail.peers import HostPeers, LocalClient, parse_address

# Every module of the door logs under this one name, the name operators filter on.
log = logging.getLogger("wodmail.legacy")

summary = Summary(log)


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


class Admitted:
    """What an admitted connection holds until it closes: its place among its address's
    connections, and its slot of the budget (None once the budget evicted it)."""

    def __init__(self, per_address: PerAddress, address: str, slot: Slot) -> None:
        self._per_address: PerAddress | None = per_address
        self._address = address
        self.slot: Slot | None = slot

    def touch(self) -> None:
        """The peer sent something: it is not idle."""
        if self.slot is not None:
            self.slot.touch()

    def evicted(self) -> None:
        """The budget took the slot back (for a trusted peer's sake)."""
        self.slot = None

    def release(self) -> None:
        """Give back what is held; once."""
        if self._per_address is not None:
            self._per_address.release(self._address)
            self._per_address = None
        if self.slot is not None:
            self.slot.release()
            self.slot = None


class Session(Protocol):
    """What the door asks of an open connection (wodmail.legacy.session)."""

    def end_input(self, reason: str) -> None:
        """Read no more; what is buffered is still processed."""


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
        self._sessions: set[Session] = set()
        self._session_tasks: set[asyncio.Task[None]] = set()
        self._commits: set[asyncio.Task[Any]] = set()
        self._server: Listener | None = None
        self.shutting_down = False

    def listening(self, server: Listener) -> None:
        """`server` serves this door: `drain(server)` finds it."""
        self._server = server
        _DOORS[server] = self

    def admit(self, peer: str | None, local_client: LocalClient | None, evicted: Callable[[], None]) -> Admitted | str:
        """Admit a connection when it is accepted, before a byte is read: what it holds until
        it closes, or the reply line that turns it away (then it holds nothing). `evicted`
        closes it if the budget ever chooses it for a trusted peer's sake."""
        policy = self.policy
        refusal = policy.refusal(peer) if policy is not None else None
        if refusal is not None:
            summary.note(logging.INFO, "denied", "legacy %s: refused when accepted: %s", peer, refusal)
            return f"554 5.7.1 {refusal}"
        if not self.per_address.admit(peer or "?"):
            summary.note(
                logging.WARNING,
                "per-address",
                "legacy %s: over %d connections from one address, refused",
                peer,
                self.per_address.limit,
            )
            return f"421 4.7.0 too many connections from your address (at most {self.per_address.limit})"
        trusted = policy is None or policy.trusted(peer or "?", local_client)
        slot = self.budget.admit(trusted, evicted)
        if slot is None:
            summary.note(logging.WARNING, "budget", "legacy %s: every connection slot taken, refused", peer)
            self.per_address.release(peer or "?")
            return "421 4.7.0 too busy, try again later"
        return Admitted(self.per_address, peer or "?", slot)

    def opened(self, session: Session, task: asyncio.Task[None]) -> None:
        """An admitted connection, open until its `task` ends; `drain` ends its input."""
        self._sessions.add(session)
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)

    def closed(self, session: Session) -> None:
        """The connection's task is ending: nothing more to drain."""
        self._sessions.discard(session)

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


async def drain(server: Listener, grace: float = 1.0) -> None:
    """Shut down a server from `start_legacy_server`: see `LegacyDoor.drain`."""
    door = _DOORS.get(server)
    if door is None:
        server.close()
        await server.wait_closed()
        return
    await door.drain(grace)
