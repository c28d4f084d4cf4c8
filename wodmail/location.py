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

`load_location` reads and checks both files at start-up; every mistake is a `ConfigError`
whose message is one line: "file: key: reason". A reason never carries a secret.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import yaml

from wodmail import resources
from wodmail.command import WORKSHOP_RE
from wodmail.errors import ConfigError

SECRET_KEYS = frozenset({"APIPWD", "JPHUBTOKEN", "LDAPBINDPW", "SIGNINGKEYS"})
"""Keys whose values are never handed to templates."""

LIST_KEYS = frozenset({"LEGACYPEERS", "TRUSTEDPEERS", "TRUSTEDSENDERS", "SIGNINGKEYS"})
"""wodmail's own keys that take a list (free keys may hold lists too)."""

HOOK_VERBS = ("create", "cleanup", "reset")
"""The verbs a workshop may hook a playbook to."""

WORKSHOP_KEYS = frozenset({"range", "reset", "ldap", "varpass", "id", "hooks", "variables"})
INFORMATIONAL_KEYS = frozenset({"capacity", "active", "description", "duration"})
"""Entry keys the registration app's export carries; tolerated and ignored."""

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
    """One workshop as the workshops file books it."""

    name: str
    """The key in the workshops file: "WKSHP-Name" or "CHLG-Name"."""
    first: int
    """The first student of the booked range."""
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


