"""The student directory in LDAP: replace a student's `userPassword` with a salted hash.

Location keys (read and checked by `LdapDirectory.from_location`, before the daemon starts):

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
import ipaddress
import logging
import re
import ssl
import string
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext

with warnings.catch_warnings():
    # ldap3 2.9.1 imports names that pyasn1 >= 0.6 marks deprecated (tagMap, typeMap).
    warnings.simplefilter("ignore", DeprecationWarning)
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import escape_rdn, parse_dn
from passlib.hash import (  # type: ignore[import-untyped,unused-ignore]
    ldap_salted_md5,
    ldap_salted_sha1,
    ldap_sha512_crypt,
)

from wodmail import ldapwire
from wodmail.errors import ConfigError, StepFailed, TransientError, WodmailError
from wodmail.location import SECRET_KEYS, Location

log = logging.getLogger(__name__)

DEFAULT_USER_DN = "uid=student{stdid},ou=People,{LDAPDMN}"
DEFAULT_IPC_SOCKET = "/var/run/slapd/ldapi"

# SHA-512 crypt at glibc's default cost: slapd checks {CRYPT} with crypt(3) on every student
# bind, and the passwords are 16 random letters and digits (95 bits): more rounds would only
# slow down logins, not guessing.
CRYPT_ROUNDS = 5000

SCHEMES: Mapping[str, Callable[[str], str]] = {
    "{SSHA}": ldap_salted_sha1.using(salt_size=8).hash,
    "{SMD5}": ldap_salted_md5.using(salt_size=8).hash,
    "{CRYPT}": ldap_sha512_crypt.using(rounds=CRYPT_ROUNDS).hash,
}
"""The salted schemes a stock slapd verifies (no `moduleload` needed), and how to hash them."""

REFUSED_SCHEMES: Mapping[str, str] = {
    "{SHA}": "an unsalted hash",
    "{MD5}": "an unsalted hash",
    "{CLEARTEXT}": "the password in clear",
    "{SSHA256}": "needs slapd's pw-sha2 module, not loaded out of the box",
    "{SSHA384}": "needs slapd's pw-sha2 module, not loaded out of the box",
    "{SSHA512}": "needs slapd's pw-sha2 module, not loaded out of the box",
    "{SHA256}": "an unsalted hash (and needs slapd's pw-sha2 module)",
    "{SHA512}": "an unsalted hash (and needs slapd's pw-sha2 module)",
    "{ARGON2}": "needs slapd's argon2 module, not loaded out of the box",
    "{PBKDF2}": "needs slapd's pbkdf2 module, not loaded out of the box",
}

#: Result codes that may pass: timeLimitExceeded, adminLimitExceeded, busy, unavailable.
TRANSIENT_RESULTS = frozenset({3, 11, 51, 52})
INVALID_CREDENTIALS = 49
NO_SUCH_OBJECT = 32
INSUFFICIENT_ACCESS = 50
ENTRY_ALREADY_EXISTS = 68
REFERRAL = 10

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:([+-])(\d{1,9}))?\}")
_PER_STUDENT = frozenset({"stdid", "student", "dbid"})
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*(;[A-Za-z0-9-]+)*|[0-9]+(\.[0-9]+)+")


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: LDAPURI taken apart."""

    uri: str
    host: str
    """A host name or address; for ldapi://, the socket path."""
    port: int | None
    ssl: bool
    ipc: bool

    async def connect(self, tls: SSLContext | None, timeout: float) -> ldapwire.LdapConnection:
        """A new connection to the server (TLS from the start for ldaps://)."""
        if self.ipc:
            return await ldapwire.connect_unix(self.host, timeout=timeout)
        port = self.port or (636 if self.ssl else 389)
        return await ldapwire.connect(self.host, port, timeout=timeout, tls=tls if self.ssl else None)

    @property
    def loopback(self) -> bool:
        if self.ipc or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class Pattern:
    """A text with {placeholder}s: a DN pattern or an entry template value."""

    def __init__(self, text: str, values: Mapping[str, str], *, dn: bool) -> None:
        self.text = text
        self._values = values
        self._dn = dn

    def names(self) -> list[tuple[str, str | None]]:
        """(name, offset or None) of every placeholder."""
        return [(m.group(1), m.group(2)) for m in _PLACEHOLDER.finditer(self.text)]

    def fill(self, stdid: int, base_stdid: int, *, neutral: bool = False) -> str:
        """The text for student `stdid`; `neutral`: location values as `x` (to check the shape)."""

        def value(match: re.Match[str]) -> str:
            name, sign, amount = match.group(1), match.group(2), match.group(3)
            if name in ("stdid", "dbid"):
                number = stdid if name == "stdid" else stdid + base_stdid
                if sign:
                    number = number + int(amount) if sign == "+" else number - int(amount)
                return str(number)
            if name == "student":
                text = f"student{stdid}"
            elif self._dn and name == "LDAPDMN":
                return self._values[name]
            else:
                text = "x" if neutral else self._values[name]
            return escape_rdn(text) if self._dn and text else text

        return _PLACEHOLDER.sub(value, self.text)


