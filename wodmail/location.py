"""The location: one YAML file per site, and the workshops file beside it.

A location file is a flat mapping of KEY: value, in the format the sites already use
(values may refer to other keys Ansible-style, `{{ KEY }}`; a value tagged `!unsafe`, as in
Ansible, is taken as written, braces and all). wodmail reads its own keys
from it (SMTPPORT, STATEDIR, STUDENTMAX, ...); every other key is a free key handed to the
workshop templates. A secret may be written `env:NAME` or `file:/path` instead of in clear.

The workshops file (key WORKSHOPS, default `workshops.yaml` beside the location) books a
student range for each workshop and says how it behaves:

    WKSHP-Ansible101:
      range: [1, 40]          # students 1..40, inclusive
      varpass: true           # templates get PASSSTU
      reset: false            # a reset workshop keeps the home at CLEANUP, RESET erases it
      ldap: false             # the password is set in LDAP too (needs LDAPURI)
      id: 12                  # the registration app's workshop id
      hooks: {reset: ../playbooks/WKSHP-Ansible101/reset.yml}
      variables: {DOCKERHOST: docker.example.com}

The catalog (WORKSHOPDIR) holds one folder per workshop; a folder's `wod.yml`, when it has
one, describes the workshop as the platform this replaces read it (`name`, `description`,
`capacity`, `range: [52, 91]`, `reset`, `ldap`, `varpass`, `active`, `compile`, `duration`,
`priority`, `category`, `location`, ...; keys wodmail does not know are tolerated). Which
workshops this location serves:

- every workshop of the workshops file whose `active` is not false; its settings are its
  wod.yml's, overridden key by key by the workshops file's;
- every catalog folder (WKSHP-Name/ or CHLG-Name/ with a wod.yml) that the workshops file
  does not list, when its wod.yml says `active: true` (or says nothing about it), unless
  CATALOGWORKSHOPS is `listed` (then only listed workshops are served), and unless
  CATALOGLOCATION is set and the wod.yml's `location` names another site. A CHLG-Name
  folder's wod.yml books the challenge; its content is WKSHP-Name's.

A workshop that is served must be right: a malformed value (say `range: [1981-1985]`), a
range outside STUDENTMIN..STUDENTMAX or overlapping another served workshop's, a missing
content folder are `ConfigError`s naming the file and key. What is known but not served
(inactive, for another site, not listed) only gives warnings, as do overlaps involving it, a
`capacity` larger than the range, or a malformed informational key (`duration`,
`category`, ...): `Location.warnings`, logged at start and listed by `wodmail check`.

The catalog's keys of the location: CATALOGWORKSHOPS (`active`, the default, or `listed`),
CATALOGLOCATION (a site name or a list), VARDIR and VARPRIVDIR (the folders of the
`variables_<NAME>.yml` files, as ANSIBLEDIR/PBKDIR and ANSIBLEPRIVDIR/PBKDIR were),
VAULTPWD (decrypts their ansible-vault values; a secret, never given to templates) and
TEMPLATEOPTIONAL (variables a template may use undefined). None is required.

Settings (flags, ranges, active) are read at start: a change to a wod.yml or to the
workshops file takes effect at the next start. The workshop content and the variable files
are read again when they change on disk (wodmail.workshop, wodmail.catalog).

`load_location` reads and checks every file at start-up; every mistake is a `ConfigError`
whose message is one line: "file: key: reason". A reason never carries a secret.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from wodmail import resources
from wodmail.command import WORKSHOP_RE
from wodmail.errors import ConfigError

SECRET_KEYS = frozenset({"APIPWD", "JPHUBTOKEN", "LDAPBINDPW", "SIGNINGKEYS", "VAULTPWD"})
"""Keys whose values are never handed to templates."""

LIST_KEYS = frozenset({"LEGACYPEERS", "TRUSTEDPEERS", "TRUSTEDSENDERS", "SIGNINGKEYS", "LOCALPEERUSERS"})
"""wodmail's own keys that take a list (free keys may hold lists too)."""

HOOK_VERBS = ("create", "cleanup", "reset")
"""The verbs a workshop may hook a playbook to."""

WORKSHOP_KEYS = frozenset({"range", "reset", "ldap", "varpass", "id", "hooks", "variables", "active", "capacity"})
"""Entry keys wodmail acts on: a malformed value of a served workshop is a ConfigError."""
INFORMATIONAL_KEYS = frozenset(
    {"name", "description", "duration", "priority", "category", "compile", "location", "beta"}
)
"""wod.yml keys the workshops file may also give: checked, a malformed value only warns."""

WOD_FILE = "wod.yml"
"""A catalog folder's metadata file."""

CATALOG_POLICIES = ("active", "listed")
"""CATALOGWORKSHOPS: serve the active catalog workshops too (default), or only listed ones."""

VARIABLES_FILE = "variables_{name}.yml"
"""A workshop's variable file in VARDIR and VARPRIVDIR ({name}: the command's WKSHP-/CHLG- name)."""

Network = IPv4Network | IPv6Network
LOOPBACK: tuple[Network, ...] = (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
MAX_STDID = 999_999_999  # a command mail's student id has at most 9 digits

_REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_JINJA = re.compile(r"\{\{|\{%|\{#")
_ENV_SECRET = re.compile(r"env:(.*)", re.DOTALL)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILE_SECRET = re.compile(r"file:(.*)", re.DOTALL)
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Workshop:
    """One workshop as the location knows it: its wod.yml, overridden by the workshops file."""

    name: str
    """"WKSHP-Name" or "CHLG-Name": the key in the workshops file, or the catalog folder."""
    first: int
    """The first student of the booked range (0..-1: none, for a workshop not served)."""
    last: int
    """The last student of the booked range (inclusive)."""
    content: Path
    """WORKSHOPDIR/<content_name>: the workshop's notebooks and files (an existing folder)."""
    reset: bool = False
    """A reset workshop keeps the home at CLEANUP; RESET erases it and runs the reset hook."""
    ldap: bool = False
    """The student's password is also set in LDAP."""
    varpass: bool = False
    """Templates get the student's password as PASSSTU."""
    app_id: int | None = None
    """The registration app's workshop id (entry key `id`)."""
    hooks: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """Playbook per verb ("create", "cleanup", "reset"), explicit or found by convention."""
    variables: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """The workshop's own template variables (entry key `variables`)."""
    active: bool = field(default=True, compare=False)
    """False: known (catalog or workshops file) but `active: false`, so not served."""
    capacity: int | None = field(default=None, compare=False)
    """The seats the registration app offers (`capacity`), when given."""
    title: str | None = field(default=None, compare=False)
    """The wod.yml's `name`: the title the registration app shows."""
    metadata_file: Path | None = field(default=None, compare=False)
    """The catalog's wod.yml for this workshop, None when it has none."""
    variable_files: tuple[Path, ...] = field(default=(), compare=False)
    """Where its variable files may be, lowest precedence first (VARDIR's, then VARPRIVDIR's);
    read when they exist, again when they change."""
    metadata: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), hash=False, compare=False)
    """Every setting as merged (wod.yml overridden by the workshops file), unknown keys too."""

    @property
    def mode(self) -> str:
        """CHLG for a challenge, WKSHP otherwise."""
        return "CHLG" if self.name.startswith("CHLG-") else "WKSHP"

    @property
    def content_name(self) -> str:
        """The WKSHP- name the content lives under (a challenge shares its workshop's)."""
        return _content_name(self.name)

    def holds(self, stdid: int) -> bool:
        """Whether student `stdid` is inside this workshop's booked range."""
        return self.first <= stdid <= self.last

    @property
    def booked(self) -> bool:
        """Whether it has a range (a workshop that is not served may have none: 0..-1)."""
        return self.first <= self.last