@dataclass(frozen=True)
class Location:
    """One site's configuration, checked: what the daemon needs, and what templates see."""

    file: Path
    """The location file (absolute)."""
    name: str
    """The file's stem, e.g. "local", "production"."""
    values: Mapping[str, object] = field(hash=False)
    """Every key of the file, references and secrets resolved; lists as tuples."""
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
    """Whether `wodmail deliver` (a pipe from the local MTA) may send unsigned commands."""
    trusted_senders: tuple[str, ...]
    """Lower-cased addresses and "@domain" entries; empty: any sender from a trusted peer."""
    api_endpoint: str | None
    """The registration app's API, no trailing slash; None: no callbacks."""
    api_user: str | None
    api_password: str | None
    hub_url: str | None
    """JupyterHub's API server, no trailing slash; None: no JupyterHub calls."""
    hub_token: str | None
    workers: int
    max_message_size: int
    ldap_uri: str | None

    def template_variables(self) -> dict[str, object]:
        """Every key of the location except the secrets (SECRET_KEYS)."""
        return {key: value for key, value in self.values.items() if key not in SECRET_KEYS}

    def peer_is_trusted(self, address: str) -> bool:
        """Whether `address` may send unsigned commands on SMTPPORT (a bad address: no)."""
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
        """The workshop booked under `name`, or None."""
        return self.workshops.get(name)

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


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and keeps dates as plain text."""

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
                raise _DuplicateKey(key, line, seen[key])
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


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
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
            cycle = [*self.stack[self.stack.index(key):], key]
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
    assert base_stdid is not None and workers is not None and max_message_size is not None

    legacy = keys.networks("LEGACYPEERS", allow_local=False)
    trusted = keys.networks("TRUSTEDPEERS", allow_local=True)
    trusted_senders = keys.senders("TRUSTEDSENDERS")
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

    workshops_file = keys.path("WORKSHOPS") or path.parent / "workshops.yaml"
    if not workshops_file.is_file():
        keys.fail("WORKSHOPS", f"the workshops file {workshops_file} does not exist")
    workshops = _load_workshops(
        workshops_file,
        workshop_dir=workshop_dir,
        playbook_dir=playbook_dir,
        student_min=student_min,
        student_max=student_max,
        ldap_uri=ldap_uri,
    )

    return Location(
        file=path,
        name=path.stem,
        values=MappingProxyType(values),
        workshops=MappingProxyType(workshops),
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
    )


def _address_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        parsed: IPv4Address | IPv6Address = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped  # a dual-stack listener sees ::ffff:127.0.0.1
    return any(parsed in network for network in networks)


# --- the workshops file -------------------------------------------------------------------


def _load_workshops(
    path: Path,
    *,
    workshop_dir: Path,
    playbook_dir: Path,
    student_min: int,
    student_max: int,
    ldap_uri: str | None,
) -> dict[str, Workshop]:
    raw = _read_yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path, None, f"expected a mapping of workshop name: entry, found {_kind(raw)}")
    workshops: dict[str, Workshop] = {}
    for name, entry in raw.items():
        workshop = _workshop(path, name, entry, workshop_dir, playbook_dir, (student_min, student_max))
        if workshop.ldap and ldap_uri is None:
            raise ConfigError(path, f"{name}.ldap", "the workshop needs LDAP but the location sets no LDAPURI")
        workshops[workshop.name] = workshop
    _refuse_overlaps(path, workshops)
    return workshops


def _workshop(
    path: Path,
    name: object,
    entry: object,
    workshop_dir: Path,
    playbook_dir: Path,
    limits: tuple[int, int],
) -> Workshop:
    if not isinstance(name, str) or not WORKSHOP_RE.fullmatch(name) or ".." in name:
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise ConfigError(
            path,
            shown,
            "not a workshop name: expected WKSHP- or CHLG- followed by letters, digits, '-', '_' or '.'",
        )
    if entry is None:
        raise ConfigError(path, name, "empty entry: a workshop needs at least `range: [first, last]`")
    if not isinstance(entry, dict):
        raise ConfigError(path, name, f"expected a mapping of settings, found {_kind(entry)}")
    for key in entry:
        if key not in WORKSHOP_KEYS and key not in INFORMATIONAL_KEYS:
            known = ", ".join(sorted(WORKSHOP_KEYS | INFORMATIONAL_KEYS))
            raise ConfigError(path, f"{name}.{key}", f"unknown key (known: {known})")

    first, last = _range(path, name, entry.get("range"), limits)
    flags = {flag: _flag(path, name, entry, flag) for flag in ("reset", "ldap", "varpass")}
    app_id = entry.get("id")
    if app_id is not None and (isinstance(app_id, bool) or not isinstance(app_id, int)):
        raise ConfigError(
            path,
            f"{name}.id",
            f"expected the registration app's workshop id (an integer), found {_kind(app_id)}",
        )

    content = workshop_dir / _content_name(name)
    if not content.is_dir():
        raise ConfigError(path, name, f"workshop without content: {content} is not a directory")
    hooks = _hooks(path, name, entry.get("hooks"), playbook_dir / _content_name(name))
    variables = _variables(path, name, entry.get("variables"))
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
    )


def _content_name(name: str) -> str:
    return "WKSHP-" + name.removeprefix("CHLG-") if name.startswith("CHLG-") else name


def _range(path: Path, name: str, value: object, limits: tuple[int, int]) -> tuple[int, int]:
    key = f"{name}.range"
    if value is None:
        raise ConfigError(path, key, "missing: the booked students, as [first, last]")
    if (
        not isinstance(value, list)
        or len(value) != 2
        or any(isinstance(end, bool) or not isinstance(end, int) for end in value)
    ):
        raise ConfigError(path, key, "expected [first, last], two student numbers")
    first, last = value
    if first > last:
        raise ConfigError(path, key, f"range {first}..{last} ends before it starts")
    low, high = limits
    if first < low or last > high:
        raise ConfigError(path, key, f"range {first}..{last} is outside STUDENTMIN..STUDENTMAX ({low}..{high})")
    return first, last


def _flag(path: Path, name: str, entry: dict[Any, Any], flag: str) -> bool:
    value = entry.get(flag, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(path, f"{name}.{flag}", f"expected true or false, found {_kind(value)}")
    return value


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


def _refuse_overlaps(path: Path, workshops: dict[str, Workshop]) -> None:
    reaching: Workshop | None = None  # the workshop seen so far whose range ends last
    for workshop in sorted(workshops.values(), key=lambda w: (w.first, w.last, w.name)):
        if reaching is not None and workshop.first <= reaching.last:
            raise ConfigError(
                path,
                f"{workshop.name}.range",
                f"range {workshop.first}..{workshop.last} overlaps {reaching.name}'s range "
                f"{reaching.first}..{reaching.last}",
            )
        if reaching is None or workshop.last > reaching.last:
            reaching = workshop
