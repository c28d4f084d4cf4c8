"""The typed parts of a location: one frozen record per part (`location.smtp`,
`location.hub`, `location.jobs`, ...), each default from its key (wodmail.location.keys), and
the builders of the parts whose keys are checked together. Every mistake is a `ConfigError`
"file: KEY: reason"."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType

from wodmail.location import keys as key_table
from wodmail.location.checks import Checked, KeyReader
from wodmail.location.workshops import Workshop

SIGNING_KEYS_MAX = 2
"""SIGNINGKEYS: the current key, and the next one during a rotation."""
SIGNING_KEY_MIN_LENGTH = 32
"""Characters a signing key has at least."""
METRICS_TOKEN_MIN_LENGTH = 16
"""Characters METRICSTOKEN has at least."""


@dataclass(frozen=True)
class SmtpSettings:
    """The standard door (SMTPPORT): caps on a connection and a peer, STARTTLS, SMTP AUTH."""

    idle_timeout: float = key_table.SMTPIDLETIMEOUT.standard
    session_timeout: float = key_table.SMTPSESSIONTIMEOUT.standard
    max_commands: int = key_table.SMTPMAXCOMMANDS.standard
    max_recipients: int = key_table.SMTPMAXRECIPIENTS.standard
    peer_connections: int = key_table.SMTPPEERCONNECTIONS.standard
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_file: Path | None = None


@dataclass(frozen=True)
class LegacySettings:
    """The legacy door (LEGACYPORT): its time caps and connections per address."""

    idle_timeout: float = key_table.LEGACYIDLETIMEOUT.standard
    session_timeout: float = key_table.LEGACYSESSIONTIMEOUT.standard
    peer_connections: int = key_table.LEGACYPEERCONNECTIONS.standard


@dataclass(frozen=True)
class ConnectionSettings:
    """Connections of both doors together, and how many are kept for trusted peers."""

    total: int = key_table.MAXCONNECTIONS.standard
    reserved: int = key_table.RESERVEDCONNECTIONS.standard


@dataclass(frozen=True)
class HubSettings:
    """JupyterHub's API; `url` None: no hub calls."""

    url: str | None = None
    token: str | None = field(default=None, repr=False)
    spawn_timeout: float = key_table.HUBSPAWNTIMEOUT.standard
    create_users: bool = key_table.HUBCREATEUSERS.standard
    throttle_wait: float = key_table.HUBTHROTTLEWAIT.standard


@dataclass(frozen=True)
class JobSettings:
    """How jobs and callbacks are retried, and the jobs process's CPU priority."""

    retry_for: float = key_table.RETRYFOR.standard
    retry_backoff_max: float = key_table.RETRYBACKOFFMAX.standard
    callback_backoff_max: float = key_table.CALLBACKBACKOFFMAX.standard
    nice: int = key_table.JOBSNICE.standard
    app_deadline: float = key_table.APPDEADLINE.standard
    """APPDEADLINE: seconds after its arrival a CREATE must be done by (wodmail.appdeadline)."""
    hook_slots: int = os.cpu_count() or 1
    """HOOKSLOTS: how many workshop scripts, playbooks and shc runs go at once (the other steps of
    the WORKERS jobs go on meanwhile); default one per core."""


@dataclass(frozen=True)
class RelaySettings:
    """RELAYHOST: the MTA the app's mails for people are passed to (wodmail.relay); `host`
    None: such mails are refused as any mail that is not a command."""

    host: str | None = None
    port: int = 25
    backoff_max: float = key_table.RELAYBACKOFFMAX.standard
    reply_from: str | None = None
    """REPLYFROM: the replies' From address (None: wodmail@ this host's name)."""

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if self.host and ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MetricsSettings:
    """METRICSPORT: Prometheus metrics and the status page (wodmail.metrics); `port` None: off.
    Root and wodmail's user (LOCALPEERUSERS) may ask from loopback; anyone with `token`
    (METRICSTOKEN) as a bearer token."""

    port: int | None = None
    host: str = key_table.METRICSHOST.standard
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HomeSettings:
    """Who owns a student's home and its files (student, none or UID:GID), and its mode."""

    owner: str = key_table.HOMEOWNER.standard
    mode: int = key_table.HOMEMODE.standard


@dataclass(frozen=True)
class DeploySettings:
    """How a workshop is deployed beyond its own files, as the original backend did: its
    extra files (COPYSTEPS, PDFSCRIPT: wodmail.copysteps), its private catalog
    (WORKSHOPPRIVDIR), its pre- and post-templating tasks (PRETEMPLATING, POSTTEMPLATING),
    and how CLEANUP counts the completion (COMPLETION: wodmail.notebooks)."""

    copy_steps: tuple[str, ...] = ()
    pdf_script: Path | None = None
    private_workshop_dir: Path | None = None
    pre_templating: Path | None = None
    post_templating: Path | None = None
    completion: str = key_table.COMPLETION.standard


@dataclass(frozen=True)
class SigningSettings:
    """SIGNINGKEYS (checked: given as secrets, long enough, distinct) and SIGNATUREWINDOW."""

    keys: tuple[str, ...] = field(default=(), repr=False)
    window: int = key_table.SIGNATUREWINDOW.standard


@dataclass(frozen=True)
class ScriptSettings:
    """The site's workshop scripts (SCRIPTDIR, SCRIPTPRIVDIR, SCRIPTTIMEOUT: wodmail.scripts)
    and the base addresses of its served appliance workshops (the free keys IP-<workshop>)."""

    public_dir: Path | None = None
    private_dir: Path | None = None
    timeout: float = key_table.SCRIPTTIMEOUT.standard
    appliance_ips: Mapping[str, IPv4Address] = field(default_factory=lambda: MappingProxyType({}))
    """Per served mono- or multi-appliance workshop, its base address (checked when a script
    folder is set)."""