ACCOUNT_MODES = ("none", "unix")
"""ACCOUNTS: `none` (the default: wodmail leaves host accounts alone) or `unix` (student{N}'s
password is set in /etc/shadow on every verb, the hub logs students in through PAM)."""
HASH_SCHEMES = ("system", "yescrypt", "sha512")
"""ACCOUNTHASH: the shadow hash's scheme; `system`: what pam_unix uses (/etc/pam.d/common-password,
else ENCRYPT_METHOD of /etc/login.defs)."""
SSH_KEY_TYPES = ("none", "ed25519", "ecdsa", "rsa")
"""ACCOUNTSSHKEY: the key pair made for the student on every erase of the home (none: no key)."""
_ACL_ENTRY = re.compile(r"(u|user|g|group):([A-Za-z0-9_][A-Za-z0-9_.-]{0,31}|[0-9]{1,10}):([r-]?[w-]?[x-]?)")


@dataclass(frozen=True)
class AclEntry:
    """One HOMEACL entry: `u:NAME:PERMS` or `g:NAME:PERMS` (setfacl's short form)."""

    kind: str
    """"u" (a user) or "g" (a group)."""
    name: str
    """The user or group name, or its number."""
    perms: int
    """rwx as bits (4, 2, 1)."""

    def __str__(self) -> str:
        bits = "".join(letter if self.perms & bit else "-" for letter, bit in (("r", 4), ("w", 2), ("x", 1)))
        return f"{self.kind}:{self.name}:{bits}"


@dataclass(frozen=True)
class AccountSettings:
    """The students' host accounts, as the location sets them (every key has a default)."""

    mode: str = "none"
    """ACCOUNTS: none or unix."""
    hash_scheme: str = "system"
    """ACCOUNTHASH: system, yescrypt or sha512."""
    hash_cost: int | None = None
    """ACCOUNTHASHCOST: yescrypt's cost (1..11) or sha512's rounds (1000..999999999); None: the
    cheapest (wodmail's passwords are random: see wodmail.accounts)."""
    create: bool = False
    """ACCOUNTCREATE: create a missing student{N} (true) or fail the job (false)."""
    uid_min: int = 1000
    """ACCOUNTUIDMIN: the lowest uid a student account may have (default: UID_MIN of login.defs)."""
    uid_max: int = 60000
    """ACCOUNTUIDMAX: the highest (default: UID_MAX of login.defs)."""
    uid_base: int | None = None
    """ACCOUNTUIDBASE: student{N} has uid N + ACCOUNTUIDBASE (checked, and given at creation)."""
    gid_base: int | None = None
    """ACCOUNTGIDBASE: a created student{N}'s own group gets gid N + ACCOUNTGIDBASE."""
    shell: str = "/bin/bash"
    """ACCOUNTSHELL: a created account's login shell."""
    groups: tuple[str, ...] = ()
    """ACCOUNTGROUPS: supplementary groups of a created account."""
    ssh_key: str = "none"
    """ACCOUNTSSHKEY: none, ed25519, ecdsa or rsa."""
    home_acl: tuple[AclEntry, ...] = ()
    """HOMEACL: access (and default) ACL entries given on every fresh home, e.g. u:wodadmin:rwx."""

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


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


@dataclass(frozen=True)
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
    hub_url: str | None
    """JupyterHub's API server, no trailing slash; None: no JupyterHub calls."""
    hub_token: str | None = field(repr=False)
    workers: int
    max_message_size: int
    ldap_uri: str | None
    catalog: Mapping[str, Workshop] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """Every workshop known, served or not: `workshops` plus those of `not_served`."""
    not_served: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """Known workshops this location does not serve, and why ("inactive", ...)."""
    warnings: tuple[str, ...] = ()
    """What is odd but does not stop the daemon, one line each ("file: key: reason")."""
    optional_variables: tuple[str, ...] = ()
    """TEMPLATEOPTIONAL: variables a template may use undefined (they render as "")."""
    var_dir: Path | None = None
    """VARDIR: the public variable files (variables_<NAME>.yml)."""
    var_priv_dir: Path | None = None
    """VARPRIVDIR: the private variable files; a key there overrides VARDIR's."""
    vault_password: str | None = field(default=None, repr=False)
    """VAULTPWD: decrypts the ansible-vault values of the variable files."""
    job_keep_days: int = 30
    """JOBKEEPDAYS: done jobs (all their callbacks delivered) are kept this many days."""
    refused_keep_days: int = 7
    """REFUSEDKEEPDAYS: refused mails are kept this many days (and capped in number)."""
    free_space_floor: int = 64 << 20
    """FREESPACEFLOOR (MiB; bytes here): below this much free space on STATEDIR's
    filesystem the doors answer 451 before writing anything."""
    local_peer_uids: frozenset[int] = frozenset({0})
    """LOCALPEERUSERS: whose connections from this host (loopback, the host's own addresses)
    count as coming from their address; default root and the user wodmail runs as. Anyone
    else on this host (a student) is never a trusted peer (wodmail.peers)."""
    accounts: AccountSettings = field(default_factory=AccountSettings)
    """ACCOUNTS and the ACCOUNT*/HOMEACL keys: the students' host accounts (wodmail.accounts)."""

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


def load_location(file: Path | str | None = None) -> Location:
    """Read and check a location file and its workshops file.

    `file` None means the embedded default, locations/local.yaml. Raises `ConfigError`
    ("file: key: reason", one line) on the first mistake found.
    """
    path = Path(file) if file is not None else resources.default_location_file()
    path = Path(os.path.expanduser(path)).absolute()
    raw = _read_yaml(path)
    if raw is None:
        raise ConfigError(path, None, "the file is empty: expected KEY: value lines")
    if not isinstance(raw, dict):
        raise ConfigError(path, None, f"expected a mapping of KEY: value, found {_kind(raw)}")
    entries = _check_value_types(path, raw)
    resolved = _References(path, entries).resolve_all()
    values, hidden = _reveal_secrets(path, resolved)
    return _build(path, values, hidden)


# --- reading YAML -------------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key = key
        self.line = line
        self.first_line = first_line


# libyaml's parser when PyYAML has it (ten times faster on a catalog's files), else Python's.
if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """SafeLoader that refuses duplicate keys and keeps dates as plain text.

    With `duplicates` set to a list, a duplicate key is noted there instead (the last one
    counts, as Ansible and the catalog's other readers took it)."""

    duplicates: list[_DuplicateKey] | None = None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                if self.duplicates is None:
                    raise _DuplicateKey(key, line, seen[key])
                self.duplicates.append(_DuplicateKey(key, line, seen[key]))
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _Literal(str):
    """Text tagged `!unsafe` (as in Ansible): taken as written, no references, no secrets."""


