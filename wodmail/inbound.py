"""What the doors hand to the intake, and what the intake answers.

Every door (the standard SMTP listener, the legacy listener, the admin socket and
`wodmail deliver`) builds an `InboundMail` and get a `Reply` from the one intake path: parse, check the
sender, commit, answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from wodmail.peers import LocalClient


@dataclass(frozen=True)
class InboundMail:
    door: str
    """'smtp', 'legacy', 'admin' or 'deliver'."""
    peer: str | None
    """The client's IP address; None for `deliver` (a local pipe) and the admin socket."""
    mail_from: str
    """The envelope sender as given (may be empty)."""
    data: bytes
    """The message: headers and body, dot-unstuffed; line endings as received on the standard
    door and from `deliver`, LF from the legacy door (which takes bare LF and CRLF alike)."""
    rcpt_tos: tuple[str, ...] = field(default_factory=tuple)
    local_client: LocalClient | None = None
    """Who opened the connection, when the client is on this host (a loopback or host
    address: the door asked the kernel; the admin socket: SO_PEERCRED). None for a remote
    peer and for `deliver`. A loopback peer without it is taken as an unknown local user."""


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def line(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300


class Intake(Protocol):
    async def submit(self, mail: InboundMail) -> Reply:
        """Parse, authenticate and durably commit `mail`; answer only once that is done."""
        ...
