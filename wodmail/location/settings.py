"""The whole `Location`, and `build`: it makes the typed parts (wodmail.location.parts) from
the keys checked once (wodmail.location.keys) and checks what involves several keys; every
mistake is a `ConfigError` "file: KEY: reason". Each module takes its part (location.smtp,
location.hub, location.ldap, ...) and never reads a raw key.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import MappingProxyType

from wodmail.location import keys as key_table
from wodmail.location.accounts import AccountSettings, account_settings
from wodmail.location.booking import Booking
from wodmail.location.checks import Checked, KeyReader, Network, items
from wodmail.location.keys import read_keys
from wodmail.location.ldap import LdapSettings, ldap_settings
from wodmail.location.original import OriginalSettings
from wodmail.location.parts import (
    ConnectionSettings,
    DeploySettings,
    HomeSettings,
    HubSettings,
    JobSettings,
    LegacySettings,
    MetricsSettings,
    RelaySettings,
    ScriptSettings,
    SigningSettings,
    SmtpSettings,
    metrics_settings,
    relay_settings,
    script_settings,
    signing_keys,
    smtp_settings,
)
from wodmail.location.references import SECRET_KEYS, Revealed
from wodmail.location.workshops import VARIABLES_FILE, Workshop


@dataclass(frozen=True, kw_only=True)
class Location:
    """One site's configuration, checked: what the daemon needs, and what templates see."""

    file: Path
    """The location file (absolute)."""
    name: str
    """The file's stem, e.g. "local", "production"."""
    values: Mapping[str, object] = field(hash=False, repr=False)
    """Every key of the file, references and secrets resolved; lists as tuples (not in repr:
    it holds the secrets)."""
    workshops: Mapping[str, Workshop] = field(hash=False)
    smtp_host: str
    smtp_port: int
    legacy_port: int | None
    """None: the legacy door is closed."""
    state_dir: Path
    student_dir: Path
    workshop_dir: Path
    playbook_dir: Path
    skel_dir: Path | None
    student_min: int
    student_max: int
    base_stdid: int
    legacy_peers: tuple[Network, ...]
    trusted_peers: tuple[Network, ...]
    trust_local: bool
    """Whether `wodmail deliver` (a pipe from the local MTA) may send unsigned commands: only
    those the MTA received from a trusted address (wodmail.received)."""
    trusted_senders: tuple[str, ...]
    """Lower-cased addresses and "@domain" entries; empty: any sender from a trusted peer."""
    api_endpoint: str | None
    """The registration app's API, no trailing slash; None: no callbacks."""
    api_user: str | None
    api_password: str | None = field(repr=False)
    workers: int
    max_message_size: int
    catalog: Mapping[str, Workshop] = field(hash=False)
    """Every workshop known, served or not: `workshops` plus those of `not_served`."""
    not_served: Mapping[str, str] = field(hash=False)
    """Known workshops this location does not serve, and why ("inactive", ...)."""
    warnings: tuple[str, ...]
    """What is odd but does not stop the daemon, one line each ("file: key: reason")."""
    optional_variables: tuple[str, ...]
    """TEMPLATEOPTIONAL: variables a template may use undefined (they render as "")."""
    var_dir: Path | None
    """VARDIR: the public variable files (variables_<NAME>.yml)."""
    var_priv_dir: Path | None
    """VARPRIVDIR: the private variable files; a key there overrides VARDIR's."""
    vault_password: str | None = field(repr=False)
    """VAULTPWD: decrypts the ansible-vault values of the variable files."""
    job_keep_days: int
    """JOBKEEPDAYS: done jobs (all their callbacks delivered) are kept this many days."""
    refused_keep_days: int
    """REFUSEDKEEPDAYS: refused mails are kept this many days (and capped in number)."""
    free_space_floor: int
    """FREESPACEFLOOR (MiB; bytes here): below this much free space on STATEDIR's
    filesystem the doors answer 451 before writing anything."""
    local_peer_uids: frozenset[int]
    """LOCALPEERUSERS: whose connections from this host (loopback, the host's own addresses)
    count as coming from their address; default root and the user wodmail runs as. Anyone
    else on this host (a student) is never a trusted peer (wodmail.peers)."""
    accounts: AccountSettings
    """ACCOUNTS and the ACCOUNT*/HOMEACL keys: the students' host accounts (wodmail.accounts)."""
    smtp: SmtpSettings
    """The standard door's limits, STARTTLS and SMTP AUTH (wodmail.smtp)."""
    legacy: LegacySettings
    """The legacy door's limits (wodmail.legacy)."""
    connections: ConnectionSettings
    """MAXCONNECTIONS and RESERVEDCONNECTIONS: both doors together (wodmail.admission)."""
    hub: HubSettings
    """JupyterHub's API (wodmail.hub)."""
    jobs: JobSettings
    """Retries, backoff and the jobs process's priority (wodmail.jobs, wodmail.worker)."""
    relay: RelaySettings = field(default_factory=RelaySettings)
    """Where the app's mails for people go, if anywhere (wodmail.relay)."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    """METRICSPORT: metrics and the status page, and who may read them (wodmail.metrics)."""
    homes: HomeSettings
    """Who owns a home, and its mode (wodmail.homes)."""
    deployment: DeploySettings = field(default_factory=DeploySettings)
    """The original backend's copy steps, private catalog, templating tasks and completion
    count (wodmail.workshop, wodmail.copysteps, wodmail.notebooks)."""
    ldap_uri: str | None
    """LDAPURI; None: no LDAP."""
    checked: Checked = field(repr=False, compare=False)
    """Every declared key, typed: what `ldap` and `signing` are built from."""
    workshops_file: Path
    """WORKSHOPS, else workshops.yaml beside the location (read if it exists: a site may serve
    its catalog's wod.yml files alone)."""
    backend_names: tuple[str, ...]
    """JPHOSTEXT and JPHOST as text ("" when absent): how the registration app names this backend."""
    withheld: tuple[str, ...] = field(repr=False)
    """The values of the secret keys (SECRET_KEYS): never in a hook's output or a log."""
    in_clear: tuple[str, ...] = ()
    """The secret keys (SECRET_KEYS) written as they are rather than as env:NAME or
    file:/path: `wodmail check` warns when the file holding them is readable by others."""
    scripts: ScriptSettings = field(default_factory=ScriptSettings)
    """The site's workshop scripts and its appliances (wodmail.scripts)."""
    original: OriginalSettings | None = field(default=None, compare=False)
    """What was read from the original backend's files and names (WODCONFIG, WODUSERMAX ->
    STUDENTMAX, ...: wodmail.location.original), for `wodmail check`; None: nothing."""

    @property
    def hub_url(self) -> str | None:
        """JupyterHub's API server, no trailing slash; None: no JupyterHub calls."""
        return self.hub.url

    @property
    def hub_token(self) -> str | None:
        return self.hub.token

    # The two parts below are checked together when first used (`wodmail check` and `serve`
    # use both before they start): a location with half its LDAP settings, or a signing key
    # too short, still loads for a command that needs neither, as it always did.

    @functools.cached_property
    def ldap(self) -> LdapSettings | None:
        """The LDAP settings, None without LDAPURI (wodmail.directory); ConfigError if wrong."""
        return ldap_settings(self.checked, self.values, self.student_min, self.base_stdid)

    @functools.cached_property
    def signing(self) -> SigningSettings:
        """SIGNINGKEYS and SIGNATUREWINDOW (wodmail.signing); ConfigError if a key is wrong."""
        return SigningSettings(signing_keys(self.checked), self.checked[key_table.SIGNATUREWINDOW])

    def check_parts(self) -> None:
        """Build the parts checked when first used (LDAP, the signing keys): ConfigError if wrong."""
        _ = (self.ldap, self.signing)

    def template_variables(self) -> dict[str, object]:
        """Every key of the location except the secrets (SECRET_KEYS)."""
        return {key: value for key, value in self.values.items() if key not in SECRET_KEYS}

    def peer_is_trusted(self, address: str) -> bool:
        """Whether `address` may send unsigned commands on SMTPPORT (a bad address: no).

        An address on this host is only half the answer: who opened the connection must be
        one of `local_peer_uids` too (the intake asks)."""
        return _address_in(address, self.trusted_peers)

    def peer_is_legacy(self, address: str) -> bool:
        """Whether `address` may use the legacy door (LEGACYPORT)."""
        return _address_in(address, self.legacy_peers)

    def sender_is_trusted(self, sender: str) -> bool:
        """Whether the envelope sender may send unsigned commands (TRUSTEDSENDERS).

        An empty TRUSTEDSENDERS trusts every sender; otherwise the address must be listed,
        or its domain as "@domain". Case does not matter.
        """
        if not self.trusted_senders:
            return True
        address = sender.strip().removeprefix("<").removesuffix(">").strip().lower()
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            return False
        return address in self.trusted_senders or "@" + domain in self.trusted_senders

    def workshop(self, name: str) -> Workshop | None:
        """The workshop served under `name`, or None."""
        return self.workshops.get(name)

    def variable_files(self, name: str) -> tuple[Path, ...]:
        """Where workshop `name`'s variable files may be, VARDIR's first, then VARPRIVDIR's."""
        file = VARIABLES_FILE.format(name=name)
        return tuple(folder / file for folder in (self.var_dir, self.var_priv_dir) if folder is not None)

    def student_home(self, stdid: int) -> Path:
        """The home folder of student `stdid`: STUDENTDIR/student{stdid}."""
        return self.student_dir / f"student{stdid}"


def build(path: Path, revealed: Revealed, original: OriginalSettings | None = None) -> Location:
    """Check every key once, then what involves several, then the workshops: the `Location`."""
    values = revealed.values
    checked = read_keys(KeyReader(path, values, revealed.hidden, revealed.secret_items))
    smtp_port = checked[key_table.SMTPPORT]
    legacy_port = checked[key_table.LEGACYPORT]
    if legacy_port and legacy_port == smtp_port:
        checked.fail(key_table.LEGACYPORT, f"the legacy door cannot share SMTPPORT {smtp_port}")
    student_min, student_max = checked[key_table.STUDENTMIN], checked[key_table.STUDENTMAX]
    if student_max < student_min:
        checked.fail(key_table.STUDENTMAX, f"{student_max} is below STUDENTMIN {student_min}")
    api_endpoint = checked[key_table.APIENDPOINT]
    if api_endpoint is not None:
        if checked[key_table.APIUSER] is None:
            checked.fail(key_table.APIUSER, "missing: APIENDPOINT is set, and the app's login needs a user")
        if checked[key_table.APIPWD] is None:
            checked.fail(key_table.APIPWD, "missing: APIENDPOINT is set, and the app's login needs a password")
    if checked[key_table.JPHUBAPISRV] is not None and checked[key_table.JPHUBTOKEN] is None:
        checked.fail(key_table.JPHUBTOKEN, "missing: JPHUBAPISRV is set, and JupyterHub's API needs a token")
    total, reserved = checked[key_table.MAXCONNECTIONS], checked[key_table.RESERVEDCONNECTIONS]
    if reserved >= total:
        checked.fail(key_table.RESERVEDCONNECTIONS, f"must be less than MAXCONNECTIONS ({total})")
    smtp = smtp_settings(checked)
    base_stdid = checked[key_table.BASESTDID]
    ldap_uri = checked[key_table.LDAPURI]
    accounts = account_settings(checked, student_min, student_max)
    homes = HomeSettings(checked[key_table.HOMEOWNER], checked[key_table.HOMEMODE])
    if accounts.ssh_key != "none" and homes.owner != "student":
        checked.fail(key_table.ACCOUNTSSHKEY, "the key belongs to the student: needs HOMEOWNER student")

    var_dir, var_priv_dir = checked[key_table.VARDIR], checked[key_table.VARPRIVDIR]
    workshops_file = checked[key_table.WORKSHOPS] or path.parent / "workshops.yaml"
    sites: tuple[str, ...] = checked[key_table.CATALOGLOCATION]
    booked = Booking(
        workshops_file=workshops_file,
        workshop_dir=checked[key_table.WORKSHOPDIR],
        playbook_dir=checked[key_table.PLAYBOOKDIR],
        limits=(student_min, student_max),
        ldap_uri=ldap_uri,
        var_dirs=tuple(folder for folder in (var_dir, var_priv_dir) if folder is not None),
        vault_password=checked[key_table.VAULTPWD],
        private_workshop_dir=checked[key_table.WORKSHOPPRIVDIR],
        policy=checked[key_table.CATALOGWORKSHOPS],
        sites=frozenset(sites),
    ).load()

    legacy_peers, _ = checked[key_table.LEGACYPEERS]
    trusted_peers, trust_local = checked[key_table.TRUSTEDPEERS]
    return Location(
        file=path,
        name=path.stem,
        values=MappingProxyType(values),
        workshops=MappingProxyType(booked.served),
        smtp_host=checked[key_table.SMTPHOST],
        smtp_port=smtp_port,
        legacy_port=legacy_port,
        state_dir=checked[key_table.STATEDIR],
        student_dir=checked[key_table.STUDENTDIR],
        workshop_dir=checked[key_table.WORKSHOPDIR],
        playbook_dir=checked[key_table.PLAYBOOKDIR],
        skel_dir=checked[key_table.SKELDIR],
        student_min=student_min,
        student_max=student_max,
        base_stdid=base_stdid,
        legacy_peers=legacy_peers,
        trusted_peers=trusted_peers,
        trust_local=trust_local,
        trusted_senders=checked[key_table.TRUSTEDSENDERS],
        api_endpoint=api_endpoint,
        api_user=checked[key_table.APIUSER],
        api_password=checked[key_table.APIPWD],
        workers=checked[key_table.WORKERS],
        max_message_size=checked[key_table.MAXMESSAGESIZE],
        catalog=MappingProxyType(booked.known),
        not_served=MappingProxyType(booked.not_served),
        warnings=tuple(booked.warnings),
        optional_variables=checked[key_table.TEMPLATEOPTIONAL],
        var_dir=var_dir,
        var_priv_dir=var_priv_dir,
        vault_password=checked[key_table.VAULTPWD],
        job_keep_days=checked[key_table.JOBKEEPDAYS],
        refused_keep_days=checked[key_table.REFUSEDKEEPDAYS],
        free_space_floor=checked[key_table.FREESPACEFLOOR] << 20,
        local_peer_uids=checked[key_table.LOCALPEERUSERS],
        accounts=accounts,
        smtp=smtp,
        legacy=LegacySettings(
            checked[key_table.LEGACYIDLETIMEOUT],
            checked[key_table.LEGACYSESSIONTIMEOUT],
            checked[key_table.LEGACYPEERCONNECTIONS],
        ),
        connections=ConnectionSettings(total, reserved),
        hub=HubSettings(
            checked[key_table.JPHUBAPISRV],
            checked[key_table.JPHUBTOKEN],
            checked[key_table.HUBSPAWNTIMEOUT],
            checked[key_table.HUBCREATEUSERS],
            checked[key_table.HUBTHROTTLEWAIT],
        ),
        jobs=JobSettings(
            retry_for=checked[key_table.RETRYFOR],
            retry_backoff_max=checked[key_table.RETRYBACKOFFMAX],
            callback_backoff_max=checked[key_table.CALLBACKBACKOFFMAX],
            nice=checked[key_table.JOBSNICE],
            app_deadline=checked[key_table.APPDEADLINE],
            hook_slots=checked[key_table.HOOKSLOTS] or os.cpu_count() or 1,
        ),
        relay=relay_settings(checked),
        metrics=metrics_settings(checked, smtp_port, legacy_port),
        homes=homes,
        deployment=DeploySettings(
            copy_steps=checked[key_table.COPYSTEPS],
            pdf_script=checked[key_table.PDFSCRIPT],
            private_workshop_dir=checked[key_table.WORKSHOPPRIVDIR],
            pre_templating=checked[key_table.PRETEMPLATING],
            post_templating=checked[key_table.POSTTEMPLATING],
            completion=checked[key_table.COMPLETION],
        ),
        ldap_uri=ldap_uri,
        checked=checked,
        workshops_file=workshops_file,
        backend_names=tuple(str(checked[key] or "") for key in (key_table.JPHOSTEXT, key_table.JPHOST)),
        withheld=tuple(str(item) for name in sorted(SECRET_KEYS) for item in items(values.get(name)) if item),
        in_clear=tuple(
            name
            for name in sorted(SECRET_KEYS)
            if any(
                item and not from_secret
                for item, from_secret in zip(items(values.get(name)), revealed.secret_items.get(name, ()), strict=False)
            )
        ),
        scripts=script_settings(checked, booked.served),
        original=original,
    )


def _address_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        parsed: IPv4Address | IPv6Address = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped  # a dual-stack listener sees ::ffff:127.0.0.1
    return any(parsed in network for network in networks)