def _construct_literal(loader: yaml.SafeLoader, node: yaml.Node) -> _Literal:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "!unsafe applies to a single text value", node.start_mark)
    return _Literal(loader.construct_scalar(node))


_Loader.add_constructor("!unsafe", _construct_literal)

# A date-looking free value (2024-05-01) stays the text the operator wrote.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _read_yaml(
    path: Path,
    loader: type[_Loader] = _Loader,
    duplicates: list[_DuplicateKey] | None = None,
    text: str | None = None,
) -> object:
    """The YAML document of `path` (or `text`, read from it already); ConfigError if bad."""
    try:
        if text is None:
            text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        reader = loader(text)  # a SafeLoader: what yaml.load(text, Loader=loader) does
        reader.duplicates = duplicates
        try:
            return reader.get_single_data()
        finally:
            reader.dispose()
    except _DuplicateKey as dup:
        raise ConfigError(path, str(dup.key), f"given twice (lines {dup.first_line} and {dup.line})") from None
    except yaml.MarkedYAMLError as exc:
        # Only the problem and where: the library's message quotes the line, maybe a secret.
        parts = [
            what + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")
            for what, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark))
            if what
        ]
        raise ConfigError(path, None, "not valid YAML: " + (": ".join(parts) or "syntax error")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, f"not valid YAML: {type(exc).__name__}") from None


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def _check_value_types(path: Path, raw: dict[Any, Any]) -> dict[str, object]:
    """The file's entries, keys checked to be strings and values scalars or flat lists."""
    entries: dict[str, object] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(path, str(key), f"keys must be strings, found {_kind(key)}")
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, _SCALARS):
                    raise ConfigError(
                        path,
                        key,
                        f"unknown key type: a list holding {_kind(item)} (lists hold strings, numbers or booleans)",
                    )
            entries[key] = tuple(value)
        elif isinstance(value, _SCALARS):
            entries[key] = value
        else:
            raise ConfigError(
                path,
                key,
                f"unknown key type: {_kind(value)} (values are strings, numbers, booleans or lists of those)",
            )
    return entries


# --- references and secrets ---------------------------------------------------------------


class _References:
    """Resolves `{{ KEY }}` references between the keys of one file, recursively."""

    def __init__(self, path: Path, entries: dict[str, object]) -> None:
        self.path = path
        self.entries = entries
        self.done: dict[str, object] = {}
        self.stack: list[str] = []

    def resolve_all(self) -> dict[str, object]:
        return {key: self.value(key) for key in self.entries}

    def value(self, key: str) -> object:
        if key in self.done:
            return self.done[key]
        if key in self.stack:
            cycle = [*self.stack[self.stack.index(key) :], key]
            raise ConfigError(self.path, key, "reference cycle: " + " -> ".join(cycle))
        self.stack.append(key)
        raw = self.entries[key]
        result: object
        if isinstance(raw, tuple):
            result = tuple(self.text(key, item, in_list=True) for item in raw)
        else:
            result = self.text(key, raw, in_list=False)
        self.stack.pop()
        self.done[key] = result
        return result

    def text(self, key: str, value: object, *, in_list: bool) -> object:
        if isinstance(value, _Literal):
            return value
        if not isinstance(value, str):
            return value
        if _JINJA.search(_REFERENCE.sub("", value)):
            raise ConfigError(
                self.path,
                key,
                "only {{ KEY }} references are supported (no filters, tests or {% %})",
            )
        whole = _REFERENCE.fullmatch(value)
        if whole:
            # A value that is one reference takes the referred value as it is (an integer
            # stays an integer), as Ansible does.
            target = self.target(key, whole.group(1))
            if in_list and isinstance(target, tuple):
                raise ConfigError(self.path, key, f"a list item refers to the list {{{{ {whole.group(1)} }}}}")
            return target

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            target = self.target(key, name)
            if isinstance(target, tuple):
                raise ConfigError(self.path, key, f"cannot put the list {{{{ {name} }}}} inside a string")
            return "" if target is None else str(target)

        return _REFERENCE.sub(substitute, value)

    def target(self, key: str, name: str) -> object:
        if name not in self.entries:
            raise ConfigError(self.path, key, f"refers to {{{{ {name} }}}}, which the file does not define")
        return self.value(name)


def _reveal_secrets(path: Path, values: dict[str, object]) -> tuple[dict[str, object], set[str]]:
    """Values with `env:NAME` and `file:/path` replaced; and the keys that held a secret."""
    revealed: dict[str, object] = {}
    hidden: set[str] = set(SECRET_KEYS)
    for key, value in values.items():
        if isinstance(value, tuple):
            items = [_reveal(path, key, item) for item in value]
            revealed[key] = tuple(item for item, _ in items)
            if any(secret for _, secret in items):
                hidden.add(key)
        else:
            revealed[key], secret = _reveal(path, key, value)
            if secret:
                hidden.add(key)
    return revealed, hidden


def _reveal(path: Path, key: str, value: object) -> tuple[object, bool]:
    if isinstance(value, _Literal):
        return str(value), False
    if not isinstance(value, str):
        return value, False
    env = _ENV_SECRET.fullmatch(value)
    if env:
        name = env.group(1)
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(path, key, "env: must be followed by an environment variable name")
        if name not in os.environ:
            raise ConfigError(path, key, f"environment variable {name} is not set")
        return os.environ[name], True
    secret_file = _FILE_SECRET.fullmatch(value)
    if secret_file:
        name = secret_file.group(1).strip()
        if not name:
            raise ConfigError(path, key, "file: must be followed by a path")
        where = _path_beside(path.parent, name)
        try:
            content = where.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(path, key, f"secret file {where} is not UTF-8 text") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(path, key, f"cannot read secret file {where}: {reason}") from None
        return content.rstrip("\r\n"), True
    return value, False


def _path_beside(base: Path, text: str) -> Path:
    """`text` as a path: ~ expanded, relative to `base`, ".." folded away."""
    return Path(os.path.normpath(base / os.path.expanduser(text)))


# --- wodmail's own keys -------------------------------------------------------------------


