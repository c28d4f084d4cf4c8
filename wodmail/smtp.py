"""The standard door: a strict aiosmtpd listener on SMTPHOST:SMTPPORT.

aiosmtpd does the protocol (CRLF framing, only CRLF.CRLF ends DATA, bare-LF smuggling
refused as of 1.4.6); our handler only hands the message to the intake and returns its
answer, which comes after the durable commit.

Connection limits (location keys, declared in wodmail.location.keys; `SmtpLimits.from_location`):

    SMTPIDLETIMEOUT      seconds a client may take between two commands, and for its DATA (60)
    SMTPSESSIONTIMEOUT   seconds a connection may last in all: a client dribbling one byte
                         a second is cut then (300)
    SMTPMAXCOMMANDS      times each SMTP command may be given on one connection (100): a
                         client looping on MAIL or NOOP gets 421 and the close
    SMTPMAXRECIPIENTS    recipients per transaction (10)
    SMTPPEERCONNECTIONS  connections open at once from one client address outside TRUSTEDPEERS
                         (20); the next gets 421 at once, so a stranger cannot hoard the door.
                         TRUSTEDPEERS (the registration app) are not capped: the app may open
                         as many sessions as it needs. A connection from this host counts as
                         trusted only when root or LOCALPEERUSERS opened it (wodmail.peers)

Every connection also takes a slot of the `ConnectionBudget` both doors share
(wodmail.admission): a peer outside TRUSTEDPEERS takes a stranger's slot (421 at once when
the strangers' share is full, and the stranger idle longest is closed when a trusted peer
needs its slot); a client that passes SMTP AUTH is trusted from then on. Refusals are
logged once per interval, with counts.

Lines are at most 1001 bytes (aiosmtpd: RFC 5321), messages at most 4 x MAXMESSAGESIZE
bytes (aiosmtpd stops a flood with 552) and the intake refuses anything above
MAXMESSAGESIZE with a record.

Optional SMTP AUTH over STARTTLS (`SmtpSecurity.from_location`): with SMTPTLSCERT (and
SMTPTLSKEY if the key is a separate file) the door offers STARTTLS; with SMTPAUTHFILE as
well it offers AUTH PLAIN / LOGIN once TLS is up and never before (538 in clear). The
file holds one `user:hash` line per user, the hash made by libpass, e.g.
`python3 -c 'from passlib.hash import pbkdf2_sha256; print(pbkdf2_sha256.hash(input()))'`.
A user who authenticated may send unsigned commands, whatever TRUSTEDPEERS and
TRUSTEDSENDERS say; the job records "SMTP AUTH user NAME".
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from wodmail.admission import ConnectionBudget, Listener, PerAddress, Slot, Summary
from wodmail.errors import ConfigError
from wodmail.inbound import InboundMail, Intake
from wodmail.location import Location, SmtpSettings
from wodmail.peers import HostPeers, LocalClient

log = logging.getLogger(__name__)

summary = Summary(log)

MAX_RECIPIENTS = SmtpSettings.max_recipients
#: AUTH attempts per connection (each check costs a slow password hash).
MAX_AUTH_ATTEMPTS = 3


@dataclass(frozen=True)
class SmtpLimits:
    """The standard door's caps on one connection and on one peer (defaults: the keys')."""

    idle_timeout: float = SmtpSettings.idle_timeout
    session_timeout: float = SmtpSettings.session_timeout
    max_commands: int = SmtpSettings.max_commands
    max_recipients: int = SmtpSettings.max_recipients
    peer_connections: int = SmtpSettings.peer_connections
    uncapped: tuple[IPv4Network | IPv6Network, ...] = ()
    """Networks whose peers `peer_connections` does not apply to (TRUSTEDPEERS)."""
    local_uids: frozenset[int] = frozenset({0})
    """Users whose connections from this host are uncapped like their address (LOCALPEERUSERS)."""

    @classmethod
    def from_location(cls, location: Location) -> SmtpLimits:
        smtp = location.smtp
        return cls(
            idle_timeout=smtp.idle_timeout,
            session_timeout=smtp.session_timeout,
            max_commands=smtp.max_commands,
            max_recipients=smtp.max_recipients,
            peer_connections=smtp.peer_connections,
            uncapped=tuple(location.trusted_peers),
            local_uids=location.local_peer_uids,
        )

    def capped(self, peer: str, local_client: LocalClient | None = None) -> bool:
        """Whether connections from `peer` count against `peer_connections`: a local client
        that is not one of `local_uids` always does (a student cannot hoard the door)."""
        if local_client is not None and local_client.uid not in self.local_uids:
            return True
        try:
            address: IPv4Address | IPv6Address = ip_address(peer)
        except ValueError:
            return True
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return not any(address in network for network in self.uncapped)


@dataclass(frozen=True)
class AuthenticatedMail(InboundMail):
    """A mail sent in a session that passed SMTP AUTH (over TLS): `login` is the user."""

    login: str = ""


class PasswordFile:
    """SMTPAUTHFILE: `user:hash` lines, checked with libpass."""

    def __init__(self, file: Path, hashes: dict[str, str]) -> None:
        from passlib.context import CryptContext  # type: ignore[import-untyped,unused-ignore]

        self.file = file
        self._hashes = hashes
        self._context = CryptContext(schemes=["pbkdf2_sha256", "sha512_crypt", "sha256_crypt"])

    @classmethod
    def load(cls, location: Location, file: Path) -> PasswordFile:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(location.file, "SMTPAUTHFILE", f"cannot read {file}: {reason}") from None
        hashes: dict[str, str] = {}
        instance = cls(file, hashes)
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, colon, hashed = line.strip().partition(":")
            if not colon or not user or not hashed:
                raise ConfigError(location.file, "SMTPAUTHFILE", f"{file} line {number}: expected user:hash")
            if instance._context.identify(hashed) is None:
                raise ConfigError(
                    location.file,
                    "SMTPAUTHFILE",
                    f"{file} line {number}: not a pbkdf2_sha256, sha512_crypt or sha256_crypt hash"
                    " (a password in clear is refused)",
                )
            hashes[user] = hashed
        return instance

    def check(self, user: str, password: str) -> bool:
        hashed = self._hashes.get(user)
        if hashed is None:
            self._context.dummy_verify()  # the same time for an unknown user
            return False
        return bool(self._context.verify(password, hashed))


@dataclass(frozen=True)
class SmtpSecurity:
    """STARTTLS with the site's certificate, and SMTP AUTH once TLS is up."""

    tls_context: ssl.SSLContext | None = None
    passwords: PasswordFile | None = None

    @classmethod
    def from_location(cls, location: Location) -> SmtpSecurity:
        """Load SMTPTLSCERT (and SMTPTLSKEY) and SMTPAUTHFILE, as the location names them."""
        cert, key, auth_file = location.smtp.tls_cert, location.smtp.tls_key, location.smtp.auth_file
        context = None
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
                raise ConfigError(location.file, "SMTPTLSCERT", f"cannot load {cert}: {reason}") from None
        passwords = PasswordFile.load(location, auth_file) if auth_file is not None else None
        return cls(context, passwords)

    def authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if self.passwords is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        if self.passwords.check(user, password):
            log.info("smtp %s: SMTP AUTH as %s", _peer_of(session), user[:64])
            slot = getattr(server, "slot", None)
            if isinstance(slot, Slot):
                slot.trust()  # no longer a stranger: its slot cannot be taken from it
            return AuthResult(success=True, auth_data=user)
        log.info("smtp %s: SMTP AUTH failed for %r", _peer_of(session), user[:64])
        return AuthResult(success=False, handled=False)


