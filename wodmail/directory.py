"""The student directory in LDAP: replace a student's `userPassword` with a salted hash.

Location keys (declared in wodmail.location.keys, checked together by wodmail.location.ldap when
the location is loaded; this module gets them as `location.ldap`):

    LDAPURI            ldap://host[:port], ldaps://host[:port] or ldapi://<socket path, %-encoded>
    LDAPBINDDN         the DN wodmail binds as (needs write access to the students' userPassword)
    LDAPBINDPW         its password (a secret: `env:NAME` or `file:/path` work)
    LDAPSTARTTLS       true: StartTLS on an ldap:// connection (default false)
    LDAPCAFILE         PEM file of the CA that signed the server's certificate (TLS only;
                       default: the system's CAs); the server's name is always checked
    LDAPUSERDN         the student's DN, default uid=student{stdid},ou=People,{LDAPDMN}
    LDAPHASH           {SSHA} (default), {SMD5} or {CRYPT} (SHA-512 crypt): the salted schemes
                       a stock slapd checks without loading a module
    LDAPCONNECTIONS    connections kept open and used at once (default 4)
    LDAPTIMEOUT        whole seconds to connect, and to wait for each answer (default 10)
    LDAPCREATEMISSING  true: create a missing student entry (default false) from
    LDAPENTRYTEMPLATE  a file beside the location: one `attribute: value` per line, LDIF style

Placeholders, in LDAPUSERDN and in the entry template: {stdid}, {student} (student12),
{dbid} (stdid + BASESTDID), {stdid+N} / {dbid+N} (e.g. a uidNumber), and any key of the
location. In LDAPUSERDN, {LDAPDMN} goes in as a DN; every other value is escaped as one RDN
value (ldap3's `escape_rdn`), so nothing inserted can add or change an RDN.

Connections: at most LDAPCONNECTIONS, opened on demand, bound once, kept and reused by every
job (`connections_opened` counts them). LDAP matches answers to requests by message id, so
one connection carries many password changes at once: a job takes an idle connection, else
opens another while there are fewer than LDAPCONNECTIONS, else shares the least busy one.
A kept connection that the server dropped (a restart, an idle timeout) is replaced once, at
once, for the job that found it dropped. The LDAP exchange is `wodmail.ldapwire`'s, on the
event loop (no threads); ldap3 is only used for its DN functions.

Failures: the bind refused, the entry missing, access refused, TLS not trusted: `StepFailed`
(the job fails at once, the reason names the bind DN or the entry). The server unreachable,
busy, or slower than LDAPTIMEOUT: `TransientError` (the job is retried with backoff). No
message ever carries the bind password, the student's password or its hash.
"""

from __future__ import annotations

import asyncio
import logging
import string
from collections.abc import Awaitable, Callable, Mapping
from ssl import SSLContext

from passlib.hash import (  # type: ignore[import-untyped,unused-ignore]
    ldap_salted_md5,
    ldap_salted_sha1,
    ldap_sha512_crypt,
)

from wodmail import ldapwire
from wodmail.errors import ConfigError, StepFailed, TransientError, WodmailError
from wodmail.location import Location
from wodmail.location.ldap import HASH_SCHEMES, Endpoint, LdapSettings

log = logging.getLogger(__name__)

# SHA-512 crypt at glibc's default cost: slapd checks {CRYPT} with crypt(3) on every student
# bind, and the passwords are 16 random letters and digits (95 bits): more rounds would only
# slow down logins, not guessing.
CRYPT_ROUNDS = 5000

SCHEMES: Mapping[str, Callable[[str], str]] = dict(
    zip(
        HASH_SCHEMES,  # {SSHA}, {SMD5}, {CRYPT}: what LDAPHASH may name
        (
            ldap_salted_sha1.using(salt_size=8).hash,
            ldap_salted_md5.using(salt_size=8).hash,
            ldap_sha512_crypt.using(rounds=CRYPT_ROUNDS).hash,
        ),
        strict=True,
    )
)
"""How to hash each salted scheme a stock slapd verifies (no `moduleload` needed)."""

#: Result codes that may pass: timeLimitExceeded, adminLimitExceeded, busy, unavailable.
TRANSIENT_RESULTS = frozenset({3, 11, 51, 52})
INVALID_CREDENTIALS = 49
NO_SUCH_OBJECT = 32
INSUFFICIENT_ACCESS = 50
ENTRY_ALREADY_EXISTS = 68
REFERRAL = 10


def _connect(endpoint: Endpoint, tls: SSLContext | None, timeout: float) -> Awaitable[ldapwire.LdapConnection]:
    """A new connection to the server (TLS from the start for ldaps://)."""
    if endpoint.ipc:
        return ldapwire.connect_unix(endpoint.host, timeout=timeout)
    port = endpoint.port or (636 if endpoint.ssl else 389)
    return ldapwire.connect(endpoint.host, port, timeout=timeout, tls=tls if endpoint.ssl else None)