class _Keys:
    """Reads wodmail's typed keys out of the resolved values, one check per key."""

    def __init__(self, file: Path, values: dict[str, object], hidden: set[str]) -> None:
        self.file = file
        self.values = values
        self.hidden = hidden

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ConfigError(self.file, key, reason)

    def shown(self, key: str, value: object) -> str:
        """How a bad value appears in a reason: never when it is (or came from) a secret."""
        if key in self.hidden:
            return "(a secret, not shown)"
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    def get(self, key: str) -> object:
        """The value, None when the key is absent or null."""
        return self.values.get(key)

    def integer(self, key: str, default: int | None, low: int, high: int | None) -> int | None:
        value = self.get(key)
        if value is None:
            return default
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        if isinstance(value, bool) or not isinstance(value, int):
            hint = " (remove the quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
            self.fail(key, f"expected an integer {bounds}, found {self.shown(key, value)}{hint}")
        if value < low or (high is not None and value > high):
            self.fail(key, f"expected an integer {bounds}, found {self.shown(key, value)}")
        return value

    def required_integer(self, key: str, low: int, high: int | None, what: str) -> int:
        if self.get(key) is None:
            self.fail(key, f"missing: {what}")
        value = self.integer(key, None, low, high)
        assert value is not None
        return value

    def text(self, key: str) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(key, f"expected a string, found {_kind(value)} (quote it)")
        if not value.strip():
            self.fail(key, "is empty")
        return value

    def path(self, key: str) -> Path | None:
        value = self.text(key)
        return None if value is None else _path_beside(self.file.parent, value)

    def required_path(self, key: str, what: str) -> Path:
        value = self.path(key)
        if value is None:
            self.fail(key, f"missing: {what}")
        return value

    def url(self, key: str, schemes: tuple[str, ...]) -> str | None:
        value = self.text(key)
        if value is None:
            return None
        if not value.startswith(schemes) or value.rstrip("/") in schemes:
            self.fail(key, "must be a URL starting with " + " or ".join(schemes))
        if any(ch.isspace() for ch in value):
            self.fail(key, "a URL holds no spaces")
        return value.rstrip("/")

    def items(self, key: str) -> tuple[object, ...] | None:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, tuple):
            return value
        return (value,)

    def networks(self, key: str, *, allow_local: bool) -> tuple[tuple[Network, ...], bool] | None:
        items = self.items(key)
        if items is None:
            return None
        networks: list[Network] = []
        local = False
        for item in items:
            if allow_local and item == "local":
                local = True
                continue
            if not isinstance(item, str):
                self.fail(key, f"expected IP addresses or networks, found {_kind(item)}")
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                extra = ' or the word "local"' if allow_local else ""
                self.fail(
                    key,
                    f"{self.shown(key, item)} is not an IP address or network (e.g. 192.0.2.10, 10.0.0.0/8){extra}",
                )
        return tuple(networks), local

    def senders(self, key: str) -> tuple[str, ...]:
        items = self.items(key)
        if items is None:
            return ()
        senders: list[str] = []
        for item in items:
            if not isinstance(item, str):
                self.fail(key, f"expected addresses or @domain entries, found {_kind(item)}")
            entry = item.strip().lower()
            local, at, domain = entry.rpartition("@")
            plain = at and domain and "@" not in local and not any(ch.isspace() for ch in entry)
            if not plain:
                self.fail(key, f"{self.shown(key, item)} is neither an address nor an @domain")
            senders.append(entry)
        return tuple(senders)

    def folder(self, key: str) -> Path | None:
        value = self.path(key)
        if value is not None and not value.is_dir():
            self.fail(key, f"{value} is not a directory")
        return value

    def names(self, key: str) -> tuple[str, ...]:
        """A name or a list of names (non-empty strings without spaces)."""
        names: list[str] = []
        for item in self.items(key) or ():
            if not isinstance(item, str) or not item.strip() or any(ch.isspace() for ch in item.strip()):
                self.fail(key, f"expected names, found {self.shown(key, item)}")
            names.append(item.strip())
        return tuple(names)

    def users(self, key: str) -> frozenset[int] | None:
        """User names or numeric uids, as uids; None when the key is absent."""
        items = self.items(key)
        if items is None:
            return None
        uids: set[int] = set()
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                uids.add(item)
                continue
            if not isinstance(item, str) or not item.strip():
                self.fail(key, f"expected user names or uids, found {self.shown(key, item)}")
            name = item.strip()
            if name.isdigit():
                uids.add(int(name))
                continue
            try:
                uids.add(pwd.getpwnam(name).pw_uid)
            except KeyError:
                self.fail(key, f"no user {self.shown(key, name)} on this host")
        return frozenset(uids)

    def secrets(self, key: str) -> None:
        for index, item in enumerate(self.items(key) or (), start=1):
            if not isinstance(item, str) or not item:
                self.fail(key, f"item {index} must be a non-empty string (quote it)")


def _build(path: Path, values: dict[str, object], hidden: set[str]) -> Location:
    keys = _Keys(path, values, hidden)

    smtp_host = keys.text("SMTPHOST") or "127.0.0.1"
    smtp_port = keys.integer("SMTPPORT", 8025, 0, 65535)
    legacy_port = keys.integer("LEGACYPORT", None, 0, 65535)
    assert smtp_port is not None
    if legacy_port and legacy_port == smtp_port:
        keys.fail("LEGACYPORT", f"the legacy door cannot share SMTPPORT {smtp_port}")

    state_dir = keys.required_path("STATEDIR", "the folder where wodmail keeps its queue and records")
    student_dir = keys.required_path("STUDENTDIR", "the folder that holds the student homes")
    workshop_dir = keys.required_path("WORKSHOPDIR", "the folder that holds one folder per workshop")
    if not workshop_dir.is_dir():
        keys.fail("WORKSHOPDIR", f"{workshop_dir} is not a directory")
    playbook_dir = keys.path("PLAYBOOKDIR") or resources.product_path("playbooks")
    skel_dir = keys.path("SKELDIR")
    if skel_dir is not None and not skel_dir.is_dir():
        keys.fail("SKELDIR", f"{skel_dir} is not a directory")

    student_min = keys.integer("STUDENTMIN", 1, 0, MAX_STDID)
    assert student_min is not None
    student_max = keys.required_integer("STUDENTMAX", 0, MAX_STDID, "the highest student number on this host")
    if student_max < student_min:
        keys.fail("STUDENTMAX", f"{student_max} is below STUDENTMIN {student_min}")
    base_stdid = keys.integer("BASESTDID", 0, 0, None)
    workers = keys.integer("WORKERS", 8, 1, 256)
    max_message_size = keys.integer("MAXMESSAGESIZE", 65536, 1, None)
    job_keep_days = keys.integer("JOBKEEPDAYS", 30, 1, 36500)
    refused_keep_days = keys.integer("REFUSEDKEEPDAYS", 7, 1, 36500)
    free_space_floor = keys.integer("FREESPACEFLOOR", 64, 0, None)
    assert job_keep_days is not None and refused_keep_days is not None and free_space_floor is not None
    assert base_stdid is not None and workers is not None and max_message_size is not None

    legacy = keys.networks("LEGACYPEERS", allow_local=False)
    trusted = keys.networks("TRUSTEDPEERS", allow_local=True)
    trusted_senders = keys.senders("TRUSTEDSENDERS")
    local_peer_uids = keys.users("LOCALPEERUSERS")
    if local_peer_uids is None:
        local_peer_uids = frozenset({0, os.geteuid()})
    keys.secrets("SIGNINGKEYS")

    api_endpoint = keys.url("APIENDPOINT", ("http://", "https://"))
    api_user = keys.text("APIUSER")
    api_password = keys.text("APIPWD")
    if api_endpoint is not None:
        if api_user is None:
            keys.fail("APIUSER", "missing: APIENDPOINT is set, and the app's login needs a user")
        if api_password is None:
            keys.fail("APIPWD", "missing: APIENDPOINT is set, and the app's login needs a password")
    hub_url = keys.url("JPHUBAPISRV", ("http://", "https://"))
    hub_token = keys.text("JPHUBTOKEN")
    if hub_url is not None and hub_token is None:
        keys.fail("JPHUBTOKEN", "missing: JPHUBAPISRV is set, and JupyterHub's API needs a token")
    ldap_uri = keys.url("LDAPURI", ("ldap://", "ldaps://", "ldapi://"))
    keys.text("LDAPBINDDN")
    keys.text("LDAPBINDPW")

    var_dir = keys.folder("VARDIR")
    var_priv_dir = keys.folder("VARPRIVDIR")
    optional_variables = keys.names("TEMPLATEOPTIONAL")
    policy = keys.text("CATALOGWORKSHOPS") or "active"
    if policy not in CATALOG_POLICIES:
        keys.fail("CATALOGWORKSHOPS", "expected " + " or ".join(CATALOG_POLICIES))
    sites = keys.names("CATALOGLOCATION")
    vault_password = keys.text("VAULTPWD")

    # Without WORKSHOPS, workshops.yaml beside the location is read if it exists (a site may
    # serve its catalog's wod.yml files alone); a file named by WORKSHOPS must exist.
    workshops_file = keys.path("WORKSHOPS")
    if workshops_file is not None and not workshops_file.is_file():
        keys.fail("WORKSHOPS", f"the workshops file {workshops_file} does not exist")
    if workshops_file is None:
        workshops_file = path.parent / "workshops.yaml"
    booked = _Booking(
        workshops_file=workshops_file,
        workshop_dir=workshop_dir,
        playbook_dir=playbook_dir,
        limits=(student_min, student_max),
        ldap_uri=ldap_uri,
        var_dirs=tuple(folder for folder in (var_dir, var_priv_dir) if folder is not None),
        vault_password=vault_password,
        policy=policy,
        sites=frozenset(sites),
    ).load()

    accounts = _account_settings(keys, student_min, student_max)

    return Location(
        file=path,
        name=path.stem,
        values=MappingProxyType(values),
        workshops=MappingProxyType(booked.served),
        smtp_host=smtp_host,
        smtp_port=smtp_port,
        legacy_port=legacy_port,
        state_dir=state_dir,
        student_dir=student_dir,
        workshop_dir=workshop_dir,
        playbook_dir=playbook_dir,
        skel_dir=skel_dir,
        student_min=student_min,
        student_max=student_max,
        base_stdid=base_stdid,
        legacy_peers=legacy[0] if legacy else LOOPBACK,
        trusted_peers=trusted[0] if trusted else LOOPBACK,
        trust_local=trusted[1] if trusted else True,
        trusted_senders=trusted_senders,
        api_endpoint=api_endpoint,
        api_user=api_user,
        api_password=api_password,
        hub_url=hub_url,
        hub_token=hub_token,
        workers=workers,
        max_message_size=max_message_size,
        ldap_uri=ldap_uri,
        catalog=MappingProxyType(booked.known),
        not_served=MappingProxyType(booked.not_served),
        warnings=tuple(booked.warnings),
        optional_variables=optional_variables,
        var_dir=var_dir,
        var_priv_dir=var_priv_dir,
        vault_password=vault_password,
        local_peer_uids=local_peer_uids,
        job_keep_days=job_keep_days,
        refused_keep_days=refused_keep_days,
        free_space_floor=free_space_floor << 20,
        accounts=accounts,
    )