@dataclass(frozen=True)
class Settings:
    """The LDAP keys of a location, checked."""

    endpoint: Endpoint
    bind_dn: str
    bind_password: str = field(repr=False)
    start_tls: bool
    ca_file: Path | None
    user_dn: Pattern
    base_stdid: int
    scheme: str
    connections: int
    timeout: int
    entry_template: tuple[tuple[str, Pattern], ...] | None
    """None: a missing entry is an error (LDAPCREATEMISSING false)."""

    @property
    def uses_tls(self) -> bool:
        return self.endpoint.ssl or self.start_tls

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        return context


class _Keys:
    """Reads the LDAP keys of one location; every mistake is a ConfigError naming the key."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.values = location.values

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.location.file, key, reason)

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.values.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "expected a non-empty string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.values.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, "expected true or false")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.values.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"expected an integer from {low} to {high}")
        return value

    def path(self, key: str) -> Path | None:
        text = self.text(key)
        if text is None:
            return None
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.location.file.parent / path

    def endpoint(self) -> Endpoint:
        uri = self.text("LDAPURI")
        if uri is None:
            raise self.fail("LDAPURI", "missing: the URL of the LDAP server")
        parts = urllib.parse.urlsplit(uri.strip())
        scheme = parts.scheme.lower()
        if scheme == "ldapi":
            # ldapi://%2Fpath%2Fto%2Fsocket; ldapi:/// is the system's socket.
            path = urllib.parse.unquote(parts.netloc) or parts.path.rstrip("/") or DEFAULT_IPC_SOCKET
            return Endpoint(uri, path, None, ssl=False, ipc=True)
        if scheme not in ("ldap", "ldaps"):
            raise self.fail("LDAPURI", "expected ldap://host[:port], ldaps://host[:port] or ldapi://socket")
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise self.fail("LDAPURI", "the port is not a number from 1 to 65535") from None
        if not host:
            raise self.fail("LDAPURI", "names no host")
        if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
            raise self.fail("LDAPURI", "give only scheme://host[:port]: a DN, filter or user in the URL is not used")
        return Endpoint(uri, host, port, ssl=scheme == "ldaps", ipc=False)

    def dn(self, key: str, text: str) -> None:
        try:
            parse_dn(text)
        except LDAPInvalidDnError as exc:
            raise self.fail(key, f"not a DN: {exc}") from None

    def placeholders(self, key: str, pattern: Pattern) -> None:
        for name, offset in pattern.names():
            if offset is not None and name not in ("stdid", "dbid"):
                raise self.fail(key, f"{{{name}{offset}...}}: only stdid and dbid take an offset")
            if name in _PER_STUDENT:
                continue
            if name in SECRET_KEYS:
                raise self.fail(key, f"{{{name}}} is a secret and may not go into the directory")
            value = self.values.get(name)
            if value is None:
                raise self.fail(key, f"{{{name}}}: the location has no {name}")
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise self.fail(key, f"{{{name}}}: {name} is not a text or a number")

    def scheme(self) -> str:
        text = (self.text("LDAPHASH") or "{SSHA}").strip().upper()
        scheme = text if text.startswith("{") else "{" + text + "}"
        if scheme in SCHEMES:
            return scheme
        known = ", ".join(SCHEMES)
        reason = REFUSED_SCHEMES.get(scheme, "unknown to a stock slapd")
        raise self.fail("LDAPHASH", f"{scheme} is refused: {reason} (use {known})")


def _string_values(values: Mapping[str, object]) -> dict[str, str]:
    return {
        key: str(value)
        for key, value in values.items()
        if key not in SECRET_KEYS and isinstance(value, str | int) and not isinstance(value, bool)
    }


def read_settings(location: Location) -> Settings:
    """The LDAP settings of `location`; raises ConfigError("file: KEY: reason") on a mistake."""
    keys = _Keys(location)
    endpoint = keys.endpoint()

    bind_dn = keys.text("LDAPBINDDN")
    if bind_dn is None:
        raise keys.fail("LDAPBINDDN", "missing: the DN wodmail binds as to change student passwords")
    keys.dn("LDAPBINDDN", bind_dn)
    bind_password = keys.text("LDAPBINDPW")
    if bind_password is None:
        raise keys.fail("LDAPBINDPW", "missing: the password of LDAPBINDDN")

    start_tls = keys.flag("LDAPSTARTTLS", False)
    if start_tls and (endpoint.ssl or endpoint.ipc):
        raise keys.fail("LDAPSTARTTLS", "StartTLS is for ldap:// URLs (ldaps:// is TLS already, ldapi:// is local)")
    ca_file = keys.path("LDAPCAFILE")
    if ca_file is not None:
        if not (endpoint.ssl or start_tls):
            raise keys.fail("LDAPCAFILE", "set, but the connection uses no TLS (use ldaps:// or LDAPSTARTTLS: true)")
        try:
            ssl.create_default_context(cafile=str(ca_file))
        except FileNotFoundError:
            raise keys.fail("LDAPCAFILE", f"{ca_file} does not exist") from None
        except (OSError, ssl.SSLError) as exc:
            raise keys.fail("LDAPCAFILE", f"{ca_file} is not a readable PEM CA file ({type(exc).__name__})") from None

    values = _string_values(location.values)
    user_dn = Pattern(keys.text("LDAPUSERDN", DEFAULT_USER_DN) or DEFAULT_USER_DN, values, dn=True)
    keys.placeholders("LDAPUSERDN", user_dn)
    if not any(name in _PER_STUDENT for name, _ in user_dn.names()):
        raise keys.fail("LDAPUSERDN", "names no student: put {stdid}, {student} or {dbid} in it")
    if "LDAPDMN" in values and any(name == "LDAPDMN" for name, _ in user_dn.names()):
        keys.dn("LDAPDMN", values["LDAPDMN"])
    keys.dn("LDAPUSERDN", user_dn.fill(location.student_min, location.base_stdid, neutral=True))

    entry_template = None
    if keys.flag("LDAPCREATEMISSING", False):
        template_file = keys.path("LDAPENTRYTEMPLATE")
        if template_file is None:
            raise keys.fail("LDAPENTRYTEMPLATE", "missing: LDAPCREATEMISSING needs the attributes of a new entry")
        entry_template = read_entry_template(template_file, values, keys)
    elif keys.values.get("LDAPENTRYTEMPLATE") is not None:
        keys.path("LDAPENTRYTEMPLATE")

    return Settings(
        endpoint=endpoint,
        bind_dn=bind_dn,
        bind_password=bind_password,
        start_tls=start_tls,
        ca_file=ca_file,
        user_dn=user_dn,
        base_stdid=location.base_stdid,
        scheme=keys.scheme(),
        connections=keys.integer("LDAPCONNECTIONS", 4, 1, 64),
        timeout=keys.integer("LDAPTIMEOUT", 10, 1, 600),
        entry_template=entry_template,
    )


def read_entry_template(path: Path, values: Mapping[str, str], keys: _Keys) -> tuple[tuple[str, Pattern], ...]:
    """The `attribute: value` lines of an entry template (LDIF style: folded lines, # comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise keys.fail("LDAPENTRYTEMPLATE", f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise keys.fail("LDAPENTRYTEMPLATE", f"cannot read {path} ({type(exc).__name__})") from None
    lines: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(" ") and lines:
            lines[-1] = (lines[-1][0], lines[-1][1] + line[1:])
        elif line.strip() and not line.startswith("#"):
            lines.append((number, line))
    attributes: list[tuple[str, Pattern]] = []
    for number, line in lines:

        def fail(reason: str, number: int = number) -> ConfigError:
            return ConfigError(path, f"line {number}", reason)

        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _ATTRIBUTE.fullmatch(name):
            raise fail("expected `attribute: value`")
        if value.startswith((":", "<")):
            raise fail("write the value as text (no base64 `::` or URL `:<` values)")
        if name.lower() in ("dn", "changetype"):
            raise fail(f"no `{name}:` here: the DN comes from LDAPUSERDN")
        if name.lower() == "userpassword":
            raise fail("no userPassword here: wodmail sets it")
        pattern = Pattern(value.strip(), values, dn=False)
        if not pattern.text:
            raise fail(f"{name} has no value")
        try:
            keys.placeholders("LDAPENTRYTEMPLATE", pattern)
        except ConfigError as exc:
            raise fail(exc.reason) from None
        attributes.append((name, pattern))
    if not any(name.lower() == "objectclass" for name, _ in attributes):
        raise ConfigError(path, None, "the template names no objectClass")
    return tuple(attributes)


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

    def __init__(self, settings: Settings) -> None:
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
        """The directory of `location` (its LDAP* keys); ConfigError when a key is wrong."""
        return cls(read_settings(location))

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
            connection = await endpoint.connect(self._tls, settings.timeout)
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