def _peer_of(session: Session) -> str | None:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else None


class CommandHandler:
    """aiosmtpd handler: every message goes through the intake; its reply is ours."""

    def __init__(self, intake: Intake, max_recipients: int = MAX_RECIPIENTS) -> None:
        self.intake = intake
        self.max_recipients = max_recipients

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return f"452 too many recipients (at most {self.max_recipients})"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = _peer_of(session)
        content = envelope.original_content or b""
        fields: dict[str, Any] = {
            "door": "smtp",
            "peer": peer,
            "mail_from": envelope.mail_from or "",
            "data": content if isinstance(content, bytes) else content.encode(),
            "rcpt_tos": tuple(envelope.rcpt_tos),
        }
        mail: InboundMail
        fields["local_client"] = getattr(server, "local_client", None)
        if session.authenticated and isinstance(session.auth_data, str):
            mail = AuthenticatedMail(**fields, login=session.auth_data)
        else:
            mail = InboundMail(**fields)
        reply = await self.intake.submit(mail)
        # aiosmtpd writes replies as ASCII: a reason quoting non-ASCII text must not turn
        # the specific refusal into a 500 from its exception handler.
        return reply.line.encode("ascii", "backslashreplace").decode("ascii")


class _PeerCounter(PerAddress):
    """Connections open per client address, capped for those `limits.capped`."""

    def __init__(self, limits: SmtpLimits) -> None:
        super().__init__(limits.peer_connections)
        self.capped = limits.capped

    def admit(self, peer: str, local_client: LocalClient | None = None) -> bool:
        if self.open[peer] >= self.limit and self.capped(peer, local_client):
            return False
        self.open[peer] += 1
        return True


#: An SMTP path as clients nearly always write it: `<dot-atom@dot-atom>`, then parameters.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*)@({_ATOM}(?:\.{_ATOM})*)>[ \t]*(.*)", re.DOTALL)