def _account_settings(keys: _Keys, student_min: int, student_max: int) -> AccountSettings:
    """ACCOUNTS and its keys (wodmail.accounts); each checked, each with its default."""
    mode = keys.text("ACCOUNTS") or "none"
    if mode not in ACCOUNT_MODES:
        keys.fail("ACCOUNTS", "expected " + " or ".join(ACCOUNT_MODES))
    scheme = keys.text("ACCOUNTHASH") or "system"
    if scheme not in HASH_SCHEMES:
        keys.fail("ACCOUNTHASH", "expected " + ", ".join(HASH_SCHEMES))
    cost = keys.integer("ACCOUNTHASHCOST", None, 1, 999_999_999)
    if cost is not None and scheme == "yescrypt" and cost > 11:
        keys.fail("ACCOUNTHASHCOST", "yescrypt's cost is 1..11")
    if cost is not None and scheme == "sha512" and cost < 1000:
        keys.fail("ACCOUNTHASHCOST", "sha512's rounds are 1000..999999999")
    create = keys.get("ACCOUNTCREATE")
    if create is None:
        create = False
    if not isinstance(create, bool):
        keys.fail("ACCOUNTCREATE", "expected true or false")
    defaults = login_defs()
    low_default = int(defaults["UID_MIN"]) if defaults.get("UID_MIN", "").isdigit() else 1000
    high_default = int(defaults["UID_MAX"]) if defaults.get("UID_MAX", "").isdigit() else 60000
    uid_min = keys.integer("ACCOUNTUIDMIN", low_default, 1, 2**31 - 2)
    uid_max = keys.integer("ACCOUNTUIDMAX", high_default, 1, 2**31 - 2)
    assert uid_min is not None and uid_max is not None
    if uid_max < uid_min:
        keys.fail("ACCOUNTUIDMAX", f"{uid_max} is below ACCOUNTUIDMIN {uid_min}")
    uid_base = keys.integer("ACCOUNTUIDBASE", None, 0, 2**31 - 2)
    if uid_base is not None and not (uid_min <= student_min + uid_base and student_max + uid_base <= uid_max):
        keys.fail(
            "ACCOUNTUIDBASE",
            f"students {student_min}..{student_max} would have uids {student_min + uid_base}..{student_max + uid_base},"
            f" outside ACCOUNTUIDMIN..ACCOUNTUIDMAX ({uid_min}..{uid_max})",
        )
    gid_base = keys.integer("ACCOUNTGIDBASE", None, 0, 2**31 - 2)
    if gid_base is not None and student_min + gid_base < 1:
        keys.fail("ACCOUNTGIDBASE", "a student's group would have gid 0")
    shell = keys.text("ACCOUNTSHELL") or "/bin/bash"
    if not shell.startswith("/") or any(ch.isspace() or ch == ":" for ch in shell):
        keys.fail("ACCOUNTSHELL", "expected an absolute path (no spaces or colons)")
    groups = keys.names("ACCOUNTGROUPS")
    for group in groups:
        if not _ACL_ENTRY.fullmatch(f"g:{group}:r") or group.isdigit():
            keys.fail("ACCOUNTGROUPS", f"{keys.shown('ACCOUNTGROUPS', group)} is not a group name")
    ssh_key = keys.text("ACCOUNTSSHKEY") or "none"
    if ssh_key not in SSH_KEY_TYPES:
        keys.fail("ACCOUNTSSHKEY", "expected " + ", ".join(SSH_KEY_TYPES))
    acl: list[AclEntry] = []
    for item in keys.names("HOMEACL"):
        match = _ACL_ENTRY.fullmatch(item)
        if match is None:
            keys.fail("HOMEACL", f"{keys.shown('HOMEACL', item)} is not u:NAME:PERMS or g:NAME:PERMS (u:wodadmin:rwx)")
        perms = sum(bit for letter, bit in (("r", 4), ("w", 2), ("x", 1)) if letter in match[3])
        acl.append(AclEntry(match[1][0], match[2], perms))
    return AccountSettings(
        mode=mode,
        hash_scheme=scheme,
        hash_cost=cost,
        create=create,
        uid_min=uid_min,
        uid_max=uid_max,
        uid_base=uid_base,
        gid_base=gid_base,
        shell=shell,
        groups=groups,
        ssh_key=ssh_key,
        home_acl=tuple(acl),
    )