def smtp_settings(checked: Checked) -> SmtpSettings:
    """The standard door's part: STARTTLS and SMTP AUTH checked together."""
    cert, key = checked[key_table.SMTPTLSCERT], checked[key_table.SMTPTLSKEY]
    auth_file = checked[key_table.SMTPAUTHFILE]
    if key is not None and cert is None:
        checked.fail(key_table.SMTPTLSKEY, "given without SMTPTLSCERT")
    if auth_file is not None and cert is None:
        checked.fail(key_table.SMTPAUTHFILE, "SMTP AUTH needs STARTTLS: set SMTPTLSCERT (AUTH in clear is refused)")
    return SmtpSettings(
        idle_timeout=checked[key_table.SMTPIDLETIMEOUT],
        session_timeout=checked[key_table.SMTPSESSIONTIMEOUT],
        max_commands=checked[key_table.SMTPMAXCOMMANDS],
        max_recipients=checked[key_table.SMTPMAXRECIPIENTS],
        peer_connections=checked[key_table.SMTPPEERCONNECTIONS],
        tls_cert=cert,
        tls_key=key,
        auth_file=auth_file,
    )


def script_settings(checked: Checked, served: Mapping[str, Workshop]) -> ScriptSettings:
    """The script folders, and with one of them set, every served appliance workshop's base
    address: the free key IP-<workshop>, as the original's group variables named it."""
    public, private = checked[key_table.SCRIPTDIR], checked[key_table.SCRIPTPRIVDIR]
    addresses: dict[str, IPv4Address] = {}
    if public is not None or private is not None:
        for workshop in served.values():
            if workshop.monoappliance or workshop.multiappliance:
                addresses[workshop.name] = _appliance_ip(checked.reader, workshop)
    return ScriptSettings(public, private, checked[key_table.SCRIPTTIMEOUT], MappingProxyType(addresses))


def _appliance_ip(reader: KeyReader, workshop: Workshop) -> IPv4Address:
    key = f"IP-{workshop.name}"
    kind = "multiappliance" if workshop.multiappliance else "monoappliance"
    value = reader.values.get(key)
    if value is None or str(value).strip() in ("", "x.y.z.t"):
        reader.fail(key, f"missing: {workshop.name} is a {kind} workshop, its scripts get WODRTARGET from this key")
    try:
        base = IPv4Address(str(value).strip())
    except ValueError:
        reader.fail(key, f"expected the appliance's IPv4 address, found {reader.shown(key, value)}")
    if workshop.multiappliance:
        last_octet = int(base) % 256 + workshop.last - workshop.first
        if last_octet > 255:
            reader.fail(
                key,
                f"{workshop.name}'s students {workshop.first}..{workshop.last} would need appliances up to"
                f" .{last_octet}, past .255 (one address per student from {base})",
            )
    return base


def relay_settings(checked: Checked) -> RelaySettings:
    """RELAYHOST (host and port), RELAYBACKOFFMAX and REPLYFROM."""
    relay_host = checked[key_table.RELAYHOST]
    backoff_max, reply_from = checked[key_table.RELAYBACKOFFMAX], checked[key_table.REPLYFROM]
    if relay_host is None:
        return RelaySettings(backoff_max=backoff_max, reply_from=reply_from)
    return RelaySettings(relay_host[0], relay_host[1], backoff_max, reply_from)


def metrics_settings(checked: Checked, smtp_port: int, legacy_port: int | None) -> MetricsSettings:
    """METRICSPORT (not a door's port), METRICSHOST and METRICSTOKEN (long enough)."""
    port, token = checked[key_table.METRICSPORT], checked[key_table.METRICSTOKEN]
    if port and port in (smtp_port, legacy_port):
        checked.fail(key_table.METRICSPORT, f"the metrics port cannot share a door's port {port}")
    if token is not None and len(token) < METRICS_TOKEN_MIN_LENGTH:
        checked.fail(
            key_table.METRICSTOKEN,
            f"{len(token)} characters: a token needs at least {METRICS_TOKEN_MIN_LENGTH}"
            " (make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
    return MetricsSettings(port, checked[key_table.METRICSHOST], token)


def signing_keys(checked: Checked) -> tuple[str, ...]:
    """SIGNINGKEYS: at most two, each given as a secret (env: or file:, maybe through a
    reference), never in clear: a key in the location file would be in every copy of it."""
    given = checked[key_table.SIGNINGKEYS]
    if len(given) > SIGNING_KEYS_MAX:
        checked.fail(
            key_table.SIGNINGKEYS,
            f"{len(given)} keys given: at most {SIGNING_KEYS_MAX} (the current one, and the next during a rotation)",
        )
    secret = checked.reader.secret_items.get(key_table.SIGNINGKEYS.name, ())
    for index in range(1, len(given) + 1):
        if index > len(secret) or not secret[index - 1]:
            checked.fail(key_table.SIGNINGKEYS, f"key {index} is written in clear: give it as env:NAME or file:/path")
    for index, item in enumerate(given, start=1):
        if len(item) < SIGNING_KEY_MIN_LENGTH:
            checked.fail(
                key_table.SIGNINGKEYS,
                f"key {index} has {len(item)} characters: a signing key needs at least {SIGNING_KEY_MIN_LENGTH}"
                " (make one with: python3 -c 'import secrets; print(secrets.token_hex(32))')",
            )
        if item in given[: index - 1]:
            checked.fail(key_table.SIGNINGKEYS, f"key {index} is the same key as an earlier one")
    return given
