"""Every key wodmail reads from a location file: its type, its default, and what it is for.

This table is the one place a key is declared. `load_location` checks every key of it once
(`read_keys`), in this order, before anything starts; the modules get typed settings built
from it (wodmail.location.parts) and never read a raw key. A path is relative to the
location file's folder (~ is expanded, ".." folded away). Any key not listed here is a free
key: it goes to the templates as it is (`Location.values`).
"""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from wodmail import resources
from wodmail.location.checks import (
    Check,
    Checked,
    Choice,
    Integer,
    Key,
    KeyReader,
    Network,
    Networks,
    PathValue,
    Seconds,
    Url,
    flag,
    free,
    mode,
    names,
    owner,
    secrets,
    senders,
    text,
    users,
)

MAX_STDID = 999_999_999  # a command mail's student id has at most 9 digits
LOOPBACK: tuple[Network, ...] = (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
CATALOG_POLICIES = ("active", "listed")
"""CATALOGWORKSHOPS: serve the active catalog workshops too (default), or only listed ones."""
ACCOUNT_MODES = ("none", "unix")
"""ACCOUNTS: `none` (the default: wodmail leaves host accounts alone) or `unix` (student{N}'s
password is set in /etc/shadow on every verb, the hub logs students in through PAM)."""
HASH_SCHEMES = ("system", "yescrypt", "sha512")
"""ACCOUNTHASH: the shadow hash's scheme; `system`: what pam_unix uses (/etc/pam.d/common-password,
else ENCRYPT_METHOD of /etc/login.defs)."""
SSH_KEY_TYPES = ("none", "ed25519", "ecdsa", "rsa")
"""ACCOUNTSSHKEY: the key pair made for the student on every erase of the home (none: no key)."""
DEFAULT_USER_DN = "uid=student{stdid},ou=People,{LDAPDMN}"
"""LDAPUSERDN when the location gives none."""
_MAX_ID = 2**31 - 2
UID_MIN_DEFAULT, UID_MAX_DEFAULT = 1000, 60000
"""ACCOUNTUIDMIN and ACCOUNTUIDMAX when neither the location nor /etc/login.defs give them."""

KEYS: list[Key[Any]] = []
"""Every declared key, in the order they are checked."""


def _key(
    name: str,
    check: Check[Any],
    default: Any = None,
    doc: str = "",
    *,
    required: str | None = None,
    fallback: Any = None,
) -> Key[Any]:
    key: Key[Any] = Key(name, check, default, doc, required, fallback)
    KEYS.append(key)
    return key


def login_defs(text: str | None = None) -> dict[str, str]:
    """The KEY VALUE settings of /etc/login.defs (or `text`); empty when it cannot be read."""
    if text is None:
        try:
            text = Path("/etc/login.defs").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#"):
            found[parts[0]] = parts[1]
    return found


def _uid_default(name: str, otherwise: int) -> int:
    value = login_defs().get(name, "")
    return int(value) if value.isdigit() else otherwise


_SECONDS = Seconds()  # more than 0
_COUNT = Integer(1)
_HTTP = ("http://", "https://")

# --- the doors -----------------------------------------------------------------------------
SMTPHOST: Key[str] = _key("SMTPHOST", text, "127.0.0.1", "the address both listeners bind to")
SMTPPORT: Key[int] = _key("SMTPPORT", Integer(0, 65535), 8025, "strict, standard SMTP")
LEGACYPORT: Key[int | None] = _key("LEGACYPORT", Integer(0, 65535), None, "the legacy client's door; absent: closed")
LEGACYPEERS: Key[tuple[tuple[Network, ...], bool]] = _key(
    "LEGACYPEERS", Networks(allow_local=False), (LOOPBACK, False), "who may talk to LEGACYPORT"
)
TRUSTEDPEERS: Key[tuple[tuple[Network, ...], bool]] = _key(
    "TRUSTEDPEERS", Networks(allow_local=True), (LOOPBACK, True), "who may send unsigned commands; `local`: deliver"
)
TRUSTEDSENDERS: Key[tuple[str, ...]] = _key("TRUSTEDSENDERS", senders, (), "empty: any sender from a trusted peer")
LOCALPEERUSERS: Key[frozenset[int]] = _key(
    "LOCALPEERUSERS",
    users,
    doc="whose connections from this host count as from their address (default: root and wodmail's user)",
    fallback=lambda: frozenset({0, os.geteuid()}),
)
SIGNINGKEYS: Key[tuple[str, ...]] = _key("SIGNINGKEYS", secrets, (), "keys of signed commands (env: or file: only)")
SIGNATUREWINDOW: Key[int] = _key(
    "SIGNATUREWINDOW", Integer(30, 86400, unit=" (seconds)"), 300, "seconds a signature stays valid"
)
SMTPIDLETIMEOUT: Key[float] = _key("SMTPIDLETIMEOUT", _SECONDS, 60.0, "seconds between two commands, and for DATA")
SMTPSESSIONTIMEOUT: Key[float] = _key("SMTPSESSIONTIMEOUT", _SECONDS, 300.0, "seconds a connection may last")
SMTPMAXCOMMANDS: Key[int] = _key("SMTPMAXCOMMANDS", _COUNT, 100, "times each SMTP command may be given")
SMTPMAXRECIPIENTS: Key[int] = _key("SMTPMAXRECIPIENTS", _COUNT, 10, "recipients per transaction")
SMTPPEERCONNECTIONS: Key[int] = _key("SMTPPEERCONNECTIONS", _COUNT, 20, "connections per address outside TRUSTEDPEERS")
SMTPTLSCERT: Key[Path | None] = _key("SMTPTLSCERT", PathValue("file"), None, "STARTTLS's certificate (PEM)")
SMTPTLSKEY: Key[Path | None] = _key("SMTPTLSKEY", PathValue("file"), None, "its key, if not in the certificate file")
SMTPAUTHFILE: Key[Path | None] = _key("SMTPAUTHFILE", PathValue("file"), None, "user:hash lines for SMTP AUTH")
LEGACYIDLETIMEOUT: Key[float] = _key("LEGACYIDLETIMEOUT", _SECONDS, 10.0, "seconds without a byte (legacy door)")
LEGACYSESSIONTIMEOUT: Key[float] = _key("LEGACYSESSIONTIMEOUT", _SECONDS, 60.0, "seconds a legacy connection may last")
LEGACYPEERCONNECTIONS: Key[int] = _key("LEGACYPEERCONNECTIONS", _COUNT, 50, "legacy connections per address")
MAXCONNECTIONS: Key[int] = _key("MAXCONNECTIONS", _COUNT, 1000, "connections of both doors together")
RESERVEDCONNECTIONS: Key[int] = _key("RESERVEDCONNECTIONS", _COUNT, 100, "of those, kept for trusted peers")
MAXMESSAGESIZE: Key[int] = _key("MAXMESSAGESIZE", Integer(1), 65536, "bytes; a larger mail is refused")

# --- where things live ---------------------------------------------------------------------
STATEDIR: Key[Path] = _key(
    "STATEDIR", PathValue(), required="the folder where wodmail keeps its queue and records", doc="queue, records"
)
STUDENTDIR: Key[Path] = _key(
    "STUDENTDIR", PathValue(), required="the folder that holds the student homes", doc="STUDENTDIR/student{N}"
)
WORKSHOPDIR: Key[Path] = _key(
    "WORKSHOPDIR",
    PathValue("dir"),
    required="the folder that holds one folder per workshop",
    doc="the catalog",
)
PLAYBOOKDIR: Key[Path] = _key(
    "PLAYBOOKDIR",
    PathValue(),
    doc="hooks by convention: PLAYBOOKDIR/WKSHP-Name/<verb>.yml (default: the shipped playbooks)",
    fallback=lambda: resources.product_path("playbooks"),
)
SKELDIR: Key[Path | None] = _key("SKELDIR", PathValue("dir"), None, "copied into a fresh home")
WORKSHOPS: Key[Path | None] = _key(
    "WORKSHOPS",
    PathValue("file", "the workshops file {path} does not exist"),
    None,
    "the workshops file (absent: workshops.yaml beside the location, if it exists)",
)
VARDIR: Key[Path | None] = _key("VARDIR", PathValue("dir"), None, "variables_<NAME>.yml files")
VARPRIVDIR: Key[Path | None] = _key("VARPRIVDIR", PathValue("dir"), None, "private ones, overriding VARDIR's")
VAULTPWD: Key[str | None] = _key("VAULTPWD", text, None, "decrypts their ansible-vault values")
TEMPLATEOPTIONAL: Key[tuple[str, ...]] = _key("TEMPLATEOPTIONAL", names, (), "variables a template may leave undefined")
CATALOGWORKSHOPS: Key[str] = _key("CATALOGWORKSHOPS", Choice(CATALOG_POLICIES), "active", "serve active wod.yml too")
CATALOGLOCATION: Key[tuple[str, ...]] = _key("CATALOGLOCATION", names, (), "serve only wod.yml for these sites")
HOMEOWNER: Key[str] = _key("HOMEOWNER", owner, "student", "owner of a home: student, none or UID:GID")
HOMEMODE: Key[int] = _key("HOMEMODE", mode, 0o750, 'the home folder\'s mode, in quotes ("0750")')
JOBKEEPDAYS: Key[int] = _key("JOBKEEPDAYS", Integer(1, 36500), 30, "days done jobs are kept")
REFUSEDKEEPDAYS: Key[int] = _key("REFUSEDKEEPDAYS", Integer(1, 36500), 7, "days refused mails are kept")
FREESPACEFLOOR: Key[int] = _key("FREESPACEFLOOR", Integer(0), 64, "MiB free on STATEDIR below which doors answer 451")

# --- students and jobs ---------------------------------------------------------------------
STUDENTMIN: Key[int] = _key("STUDENTMIN", Integer(0, MAX_STDID), 1, "the lowest student number on this host")
STUDENTMAX: Key[int] = _key(
    "STUDENTMAX", Integer(0, MAX_STDID), required="the highest student number on this host", doc="the highest"
)
BASESTDID: Key[int] = _key("BASESTDID", Integer(0), 0, "the app's id of student N is N + BASESTDID")
WORKERS: Key[int] = _key("WORKERS", Integer(1, 256), 64, "jobs run in parallel")
HOOKSLOTS: Key[int | None] = _key(
    "HOOKSLOTS", Integer(1, 256), None, "scripts, playbooks and shc runs at once; absent: one per core"
)
RETRYFOR: Key[float] = _key("RETRYFOR", _SECONDS, 900.0, "seconds a job retries a transient failure")
RETRYBACKOFFMAX: Key[float] = _key("RETRYBACKOFFMAX", _SECONDS, 300.0, "longest wait between two tries of a job")
CALLBACKBACKOFFMAX: Key[float] = _key("CALLBACKBACKOFFMAX", _SECONDS, 300.0, "longest wait between callback tries")
JOBSNICE: Key[int] = _key("JOBSNICE", Integer(0, 19), 10, "how much lower the jobs process's CPU priority is")

# --- the registration app and JupyterHub ----------------------------------------------------
APIENDPOINT: Key[str | None] = _key("APIENDPOINT", Url(_HTTP), None, "the registration app's API; absent: no callbacks")
APIUSER: Key[str | None] = _key("APIUSER", text, None, "its login")
APIPWD: Key[str | None] = _key("APIPWD", text, None, "its password (a secret)")
JPHUBAPISRV: Key[str | None] = _key("JPHUBAPISRV", Url(_HTTP), None, "JupyterHub's API; absent: no hub calls")
JPHUBTOKEN: Key[str | None] = _key("JPHUBTOKEN", text, None, "its token (a secret)")
HUBSPAWNTIMEOUT: Key[float] = _key("HUBSPAWNTIMEOUT", Seconds(0.1, inclusive=True), 60.0, "seconds a server may take")
HUBCREATEUSERS: Key[bool] = _key("HUBCREATEUSERS", flag, False, "create a student the hub does not know")
HUBTHROTTLEWAIT: Key[float] = _key("HUBTHROTTLEWAIT", Seconds(0, inclusive=True), 120.0, "seconds to wait when busy")
JPHOSTEXT: Key[object] = _key("JPHOSTEXT", free, None, "the hub's public name: the app's backend (workshops sync)")
JPHOST: Key[object] = _key("JPHOST", free, None, "the hub's host name: the app's backend, else")

# --- the app's deadline (wodmail.appdeadline) and relaying its mails (wodmail.relay) ---------
_RELAY_HOST = re.compile(r"\[([^\]\s]+)\](?::([0-9]{1,5}))?|([^:\[\]\s/]+)(?::([0-9]{1,5}))?")


def _relay_host(reader: KeyReader, key: str, value: object) -> tuple[str, int]:
    """host, host:port, [host]:port or [IPv6]:port (Postfix's relayhost style); port 25 if none."""
    match = _RELAY_HOST.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        reader.fail(key, f"expected host:port (e.g. 127.0.0.1:25 or [::1]:25), found {reader.shown(key, value)}")
    port = int(match[2] or match[4] or 25)
    if not 0 < port < 65536:
        reader.fail(key, f"port {port} is not a TCP port")
    return match[1] or match[3], port


APPDEADLINE: Key[float] = _key(
    "APPDEADLINE", _SECONDS, 600.0, "seconds after its arrival a CREATE must be done by (the app then gives up)"
)
RELAYHOST: Key[tuple[str, int] | None] = _key(
    "RELAYHOST", _relay_host, None, "the MTA the app's mails for people go to; absent: not relayed"
)
RELAYBACKOFFMAX: Key[float] = _key("RELAYBACKOFFMAX", _SECONDS, 300.0, "longest wait between two tries of a mail")


def _reply_from(reader: KeyReader, key: str, value: object) -> str:
    """One mail address (local@domain: no name, no space, no angle bracket)."""
    address = value.strip() if isinstance(value, str) else ""
    local, at, domain = address.rpartition("@")
    if not (local and at and "." in domain) or any(ch.isspace() or ch in '<>"(),;:' for ch in address):
        reader.fail(key, f"expected one mail address (e.g. wodmail@example.com), found {reader.shown(key, value)}")
    return address


REPLYFROM: Key[str | None] = _key(
    "REPLYFROM", _reply_from, None, "the From address of replies; absent: wodmail@ this host's name"
)

# --- metrics and the status page (wodmail.metrics, wodmail.statuspage) ----------------------
METRICSPORT: Key[int | None] = _key(
    "METRICSPORT", Integer(0, 65535), None, "Prometheus metrics and the status page; absent: off"
)
METRICSHOST: Key[str] = _key("METRICSHOST", text, "127.0.0.1", "the address the metrics port binds to")
METRICSTOKEN: Key[str | None] = _key(
    "METRICSTOKEN", text, None, "a bearer token that lets anyone in (without: root and wodmail's user on loopback)"
)

# --- LDAP (wodmail.location.ldap) -----------------------------------------------------------
LDAPURI: Key[str | None] = _key(
    "LDAPURI", Url(("ldap://", "ldaps://", "ldapi://")), None, "the LDAP server; absent: no LDAP"
)
LDAPBINDDN: Key[str | None] = _key("LDAPBINDDN", text, None, "the DN wodmail binds as")
LDAPBINDPW: Key[str | None] = _key("LDAPBINDPW", text, None, "its password (a secret)")
LDAPSTARTTLS: Key[bool] = _key("LDAPSTARTTLS", flag, False, "StartTLS on an ldap:// connection")
LDAPCAFILE: Key[Path | None] = _key("LDAPCAFILE", PathValue(), None, "the CA of the server's certificate (PEM)")
LDAPUSERDN: Key[str] = _key("LDAPUSERDN", text, DEFAULT_USER_DN, "the student's DN, with {placeholders}")
LDAPHASH: Key[str] = _key("LDAPHASH", text, "{SSHA}", "{SSHA}, {SMD5} or {CRYPT}")
LDAPCONNECTIONS: Key[int] = _key(
    "LDAPCONNECTIONS", Integer(1, 64, expected="an integer from 1 to 64"), 4, "connections kept open"
)
LDAPTIMEOUT: Key[int] = _key(
    "LDAPTIMEOUT", Integer(1, 600, expected="an integer from 1 to 600"), 10, "seconds to connect and per answer"
)
LDAPCREATEMISSING: Key[bool] = _key("LDAPCREATEMISSING", flag, False, "create a missing student entry")
LDAPENTRYTEMPLATE: Key[Path | None] = _key("LDAPENTRYTEMPLATE", PathValue(), None, "a new entry's attributes (LDIF)")

# --- host accounts (wodmail.location.accounts) ----------------------------------------------
ACCOUNTS: Key[str] = _key("ACCOUNTS", Choice(ACCOUNT_MODES), "none", "unix: set student{N}'s password in /etc/shadow")
ACCOUNTHASH: Key[str] = _key("ACCOUNTHASH", Choice(HASH_SCHEMES), "system", "the shadow hash's scheme")
ACCOUNTHASHCOST: Key[int | None] = _key(
    "ACCOUNTHASHCOST", Integer(1, 999_999_999), None, "yescrypt's cost or sha512 rounds; absent: cheap (see the README)"
)
ACCOUNTCREATE: Key[bool] = _key("ACCOUNTCREATE", flag, False, "create a missing student{N}")
ACCOUNTUIDMIN: Key[int] = _key(
    "ACCOUNTUIDMIN",
    Integer(1, _MAX_ID),
    doc="the lowest uid of a student account (default: UID_MIN of login.defs, else 1000)",
    fallback=lambda: _uid_default("UID_MIN", UID_MIN_DEFAULT),
)
ACCOUNTUIDMAX: Key[int] = _key(
    "ACCOUNTUIDMAX",
    Integer(1, _MAX_ID),
    doc="the highest (default: UID_MAX of login.defs, else 60000)",
    fallback=lambda: _uid_default("UID_MAX", UID_MAX_DEFAULT),
)
ACCOUNTUIDBASE: Key[int | None] = _key("ACCOUNTUIDBASE", Integer(0, _MAX_ID), None, "student{N} has uid N + this")
ACCOUNTGIDBASE: Key[int | None] = _key("ACCOUNTGIDBASE", Integer(0, _MAX_ID), None, "its own group has gid N + this")
ACCOUNTSHELL: Key[str] = _key("ACCOUNTSHELL", text, "/bin/bash", "a created account's shell")
ACCOUNTGROUPS: Key[tuple[str, ...]] = _key("ACCOUNTGROUPS", names, (), "its supplementary groups")
ACCOUNTSSHKEY: Key[str] = _key("ACCOUNTSSHKEY", Choice(SSH_KEY_TYPES), "none", "a key pair made on every erase")
HOMEACL: Key[tuple[str, ...]] = _key("HOMEACL", names, (), "ACL entries on every fresh home (u:NAME:rwx)")

# --- workshop scripts (wodmail.scripts) -----------------------------------------------------
SCRIPTDIR: Key[Path | None] = _key(
    "SCRIPTDIR", PathValue("dir"), None, "public workshop scripts (create-WKSHP-Name.sh): the original's WODSCRIPTDIR"
)
SCRIPTPRIVDIR: Key[Path | None] = _key(
    "SCRIPTPRIVDIR", PathValue("dir"), None, "private ones, run after the public one: the original's WODSCRIPTPRIVDIR"
)
SCRIPTTIMEOUT: Key[float] = _key("SCRIPTTIMEOUT", _SECONDS, 300.0, "seconds a workshop script may run")


# --- deploying a workshop as the original backend did (wodmail.copysteps, wodmail.notebooks) ---
COPY_STEPS = ("workspace", "checkpoint", "pdfscript")
"""COPYSTEPS: the original backend's extra files a deployment makes (wodmail.copysteps)."""
COMPLETION_METHODS = ("cells", "original")
"""COMPLETION: executed code cells of every notebook (wodmail's), or the original's line count."""


def _copy_steps(reader: KeyReader, key: str, value: object) -> tuple[str, ...]:
    chosen = names(reader, key, value)
    for name in chosen:
        if name not in COPY_STEPS:
            reader.fail(key, f"unknown copy step {reader.shown(key, name)} (known: {', '.join(COPY_STEPS)})")
    return chosen


WORKSHOPPRIVDIR: Key[Path | None] = _key(
    "WORKSHOPPRIVDIR",
    PathValue("dir"),
    None,
    "the private catalog: a workshop WORKSHOPDIR has no folder for is deployed from here (WODPRIVNOBO)",
)
COPYSTEPS: Key[tuple[str, ...]] = _key(
    "COPYSTEPS", _copy_steps, (), "the original's extra files: workspace, checkpoint, pdfscript (default none)"
)
PDFSCRIPT: Key[Path] = _key(
    "PDFSCRIPT",
    PathValue("file"),
    doc="what COPYSTEPS' pdfscript copies as wod-generate-pdf.sh (default: the shipped one)",
    fallback=lambda: resources.product_path("templates") / "wod-generate-pdf.sh",
)
PRETEMPLATING: Key[Path | None] = _key(
    "PRETEMPLATING", PathValue("file"), None, "Ansible tasks run before a workshop is deployed (pre_templating.yml)"
)
POSTTEMPLATING: Key[Path | None] = _key(
    "POSTTEMPLATING", PathValue("file"), None, "Ansible tasks run after it is deployed (post_templating.yml)"
)
COMPLETION: Key[str] = _key(
    "COMPLETION", Choice(COMPLETION_METHODS), "cells", "cells (executed code cells) or original (its line count)"
)

# --- the original backend's settings files (wodmail.location.original) ----------------------
WODCONFIG: Key[tuple[str, ...]] = _key(
    "WODCONFIG", names, (), "the original's settings files (/etc/wod.sh, group variables, ...), read in order"
)


def read_keys(reader: KeyReader) -> Checked:
    """Every declared key of the location, checked once and typed (ConfigError on the first mistake)."""
    return Checked(reader, tuple(KEYS))