def _address_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        parsed: IPv4Address | IPv6Address = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped  # a dual-stack listener sees ::ffff:127.0.0.1
    return any(parsed in network for network in networks)


# --- the workshops: the workshops file and the catalog's wod.yml files ------------------

_FLAGS = ("reset", "ldap", "varpass")
_LISTED_ONLY = frozenset({"hooks", "variables"})
"""Keys only the workshops file gives (in a wod.yml they are metadata, never acted on)."""
_DASHED_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_NO_RANGE = (0, -1)


@dataclass(frozen=True)
class _Setting:
    """One workshop setting, and where it is written (for messages)."""

    value: object
    file: Path
    key: str
    """The key as messages name it: `range` in a wod.yml, `WKSHP-X.range` in the workshops file."""


@dataclass
class _Entry:
    """One workshop's settings: its wod.yml's, overridden key by key by the workshops file's."""

    name: str
    settings: dict[str, _Setting]
    listed: bool
    """Whether the workshops file lists it."""
    metadata_file: Path | None
    """Its wod.yml, if it has one."""
    listing_file: Path

    def where(self) -> tuple[Path, str | None]:
        """The file and key a message about the whole workshop names."""
        if self.listed:
            return self.listing_file, self.name
        assert self.metadata_file is not None
        return self.metadata_file, None


class _Problems:
    """Mistakes in one workshop: raised when it is served (`strict`), else kept as warnings."""

    def __init__(self, strict: bool, warnings: list[str]) -> None:
        self.strict = strict
        self.warnings = warnings

    def report(self, error: ConfigError) -> None:
        if self.strict:
            raise error
        self.warnings.append(str(error))

    def __call__(self, setting: _Setting, reason: str) -> None:
        self.report(ConfigError(setting.file, setting.key, reason))


@dataclass
class _Booked:
    served: dict[str, Workshop]
    known: dict[str, Workshop]
    not_served: dict[str, str]
    warnings: list[str]