# --- DN helpers -----------------------------------------------------------------------------


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    """An RDN value as written in a DN (RFC 4514 escapes) back to its text."""
    out = bytearray()
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            pair = value[index + 1 : index + 3]
            if len(pair) == 2 and all(c in string.hexdigits for c in pair):
                out.append(int(pair, 16))
                index += 3
                continue
            out += value[index + 1].encode()
            index += 2
            continue
        out += char.encode()
        index += 1
    return out.decode("utf-8", errors="replace")


def rdn_attributes(dn: str) -> dict[str, str]:
    """The attribute values of the DN's first RDN (an entry must hold them)."""
    rdn = _split_unescaped(dn, ",")[0]
    attributes: dict[str, str] = {}
    for ava in _split_unescaped(rdn, "+"):
        name, _, value = ava.partition("=")
        attributes[name.strip()] = _unescape(value.strip())
    return attributes


# --- the directory --------------------------------------------------------------------------


class LdapDirectory:
    """Sets student passwords in an LDAP directory, through a small pool of bound connections.

    It lives on one event loop: the one that runs its first `set_student_password`."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        self.connections_opened = 0
        """How many connections this directory opened (and tried to bind) so far."""
        self._connections: list[ldapwire.LdapConnection] = []
        """Open and bound, for any job to use."""
        self._opening: list[asyncio.Task[ldapwire.LdapConnection]] = []
        self._joins = 0
        self._closed = False
        self._hash = SCHEMES[settings.scheme]
        endpoint = settings.endpoint
        self._tls = settings.tls_context() if settings.uses_tls else None
        self.where = endpoint.uri
        if not settings.uses_tls and not endpoint.loopback:
            log.warning("LDAP: %s is neither TLS nor local: the bind password travels in clear", self.where)

    @classmethod
    def from_location(cls, location: Location) -> LdapDirectory:
        """The directory of `location` (its LDAP settings, checked when it was loaded)."""
        if location.ldap is None:
            raise ConfigError(location.file, "LDAPURI", "missing: the URL of the LDAP server")
        return cls(location.ldap)

    def user_dn(self, stdid: int) -> str:
        """The DN of student `stdid`'s entry (LDAPUSERDN, values escaped)."""
        return self.settings.user_dn.fill(stdid, self.settings.base_stdid)

    async def set_student_password(self, stdid: int, password: str) -> str:
        """Replace student{stdid}'s userPassword with a salted hash of `password`."""
        if self._closed:
            raise TransientError("the LDAP directory is closed (the daemon is stopping)")
        dn = self.user_dn(stdid)
        hashed = self._hash(password)
        for attempt in (1, 2):
            connection, reused = await self._take()
            try:
                return await self._replace(connection, dn, hashed, stdid)
            except ldapwire.LdapConnectionError as exc:
                connection.abort()
                if reused and attempt == 1:
                    log.info("LDAP %s: a kept connection failed (%s); opening a new one", self.where, self._scrub(exc))
                    continue
                raise self._connection_failure(exc, f"replace the userPassword of {dn}") from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Stop taking work, unbind the connections and wait until they are closed."""
        self._closed = True
        opening, self._opening = self._opening, []
        for task in opening:
            task.cancel()
        if opening:
            await asyncio.wait(opening)
        connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.gather(*(connection.wait_closed() for connection in connections))
        self._log_total()

    def _log_total(self) -> None:
        log.info("LDAP %s: %d connection(s) opened in all", self.where, self.connections_opened)

    # -- the pool ------------------------------------------------------------------------------

    async def _take(self) -> tuple[ldapwire.LdapConnection, bool]:
        """A connection for one operation, and whether it was kept from earlier (reused):
        an idle one, else a new one while the pool is not full, else the least busy."""
        connections = self._connections
        if not all(connection.usable for connection in connections):
            connections = self._connections = [c for c in connections if c.usable]
        least_busy = min(connections, key=_in_flight, default=None)
        if least_busy is not None and least_busy.in_flight == 0:
            return least_busy, True
        if len(connections) + len(self._opening) < self.settings.connections:
            task = asyncio.create_task(self._open(), name=f"ldap-open {self.where}")
            self._opening.append(task)
            task.add_done_callback(self._opened)
            return await self._join(task), False
        if least_busy is not None:
            return least_busy, True
        # Every connection the pool may have is being opened: wait for one of them.
        self._joins += 1
        return await self._join(self._opening[self._joins % len(self._opening)]), False

    async def _join(self, task: asyncio.Task[ldapwire.LdapConnection]) -> ldapwire.LdapConnection:
        """The connection `task` opens (shared by every job waiting for it), or its error."""
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and self._closed and (current is None or not current.cancelling()):
                raise TransientError("the LDAP directory is closed (the daemon is stopping)") from None
            raise

    def _opened(self, task: asyncio.Task[ldapwire.LdapConnection]) -> None:
        """A connection was opened (into the pool), or could not be (its jobs got the error)."""
        if task in self._opening:
            self._opening.remove(task)
        if task.cancelled() or task.exception() is not None:
            return
        connection = task.result()
        if self._closed:
            connection.close()
        else:
            self._connections.append(connection)

    async def _open(self) -> ldapwire.LdapConnection:
        settings = self.settings
        endpoint = settings.endpoint
        try:
            connection = await _connect(endpoint, self._tls, settings.timeout)
        except ldapwire.LdapError as exc:
            raise self._connection_failure(exc, f"bind as {settings.bind_dn}") from None
        self.connections_opened += 1
        try:
            if settings.start_tls:
                assert self._tls is not None
                await connection.start_tls(self._tls, endpoint.host)
            result = await connection.bind(settings.bind_dn, settings.bind_password)
        except ldapwire.LdapError as exc:
            connection.abort()
            raise self._connection_failure(exc, f"bind as {settings.bind_dn}") from None
        except BaseException:
            connection.abort()
            raise
        if not result.ok:
            connection.close()
            raise self._bind_refused(result)
        return connection

    # -- the operations ------------------------------------------------------------------------

    async def _replace(self, connection: ldapwire.LdapConnection, dn: str, hashed: str, stdid: int) -> str:
        result = await connection.modify_replace(dn, "userPassword", [hashed])
        if result.ok:
            return f"userPassword of {dn} replaced ({self.settings.scheme})"
        if result.code == NO_SUCH_OBJECT and self.settings.entry_template is not None:
            return await self._create(connection, dn, hashed, stdid)
        raise self._refused(result, f"replace the userPassword of {dn}", dn)

    async def _create(self, connection: ldapwire.LdapConnection, dn: str, hashed: str, stdid: int) -> str:
        assert self.settings.entry_template is not None
        attributes: dict[str, list[str]] = {}
        for name, pattern in self.settings.entry_template:
            attributes.setdefault(name, []).append(pattern.fill(stdid, self.settings.base_stdid))
        lowered = {name.lower(): name for name in attributes}
        for name, value in rdn_attributes(dn).items():
            values = attributes.setdefault(lowered.get(name.lower(), name), [])
            if value not in values:
                values.append(value)
        attributes["userPassword"] = [hashed]
        result = await connection.add(dn, list(attributes.items()))
        if result.ok:
            return f"{dn} created with its userPassword ({self.settings.scheme})"
        if result.code == ENTRY_ALREADY_EXISTS:  # made by someone else meanwhile
            return await self._replace(connection, dn, hashed, stdid)
        if result.code == NO_SUCH_OBJECT:
            parent = dn.partition(",")[2] if "," in dn else dn
            raise StepFailed(f"cannot create {dn}: the LDAP server has no parent entry {parent}")
        raise self._refused(result, f"create {dn} (from LDAPENTRYTEMPLATE)", dn)

    # -- what went wrong ----------------------------------------------------------------------

    def _bind_refused(self, result: ldapwire.LdapResult) -> WodmailError:
        bind_dn = self.settings.bind_dn
        if result.code == INVALID_CREDENTIALS:
            return StepFailed(
                f"LDAP bind as {bind_dn} refused by {self.where}: invalid credentials (check LDAPBINDDN and LDAPBINDPW)"
            )
        return self._refused(result, f"bind as {bind_dn}", None)

    def _refused(self, result: ldapwire.LdapResult, what: str, dn: str | None) -> WodmailError:
        """The error for an LDAP result other than success."""
        code = result.code
        answer = self._scrub(result)
        if code == NO_SUCH_OBJECT and dn is not None:
            return StepFailed(f"no LDAP entry {dn} on {self.where} (set LDAPCREATEMISSING to create it)")
        if code == INSUFFICIENT_ACCESS:
            return StepFailed(f"LDAP {self.where} does not let {self.settings.bind_dn} {what}: {answer}")
        if code == REFERRAL:
            return StepFailed(f"LDAP {self.where} refers {what} elsewhere (a read-only replica?): {answer}")
        if code in TRANSIENT_RESULTS:
            return TransientError(f"LDAP {self.where} could not {what} now: {answer}")
        return StepFailed(f"LDAP {self.where} refused to {what}: {answer}")

    def _connection_failure(self, exc: ldapwire.LdapError, what: str) -> WodmailError:
        reason = self._scrub(exc)
        if isinstance(exc, ldapwire.CertificateNotTrusted):
            return StepFailed(
                f"LDAP {self.where}: the server's certificate is not trusted (check LDAPCAFILE): {reason}"
            )
        if isinstance(exc, ldapwire.StartTlsRefused):
            return StepFailed(f"LDAP {self.where} refused StartTLS: {self._scrub(exc.result)}")
        return TransientError(f"LDAP {self.where} unreachable, could not {what}: {reason}")

    def _scrub(self, said: object) -> str:
        """What an error or the server said, short, and without the bind password."""
        text = str(said).strip() or type(said).__name__
        text = text if len(text) <= 200 else text[:197] + "..."
        secret = self.settings.bind_password
        return text.replace(secret, "(secret)") if secret else text


def _in_flight(connection: ldapwire.LdapConnection) -> int:
    return connection.in_flight