class _LimitedSMTP(SMTP):
    """aiosmtpd's SMTP with two caps it lacks (connections per peer, a whole session's time)
    and a quicker reading of plain MAIL FROM / RCPT TO paths."""

    def __init__(
        self,
        handler: Any,
        *,
        peers: _PeerCounter,
        session_timeout: float,
        host_peers: HostPeers | None = None,
        budget: ConnectionBudget | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._peers = peers
        self._budget = budget or ConnectionBudget()
        self.slot: Slot | None = None
        self._refusal: str | None = None
        self._host_peers = host_peers or HostPeers()
        self.local_client: LocalClient | None = None
        """Who opened the connection, when the client is on this host (asked once, here)."""
        self._session_timeout = session_timeout
        self._admitted: str | None = None
        self._session_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # STARTTLS calls this again with the TLS transport
        super().connection_made(transport)
        if not first:
            return
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else "?"
        # Asked at once, while the client's socket is surely open: later it may be closed.
        self.local_client = self._host_peers.client_of(transport.get_extra_info("sockname"), peername)
        if not self._peers.admit(peer, self.local_client):
            self._refusal = f"421 4.7.0 too many connections from your address (at most {self._peers.limit})"
            summary.note(
                logging.WARNING,
                "per-address",
                "smtp %s: over %d connections from one address, refused",
                peer,
                self._peers.limit,
            )
            return
        self._admitted = peer
        trusted = not self._peers.capped(peer, self.local_client)
        self.slot = self._budget.admit(trusted, self._evicted)
        if self.slot is None:
            self._refusal = "421 4.7.0 too busy, try again later"
            summary.note(logging.WARNING, "budget", "smtp %s: every connection slot taken, refused", peer)
            return
        self._session_timer = self.loop.call_later(self._session_timeout, self._session_over)

    def data_received(self, data: bytes) -> None:
        if self.slot is not None:
            self.slot.touch()
        super().data_received(data)

    def _evicted(self) -> None:
        """Closed for a trusted peer's sake (this stranger was idle longest)."""
        self.slot = None
        summary.note(logging.INFO, "evicted", "smtp %s: idle stranger closed for a trusted peer", self._admitted)
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(b"421 4.7.0 too busy, closing\r\n")
            transport.abort()

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            await self.push(self._refusal)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def _session_over(self) -> None:
        log.info("smtp %s: session time limit (%.0f s) reached, closing", self._admitted, self._session_timeout)
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(b"421 4.4.2 session time limit reached, closing\r\n")
            transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's answer, without its RFC 5322 header parser for a plain `<a@b> rest`:
        that parser (and a class it defines at every call) cost a third of a mail's time."""
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is None or plain[3].startswith("("):  # a comment: leave it to aiosmtpd
            return super()._getaddr(arg)
        if self.local_part_limit and len(plain[1]) > self.local_part_limit:
            return None, None
        return f"{plain[1]}@{plain[2]}", plain[3]

    def connection_lost(self, error: Exception | None) -> None:
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        if self._admitted is not None:
            self._peers.release(self._admitted)
            self._admitted = None
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        super().connection_lost(error)


async def start_smtp_server(
    intake: Intake,
    host: str,
    port: int,
    *,
    max_message_size: int,
    hostname: str = "wodmail",
    limits: SmtpLimits | None = None,
    security: SmtpSecurity | None = None,
    host_peers: HostPeers | None = None,
    budget: ConnectionBudget | None = None,
) -> Listener:
    """Listen on host:port; each connection gets its own aiosmtpd protocol instance."""
    loop = asyncio.get_running_loop()
    budget = budget or ConnectionBudget()
    host_peers = host_peers or HostPeers()
    limits = limits or SmtpLimits()
    security = security or SmtpSecurity()
    handler = CommandHandler(intake, limits.max_recipients)
    peers = _PeerCounter(limits)
    # AUTH is offered only with a password file, and only once STARTTLS is done.
    auth: dict[str, Any] = {"auth_exclude_mechanism": ["LOGIN", "PLAIN"]}
    if security.passwords is not None:
        auth = {"authenticator": security.authenticator, "auth_require_tls": True}
    calls: dict[str, int] = {"*": limits.max_commands, "AUTH": MAX_AUTH_ATTEMPTS, "STARTTLS": 1}

    def factory() -> Any:
        return _LimitedSMTP(
            handler,
            peers=peers,
            host_peers=host_peers,
            budget=budget,
            session_timeout=limits.session_timeout,
            # The intake refuses (and records) a mail over MAXMESSAGESIZE; aiosmtpd's own cap,
            # further out, only stops a flood before it is buffered whole.
            data_size_limit=max(4 * max_message_size, 1 << 20),
            hostname=hostname,
            ident="wodmail",
            timeout=limits.idle_timeout,
            command_call_limit=calls,
            tls_context=security.tls_context,
            loop=loop,
            **auth,
        )

    return await Listener.start(factory, host, port, summary, "smtp")