@dataclass
class _Booking:
    """Reads the workshops file and the catalog, and decides what this location serves."""

    workshops_file: Path
    workshop_dir: Path
    playbook_dir: Path
    limits: tuple[int, int]
    ldap_uri: str | None
    var_dirs: tuple[Path, ...]
    policy: str
    sites: frozenset[str]
    vault_password: str | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, dict[str, _Setting]] = field(default_factory=dict)
    quiet: set[str] = field(default_factory=set)
    """Workshops for another site (CATALOGLOCATION): no warning about their ranges."""

    def load(self) -> _Booked:
        entries = self._listed()
        for name, metadata_file in self._catalog():
            settings = {
                key: _Setting(value, metadata_file, key)
                for key, value in self._metadata(metadata_file).items()
                if key not in _LISTED_ONLY
            }
            listed = entries.get(name)
            if listed is not None:
                listed.metadata_file = metadata_file
                listed.settings = {**settings, **listed.settings}
            else:
                entries[name] = _Entry(name, settings, False, metadata_file, self.workshops_file)

        served: dict[str, Workshop] = {}
        known: dict[str, Workshop] = {}
        not_served: dict[str, str] = {}
        for entry in entries.values():
            reason = self._why_not_served(entry)
            # Another site's workshop is checked, but its oddities are that site's business.
            warnings = [] if entry.name in self.quiet else self.warnings
            workshop = self._workshop(entry, _Problems(reason is None, warnings), reason != "inactive")
            known[entry.name] = workshop
            self.sources[entry.name] = entry.settings
            if reason is None:
                served[entry.name] = workshop
            else:
                not_served[entry.name] = reason
        self._refuse_overlaps(served)
        self._warn_about_ranges(known, not_served)
        return _Booked(served, known, not_served, self.warnings)

    # --- reading ----------------------------------------------------------------------

    def _listed(self) -> dict[str, _Entry]:
        path = self.workshops_file
        if not path.is_file():
            return {}
        raw = _read_yaml(path)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ConfigError(path, None, f"expected a mapping of workshop name: entry, found {_kind(raw)}")
        entries: dict[str, _Entry] = {}
        for name, entry in raw.items():
            if not isinstance(name, str) or not WORKSHOP_RE.fullmatch(name) or ".." in name:
                shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
                raise ConfigError(
                    path,
                    shown,
                    "not a workshop name: expected WKSHP- or CHLG- followed by letters, digits, '-', '_' or '.'",
                )
            if entry is None and not (self.workshop_dir / name / WOD_FILE).is_file():
                raise ConfigError(path, name, "empty entry: a workshop needs at least `range: [first, last]`")
            given = {} if entry is None else entry  # an empty entry: serve it as its wod.yml says
            if not isinstance(given, dict):
                raise ConfigError(path, name, f"expected a mapping of settings, found {_kind(given)}")
            for key in given:
                if key not in WORKSHOP_KEYS and key not in INFORMATIONAL_KEYS:
                    known = ", ".join(sorted(WORKSHOP_KEYS | INFORMATIONAL_KEYS))
                    raise ConfigError(path, f"{name}.{key}", f"unknown key (known: {known})")
            settings = {key: _Setting(value, path, f"{name}.{key}") for key, value in given.items()}
            entries[name] = _Entry(name, settings, True, None, path)
        return entries

    def _catalog(self) -> list[tuple[str, Path]]:
        """(name, wod.yml) of every WKSHP-/CHLG- folder of WORKSHOPDIR that has a wod.yml."""
        try:
            with os.scandir(self.workshop_dir) as scan:
                names = sorted(entry.name for entry in scan if entry.name.startswith(("WKSHP-", "CHLG-")))
        except OSError as exc:
            raise ConfigError(
                self.workshop_dir, None, f"cannot read WORKSHOPDIR: {exc.strerror or type(exc).__name__}"
            ) from None
        found: list[tuple[str, Path]] = []
        for name in names:
            metadata_file = self.workshop_dir / name / WOD_FILE
            if not metadata_file.is_file():
                continue
            if not WORKSHOP_RE.fullmatch(name) or ".." in name:
                self.warnings.append(
                    f"{metadata_file}: not a workshop name (letters, digits, '-', '_' or '.' after "
                    "WKSHP- or CHLG-): the folder is ignored"
                )
                continue
            found.append((name, metadata_file))
        return found

    def _metadata(self, path: Path) -> dict[str, object]:
        duplicates: list[_DuplicateKey] = []
        raw = _read_yaml(path, duplicates=duplicates)
        self.warnings.extend(_duplicate_warnings(path, duplicates))
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ConfigError(path, None, f"expected a mapping of key: value, found {_kind(raw)}")
        for key in raw:
            if not isinstance(key, str):
                raise ConfigError(path, str(key), f"keys must be strings, found {_kind(key)}")
        return raw

    # --- one workshop -----------------------------------------------------------------

    def _why_not_served(self, entry: _Entry) -> str | None:
        active = entry.settings.get("active")  # absent or empty: active, as the seeder took it
        if (
            active is not None
            and active.value is not None
            and not _flag_value(active, _Problems(True, self.warnings), self._lenient(active))
        ):
            return "inactive"
        if entry.listed:
            return None
        if self.policy == "listed":
            return "not in the workshops file (CATALOGWORKSHOPS: listed)"
        site = entry.settings.get("location")
        if self.sites and site is not None and isinstance(site.value, str) and site.value not in self.sites:
            self.quiet.add(entry.name)
            return f"for location {site.value} (CATALOGLOCATION: {', '.join(sorted(self.sites))})"
        return None

    def _lenient(self, setting: _Setting) -> bool:
        """A wod.yml may write booleans as the text "true"/"false" (the seeder took them so)."""
        return setting.file != self.workshops_file

    def _workshop(self, entry: _Entry, problems: _Problems, active: bool) -> Workshop:
        name = entry.name
        settings = entry.settings
        first, last = self._range(entry, problems)
        flags = {
            flag: _flag_value(settings[flag], problems, self._lenient(settings[flag])) if flag in settings else False
            for flag in _FLAGS
        }
        app_id = _integer_setting(
            settings.get("id"), problems, 0, "expected the registration app's workshop id (an integer)"
        )
        capacity = _integer_setting(settings.get("capacity"), problems, 0, "expected a number of seats")
        self._check_informational(entry, problems)

        content_name = _content_name(name)
        content = self.workshop_dir / content_name
        if not content.is_dir():
            file, key = entry.where()
            problems.report(ConfigError(file, key, f"workshop without content: {content} is not a directory"))
        hooks: dict[str, Path] = {}
        variables: dict[str, object] = {}
        hooks_setting = settings.get("hooks")
        variables_setting = settings.get("variables")
        try:
            hooks = _hooks(
                self.workshops_file,
                name,
                hooks_setting.value if hooks_setting else None,
                self.playbook_dir / content_name,
            )
            variables = _variables(self.workshops_file, name, variables_setting.value if variables_setting else None)
        except ConfigError as exc:
            problems.report(exc)
        if flags["ldap"] and self.ldap_uri is None:
            problems(settings["ldap"], "the workshop needs LDAP but the location sets no LDAPURI")

        variable_files = tuple(folder / VARIABLES_FILE.format(name=name) for folder in self.var_dirs)
        for file in variable_files:
            if file.exists():
                duplicates: list[_DuplicateKey] = []
                try:
                    read_variable_file(file, duplicates, self.vault_password)
                except ConfigError as exc:
                    problems.report(exc)
                problems.warnings.extend(_duplicate_warnings(file, duplicates))
        title = settings.get("name")
        return Workshop(
            name=name,
            first=first,
            last=last,
            content=content,
            reset=flags["reset"],
            ldap=flags["ldap"],
            varpass=flags["varpass"],
            app_id=app_id,
            hooks=MappingProxyType(hooks),
            variables=MappingProxyType(variables),
            active=active,
            capacity=capacity,
            title=title.value if title is not None and isinstance(title.value, str) else None,
            metadata_file=entry.metadata_file,
            variable_files=variable_files,
            metadata=MappingProxyType({key: setting.value for key, setting in settings.items()}),
        )

    def _range(self, entry: _Entry, problems: _Problems) -> tuple[int, int]:
        setting = entry.settings.get("range")
        if setting is None:
            if entry.listed:
                problems.report(
                    ConfigError(
                        self.workshops_file, f"{entry.name}.range", "missing: the booked students, as [first, last]"
                    )
                )
            else:
                assert entry.metadata_file is not None
                problems.report(
                    ConfigError(
                        entry.metadata_file,
                        "range",
                        "missing: the booked students, as [first, last] (here or in the workshops file)",
                    )
                )
            return _NO_RANGE
        value = setting.value
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(isinstance(end, bool) or not isinstance(end, int) for end in value)
        ):
            problems(setting, "expected [first, last], two student numbers" + _range_hint(value))
            return _NO_RANGE
        first, last = value
        if first > last:
            problems(setting, f"range {first}..{last} ends before it starts")
            return _NO_RANGE
        low, high = self.limits
        if first < low or last > high:
            problems(setting, f"range {first}..{last} is outside STUDENTMIN..STUDENTMAX ({low}..{high})")
        return first, last

    def _check_informational(self, entry: _Entry, problems: _Problems) -> None:
        """Keys wodmail only shows: a malformed one warns, served or not."""
        warn = _Problems(False, problems.warnings)
        for key, setting in entry.settings.items():
            value = setting.value
            reason = None
            if key in ("name", "description", "location"):
                if not isinstance(value, str):
                    reason = f"expected a text, found {_kind(value)}"
            elif key == "duration":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    reason = f"expected a number of hours, found {_kind(value)}"
            elif key == "priority":
                if isinstance(value, bool) or not isinstance(value, int):
                    reason = f"expected an integer, found {_kind(value)}"
            elif key == "category":
                if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
                    reason = f"expected a text or a list of texts, found {_kind(value)}"
            elif key == "beta":
                if not isinstance(value, bool) and str(value).lower() not in ("true", "false"):
                    reason = f"expected true or false, found {_kind(value)}"
            elif key == "compile":
                scripts = value if isinstance(value, list) else [value]
                if not all(item is None or isinstance(item, (bool, str)) for item in scripts):
                    reason = f"expected false or the scripts to compile, found {_kind(value)}"
                elif problems.strict and any(isinstance(item, str) and item.strip() for item in scripts):
                    reason = "wodmail does not compile scripts when it deploys: compile them in a create hook"
            if reason is not None:
                warn(setting, reason)

    # --- between workshops --------------------------------------------------------------

    def _range_setting(self, name: str) -> _Setting:
        return self.sources[name]["range"]

    def _refuse_overlaps(self, served: dict[str, Workshop]) -> None:
        reaching: Workshop | None = None  # the workshop seen so far whose range ends last
        for workshop in sorted(served.values(), key=lambda w: (w.first, w.last, w.name)):
            if reaching is not None and workshop.first <= reaching.last:
                setting = self._range_setting(workshop.name)
                raise ConfigError(
                    setting.file,
                    setting.key,
                    f"range {workshop.first}..{workshop.last} overlaps {reaching.name}'s range "
                    f"{reaching.first}..{reaching.last}",
                )
            if reaching is None or workshop.last > reaching.last:
                reaching = workshop

    def _warn_about_ranges(self, known: dict[str, Workshop], not_served: dict[str, str]) -> None:
        ranged = sorted(
            (w for w in known.values() if w.booked and w.name not in self.quiet),
            key=lambda w: (w.first, w.last, w.name),
        )
        for index, workshop in enumerate(ranged):
            for earlier in ranged[:index]:
                if earlier.last < workshop.first:
                    continue
                idle = [name for name in (workshop.name, earlier.name) if name in not_served]
                if not idle:
                    continue  # two served workshops: refused above
                setting = self._range_setting(workshop.name)
                why = "; ".join(f"{name} is not served: {not_served[name]}" for name in idle)
                self.warnings.append(
                    str(
                        ConfigError(
                            setting.file,
                            setting.key,
                            f"range {workshop.first}..{workshop.last} overlaps {earlier.name}'s range "
                            f"{earlier.first}..{earlier.last} ({why})",
                        )
                    )
                )
        for workshop in known.values():
            if workshop.name in self.quiet or workshop.capacity is None or not workshop.booked:
                continue
            size = workshop.last - workshop.first + 1
            if workshop.capacity > size:
                setting = self.sources[workshop.name]["capacity"]
                self.warnings.append(
                    str(
                        ConfigError(
                            setting.file,
                            setting.key,
                            f"capacity {workshop.capacity} is larger than the range "
                            f"{workshop.first}..{workshop.last} ({size} students)",
                        )
                    )
                )


