"""The LDAP keys of a location, checked together when LDAPURI is set (wodmail.directory uses them).

The keys, their types and defaults are in wodmail.location.keys; here are the checks that
need several of them, or the DN syntax (ldap3's, imported only when the location has LDAP).

Placeholders, in LDAPUSERDN and in the entry template: {stdid}, {student} (student12),
{dbid} (stdid + BASESTDID), {stdid+N} / {dbid+N} (e.g. a uidNumber), and any key of the
location. In LDAPUSERDN, {LDAPDMN} goes in as a DN; every other value is escaped as one RDN
value (ldap3's `escape_rdn`), so nothing inserted can add or change an RDN.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wodmail.errors import ConfigError
from wodmail.location import keys
from wodmail.location.checks import Checked
from wodmail.location.references import SECRET_KEYS

if TYPE_CHECKING:
    import ssl

DEFAULT_IPC_SOCKET = "/var/run/slapd/ldapi"

HASH_SCHEMES = ("{SSHA}", "{SMD5}", "{CRYPT}")
"""The salted schemes a stock slapd verifies (no `moduleload` needed): wodmail.directory hashes them."""

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

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:([+-])(\d{1,9}))?\}")
_PER_STUDENT = frozenset({"stdid", "student", "dbid"})
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*(;[A-Za-z0-9-]+)*|[0-9]+(\.[0-9]+)+")


@functools.cache
def _rdn_escaper() -> Callable[[str], str]:
    """ldap3's `escape_rdn`, imported on first use (only a location with LDAP needs ldap3)."""
    with warnings.catch_warnings():
        # ldap3 2.9.1 imports names that pyasn1 >= 0.6 marks deprecated (tagMap, typeMap).
        warnings.simplefilter("ignore", DeprecationWarning)
        from ldap3.utils.dn import escape_rdn
    escape: Callable[[str], str] = escape_rdn
    return escape


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: LDAPURI taken apart."""

    uri: str
    host: str
    """A host name or address; for ldapi://, the socket path."""
    port: int | None
    ssl: bool
    ipc: bool

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
            return _rdn_escaper()(text) if self._dn and text else text

        return _PLACEHOLDER.sub(value, self.text)


@dataclass(frozen=True)
class LdapSettings:
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
        import ssl  # only a location with LDAP over TLS needs it

        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        return context


class _LdapKeys:
    """The checks of the LDAP keys that need more than one key, or a DN parser."""

    def __init__(self, checked: Checked, values: Mapping[str, object]) -> None:
        self.checked = checked
        self.file = checked.reader.file
        self.values = values

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.file, key, reason)

    def endpoint(self, uri: str) -> Endpoint:
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from ldap3.core.exceptions import LDAPInvalidDnError
            from ldap3.utils.dn import parse_dn
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
        text = self.checked[keys.LDAPHASH].strip().upper()
        scheme = text if text.startswith("{") else "{" + text + "}"
        if scheme in HASH_SCHEMES:
            return scheme
        known = ", ".join(HASH_SCHEMES)
        reason = REFUSED_SCHEMES.get(scheme, "unknown to a stock slapd")
        raise self.fail("LDAPHASH", f"{scheme} is refused: {reason} (use {known})")


def _string_values(values: Mapping[str, object]) -> dict[str, str]:
    return {
        key: str(value)
        for key, value in values.items()
        if key not in SECRET_KEYS and isinstance(value, str | int) and not isinstance(value, bool)
    }


def ldap_settings(
    checked: Checked, values: Mapping[str, object], student_min: int, base_stdid: int
) -> LdapSettings | None:
    """The LDAP settings (None without LDAPURI); raises ConfigError("file: KEY: reason") on a mistake."""
    uri = checked[keys.LDAPURI]
    if uri is None:
        return None
    ldap = _LdapKeys(checked, values)
    endpoint = ldap.endpoint(uri)

    bind_dn = checked[keys.LDAPBINDDN]
    if bind_dn is None:
        raise ldap.fail("LDAPBINDDN", "missing: the DN wodmail binds as to change student passwords")
    ldap.dn("LDAPBINDDN", bind_dn)
    bind_password = checked[keys.LDAPBINDPW]
    if bind_password is None:
        raise ldap.fail("LDAPBINDPW", "missing: the password of LDAPBINDDN")

    start_tls = checked[keys.LDAPSTARTTLS]
    if start_tls and (endpoint.ssl or endpoint.ipc):
        raise ldap.fail("LDAPSTARTTLS", "StartTLS is for ldap:// URLs (ldaps:// is TLS already, ldapi:// is local)")
    ca_file = checked[keys.LDAPCAFILE]
    if ca_file is not None:
        if not (endpoint.ssl or start_tls):
            raise ldap.fail("LDAPCAFILE", "set, but the connection uses no TLS (use ldaps:// or LDAPSTARTTLS: true)")
        import ssl

        try:
            ssl.create_default_context(cafile=str(ca_file))
        except FileNotFoundError:
            raise ldap.fail("LDAPCAFILE", f"{ca_file} does not exist") from None
        except (OSError, ssl.SSLError) as exc:
            raise ldap.fail("LDAPCAFILE", f"{ca_file} is not a readable PEM CA file ({type(exc).__name__})") from None

    strings = _string_values(values)
    user_dn = Pattern(checked[keys.LDAPUSERDN], strings, dn=True)
    ldap.placeholders("LDAPUSERDN", user_dn)
    if not any(name in _PER_STUDENT for name, _ in user_dn.names()):
        raise ldap.fail("LDAPUSERDN", "names no student: put {stdid}, {student} or {dbid} in it")
    if "LDAPDMN" in strings and any(name == "LDAPDMN" for name, _ in user_dn.names()):
        ldap.dn("LDAPDMN", strings["LDAPDMN"])
    ldap.dn("LDAPUSERDN", user_dn.fill(student_min, base_stdid, neutral=True))

    entry_template = None
    if checked[keys.LDAPCREATEMISSING]:
        template_file = checked[keys.LDAPENTRYTEMPLATE]
        if template_file is None:
            raise ldap.fail("LDAPENTRYTEMPLATE", "missing: LDAPCREATEMISSING needs the attributes of a new entry")
        entry_template = _read_entry_template(template_file, strings, ldap)

    return LdapSettings(
        endpoint=endpoint,
        bind_dn=bind_dn,
        bind_password=bind_password,
        start_tls=start_tls,
        ca_file=ca_file,
        user_dn=user_dn,
        base_stdid=base_stdid,
        scheme=ldap.scheme(),
        connections=checked[keys.LDAPCONNECTIONS],
        timeout=checked[keys.LDAPTIMEOUT],
        entry_template=entry_template,
    )


def _read_entry_template(path: Path, values: Mapping[str, str], ldap: _LdapKeys) -> tuple[tuple[str, Pattern], ...]:
    """The `attribute: value` lines of an entry template (LDIF style: folded lines, # comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ldap.fail("LDAPENTRYTEMPLATE", f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ldap.fail("LDAPENTRYTEMPLATE", f"cannot read {path} ({type(exc).__name__})") from None
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
            ldap.placeholders("LDAPENTRYTEMPLATE", pattern)
        except ConfigError as exc:
            raise fail(exc.reason) from None
        attributes.append((name, pattern))
    if not any(name.lower() == "objectclass" for name, _ in attributes):
        raise ConfigError(path, None, "the template names no objectClass")
    return tuple(attributes)