def _range_hint(value: object) -> str:
    """How to write a range given as 52-91 or [52-91] (YAML reads the latter as one text)."""
    text = value[0] if isinstance(value, list) and len(value) == 1 else value
    match = _DASHED_RANGE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return ""
    written = f"[{text}]" if isinstance(value, list) else text
    return f" (write [{match.group(1)}, {match.group(2)}], not {written})"


def _flag_value(setting: _Setting, problems: _Problems, lenient: bool) -> bool:
    value = setting.value
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if lenient and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    problems(setting, f"expected true or false, found {_kind(value)}")
    return False


def _integer_setting(setting: _Setting | None, problems: _Problems, low: int, what: str) -> int | None:
    if setting is None or setting.value is None:
        return None
    value = setting.value
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        problems(setting, f"{what}, found {_kind(value) if not isinstance(value, int) else value}")
        return None
    return value


def _content_name(name: str) -> str:
    return "WKSHP-" + name.removeprefix("CHLG-") if name.startswith("CHLG-") else name


def _hooks(path: Path, name: str, value: object, convention_dir: Path) -> dict[str, Path]:
    hooks: dict[str, Path] = {}
    if value is not None:
        if not isinstance(value, dict):
            raise ConfigError(path, f"{name}.hooks", f"expected a mapping of verb: playbook, found {_kind(value)}")
        for verb, playbook in value.items():
            key = f"{name}.hooks.{verb}"
            if verb not in HOOK_VERBS:
                raise ConfigError(path, key, "unknown hook: expected " + ", ".join(HOOK_VERBS))
            if not isinstance(playbook, str) or not playbook.strip():
                raise ConfigError(path, key, f"expected a playbook path, found {_kind(playbook)}")
            where = _path_beside(path.parent, playbook.strip())
            if not where.is_file():
                raise ConfigError(path, key, f"the hook playbook {where} does not exist")
            hooks[verb] = where
    for verb in HOOK_VERBS:
        conventional = convention_dir / f"{verb}.yml"
        if verb not in hooks and conventional.is_file():
            hooks[verb] = conventional
    return hooks


def _variables(path: Path, name: str, value: object) -> dict[str, object]:
    key = f"{name}.variables"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(path, key, f"expected a mapping of NAME: value, found {_kind(value)}")
    variables: dict[str, object] = {}
    for var, item in value.items():
        if not isinstance(var, str):
            raise ConfigError(path, key, f"variable names must be strings, found {_kind(var)}")
        if not isinstance(item, _SCALARS):
            raise ConfigError(
                path,
                f"{key}.{var}",
                f"unknown key type: {_kind(item)} (variables are strings, numbers or booleans)",
            )
        variables[var] = item
    return variables


# --- variable files -----------------------------------------------------------------------

_VAULT_HEADER = "$ANSIBLE_VAULT;"


@dataclass(frozen=True)
class _Vaulted:
    """A value encrypted with ansible-vault (`!vault`), decrypted with VAULTPWD."""

    ciphertext: str


class _VariablesLoader(_Loader):
    """The location's loader, knowing Ansible's `!vault` tag."""


def _construct_vaulted(loader: yaml.SafeLoader, node: yaml.Node) -> _Vaulted:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "!vault applies to a single text value", node.start_mark)
    return _Vaulted(loader.construct_scalar(node))


_VariablesLoader.add_constructor("!vault", _construct_vaulted)


def read_variable_file(
    path: Path, duplicates: list[_DuplicateKey] | None = None, vault_password: str | None = None
) -> dict[str, object]:
    """The variables of a `variables_<NAME>.yml` file, as Ansible's include_vars read them.

    A mapping of NAME: value; values may be anything YAML holds (mappings keyed by student
    number, lists, ...); of a key given twice, the last counts (noted in `duplicates`).
    Values tagged `!vault`, or the whole file, may be encrypted with ansible-vault: they are
    decrypted with `vault_password` (the location's VAULTPWD). Raises `ConfigError` (file,
    key, reason) when the file cannot be used; a reason never shows a value (private files
    hold passwords).
    """
    text: str | None = None
    if _starts_with_vault(path):
        text = _decrypt(path, None, _read_text(path), vault_password)
    raw = _read_yaml(path, _VariablesLoader, [] if duplicates is None else duplicates, text)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path, None, f"expected a mapping of NAME: value, found {_kind(raw)}")
    variables: dict[str, object] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(path, str(key), f"variable names must be strings, found {_kind(key)}")
        variables[key] = _revealed(path, key, value, vault_password)
    return variables


def _starts_with_vault(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(_VAULT_HEADER)) == _VAULT_HEADER.encode()
    except OSError:
        return False  # _read_yaml says why


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None


def _revealed(path: Path, key: str, value: object, vault_password: str | None) -> object:
    """`value` with its `!vault` texts decrypted and `!unsafe` texts as plain strings."""
    if isinstance(value, _Vaulted):
        return _decrypt(path, key, value.ciphertext, vault_password)
    if isinstance(value, _Literal):
        return str(value)
    if isinstance(value, dict):
        return {item: _revealed(path, key, inner, vault_password) for item, inner in value.items()}
    if isinstance(value, list):
        return [_revealed(path, key, inner, vault_password) for inner in value]
    return value


def _decrypt(path: Path, key: str | None, ciphertext: str, vault_password: str | None) -> str:
    """Decrypt an ansible-vault text with ansible-core's own VaultLib (imported only here)."""
    what = "encrypted with ansible-vault" + (" (!vault)" if key else "")
    if vault_password is None:
        raise ConfigError(path, key, f"{what}: set VAULTPWD in the location (env:NAME or file:/path)")
    from ansible.errors import AnsibleError  # type: ignore[import-untyped,unused-ignore]
    from ansible.parsing.vault import VaultLib, VaultSecret  # type: ignore[import-untyped,unused-ignore]

    vault = VaultLib([("default", VaultSecret(vault_password.encode("utf-8")))])
    try:
        plain = vault.decrypt(ciphertext.strip())
    except (AnsibleError, ValueError):
        reason = "cannot be decrypted with VAULTPWD (a wrong password, or a damaged text)"
    else:
        try:
            return str(plain.decode("utf-8"))
        except UnicodeDecodeError:
            reason = "decrypted, but the result is not UTF-8 text"
    raise ConfigError(path, key, f"{what}: {reason}")


def _duplicate_warnings(path: Path, duplicates: list[_DuplicateKey]) -> list[str]:
    return [
        str(ConfigError(path, str(dup.key), f"given twice (lines {dup.first_line} and {dup.line}): the last counts"))
        for dup in duplicates
    ]
