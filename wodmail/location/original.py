"""The original backend's settings, read as they are: its files and its key names.

A site running the backend wodmail replaces (Workshops-on-Demand's wod-backend, installed
by wod-install) keeps its settings in the files the installer wrote, under the original's
names: /etc/wod.sh (shell `export` lines: WODSTUDDIR, WODNOBO, WODSCRIPTDIR, WODUSERMAX,
...), /etc/wod.yml (WODUSER, WODSENDER), the Ansible group variables (wod-backend's and
wod-install's `group_vars/all.yml`, the private `group_vars/all.yml` and
`group_vars/<WODGROUP>`, the generated `generated/<WODGROUP>`: WODAPIDBEXTURL, WODBEAPIURL,
WODBETOKEN, WODBASESTDID, ...) and wod-private's `scripts/wod-private.sh` (WODAPIDBUSER,
WODAPIDBUSERPWD). A location reads them in place with one key:

    WODCONFIG:            # read in this order: a later file's key overrides an earlier one's,
      - /etc/wod.sh       # as the original's `ansible-playbook -e @file ...` did; the
      - /etc/wod.yml      # location's own keys override them all
      - ...

A file whose name ends in `.sh` is read as the shell would set its variables, without
running it: `NAME=value` and `export NAME=value` lines, values bare, '...' or "..." with
$NAME and ${NAME} of earlier lines of the file put in; an assignment whose value runs
something (backquotes, `$(`) or names a variable the file did not set is not read (`check`
lists it); any other line (if/fi, commands) is the shell's and is passed over. Any other
file is YAML, KEY: value, as the location (a key given twice: the last counts, as Ansible
took it). The keys of these files are keys of the location, free keys included: they go
to the templates under their own names, as the original's notebooks use them; its secrets
(references.ORIGINAL_SECRET_KEYS: WODAPIDBUSERPWD, WODBETOKEN, ...) do not, as wodmail's own
never reach a template or a log.

Then each of the original's names is mapped to wodmail's (`ORIGINAL_NAMES`, newest name
first: the first one given counts), e.g. WODUSERMAX -> STUDENTMAX. Where wodmail's name is
given too, the two must agree: the same value is fine, a different one is a `ConfigError`
naming both (a site switching must not find on Monday that one of two values it wrote was
silently dropped; which one it meant only the operator knows). `wodmail check` prints every
mapping it made, one line each, never a secret's value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from wodmail.errors import ConfigError
from wodmail.location.keys import WODCONFIG
from wodmail.location.reading import DuplicateKey, check_value_types, kind, path_beside, read_yaml
from wodmail.location.references import Revealed

INCLUDE_KEY = WODCONFIG.name
"""The location key naming the original's settings files."""

ORIGINAL_NAMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # wodmail's key, then the original's names for it, newest first (the 2025 wod-install
    # names, then those of the backends before it).
    ("APIENDPOINT", ("WODAPIDBEXTURL", "WODAPIDBURL")),
    ("APIUSER", ("WODAPIDBUSER",)),
    ("APIPWD", ("WODAPIDBUSERPWD",)),
    ("JPHUBAPISRV", ("WODBEAPIURL",)),
    ("JPHUBTOKEN", ("WODBETOKEN",)),
    ("BASESTDID", ("WODBASESTDID",)),
    ("STUDENTMIN", ("WODUSERMIN", "USERMIN")),
    ("STUDENTMAX", ("WODUSERMAX", "USERMAX")),
    ("STUDENTDIR", ("WODSTUDDIR", "STUDDIR")),
    ("WORKSHOPDIR", ("WODNOBO",)),
    ("SCRIPTDIR", ("WODSCRIPTDIR",)),
    ("SCRIPTPRIVDIR", ("WODSCRIPTPRIVDIR",)),
    ("LDAPDMN", ("WODLDAPDMN",)),
    ("LDAPBINDPW", ("WODLDAPPWD", "LDAPPWD")),
    ("ACCOUNTUIDBASE", ("UIDBASE",)),
    ("ACCOUNTGIDBASE", ("GIDBASE",)),
    ("PBKDIR", ("WODGROUP",)),
    ("JPHOST", ("WODBEFQDN",)),
    ("JPHOSTEXT", ("WODBEEXTFQDN",)),
    ("JPIP", ("WODBEIP",)),
)
"""Each wodmail key the original gives under another name."""

VARIABLE_FOLDERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("VARDIR", ("WODANSIBLEDIR", "ANSIBLEDIR")),
    ("VARPRIVDIR", ("WODANSIBLEPRIVDIR", "ANSIBLEPRIVDIR")),
)
"""VARDIR and VARPRIVDIR: the original read variables_<NAME>.yml from <folder>/<WODGROUP>."""
GROUP_NAMES = ("WODGROUP", "PBKDIR")

_INTEGER_KEYS = frozenset({"STUDENTMIN", "STUDENTMAX", "BASESTDID", "ACCOUNTUIDBASE", "ACCOUNTGIDBASE"})
"""Numbers the original's shell files and quoted YAML give as text ("100")."""
_LDAP_HOSTS = ("WODLDAPSRVNAME", "LDAPSRVNAME")
_SHOWN_MAX = 100


@dataclass(frozen=True)
class Mapped:
    """One of wodmail's keys taken from the original's name for it."""

    key: str
    """wodmail's key, e.g. STUDENTMAX."""
    source: str
    """The original's key (or keys) it was made from, e.g. WODUSERMAX."""
    origin: str
    """Where the original's key was given (a file)."""
    shown: str
    """Its value as `check` shows it: never a secret's."""
    also_given: bool = False
    """wodmail's name was given too, with the same value."""


@dataclass(frozen=True)
class OriginalSettings:
    """What was read from the original's files and names, for `wodmail check`."""

    files: tuple[Path, ...]
    """The files WODCONFIG named, in the order read."""
    mapped: tuple[Mapped, ...]
    notes: tuple[str, ...]
    """What was passed over, and why (one line each)."""

    def report(self) -> list[str]:
        """`check`'s lines: the files, then one line per mapped key, then the notes."""
        where = f"; {INCLUDE_KEY} read, in this order:" if self.files else f" (no {INCLUDE_KEY})"
        lines = [f"the original's settings: {len(self.mapped)} key(s) mapped{where}"]
        lines.extend(f"  file {file}" for file in self.files)
        for item in self.mapped:
            also = f"; {item.key} is given too, with the same value" if item.also_given else ""
            lines.append(f"  {item.key:14} <- {item.source:26} {item.shown}  ({item.origin}{also})")
        lines.extend(f"  note: {note}" for note in self.notes)
        return lines

    def source_of(self, key: str) -> Mapped | None:
        return next((item for item in self.mapped if item.key == key), None)


@dataclass(frozen=True)
class Included:
    """The entries of the WODCONFIG files, merged in order, and where each came from."""

    entries: dict[str, object]
    origins: dict[str, Path]
    files: tuple[Path, ...]
    notes: tuple[str, ...]


def include_files(path: Path, entries: dict[str, object]) -> Included:
    """Read the files the location's WODCONFIG names (none: nothing); ConfigError if one is wrong."""
    given = entries.get(INCLUDE_KEY)
    if given is None:
        return Included({}, {}, (), ())
    files: list[Path] = []
    for item in given if isinstance(given, tuple) else (given,):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(path, INCLUDE_KEY, f"expected a file or a list of files, found {kind(item)}")
        files.append(path_beside(path.parent, item.strip()))
    merged: dict[str, object] = {}
    origins: dict[str, Path] = {}
    notes: list[str] = []
    for file in files:
        if file.suffix == ".sh":
            found, passed = read_shell_file(file)
            notes.extend(passed)
        else:
            found = _read_yaml_file(file)
        for key, value in found.items():
            merged[key] = value
            origins[key] = file
    for key in entries:
        origins.pop(key, None)  # the location's own keys override the files'
    return Included(merged, origins, tuple(files), tuple(notes))


def _read_yaml_file(file: Path) -> dict[str, object]:
    duplicates: list[DuplicateKey] = []  # the last counts, as Ansible took it
    raw = read_yaml(file, duplicates=duplicates)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(file, None, f"expected a mapping of KEY: value, found {kind(raw)}")
    return check_value_types(file, raw)


# --- shell files ---------------------------------------------------------------------------

_ASSIGNMENT = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)")


class _NotLiteral(Exception):
    """A shell value that is not plain text: the reason it is not read."""


def read_shell_file(file: Path) -> tuple[dict[str, object], list[str]]:
    """The variables a shell file such as /etc/wod.sh sets, read without running it; and the
    lines passed over (assignments whose value runs something or names an unknown variable)."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, None, "no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(file, None, "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(file, None, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    known: dict[str, str] = {}
    values: dict[str, object] = {}
    passed: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _ASSIGNMENT.fullmatch(line.strip())
        if match is None:
            continue  # a comment, if/fi, a command: the shell's, not a setting
        name, raw = match.groups()
        try:
            value, bare = _shell_word(raw, known)
        except _NotLiteral as why:
            passed.append(f"{file}: line {number}: {name} not read: {why}")
            continue
        known[name] = value
        # A bare number is a number, as YAML would read it; 0750 stays text (an octal mode).
        number_like = bare and value.isascii() and value.isdigit() and (value == "0" or not value.startswith("0"))
        values[name] = int(value) if number_like else value
    return values, passed


def _shell_word(raw: str, known: dict[str, str]) -> tuple[str, bool]:
    """The text of one shell word (the value of NAME=...), and whether it was bare (no quotes).
    Raises _NotLiteral when the shell would run something to make it."""
    out: list[str] = []
    quoted = False
    index, end = 0, len(raw)
    while index < end:
        char = raw[index]
        if char == "'":
            close = raw.find("'", index + 1)
            if close < 0:
                raise _NotLiteral("a quote is not closed")
            out.append(raw[index + 1 : close])
            quoted, index = True, close + 1
        elif char == '"':
            index = _double_quoted(raw, index + 1, known, out)
            quoted = True
        elif char in " \t;":
            rest = raw[index:].strip()
            if rest and not rest.startswith(("#", ";")):
                raise _NotLiteral("more than one word (a command follows the value)")
            break
        elif char == "`":
            raise _NotLiteral("its value runs a command")
        elif char == "\\" and index + 1 < end:
            out.append(raw[index + 1])
            index += 2
        elif char == "$":
            index = _expand(raw, index, known, out)
        elif char in "|&<>()":
            raise _NotLiteral("its value runs a command")
        else:
            out.append(char)
            index += 1
    return "".join(out), not quoted


def _double_quoted(raw: str, index: int, known: dict[str, str], out: list[str]) -> int:
    while index < len(raw):
        char = raw[index]
        if char == '"':
            return index + 1
        if char == "`":
            raise _NotLiteral("its value runs a command")
        if char == "\\" and index + 1 < len(raw) and raw[index + 1] in '$`"\\':
            out.append(raw[index + 1])
            index += 2
        elif char == "$":
            index = _expand(raw, index, known, out)
        else:
            out.append(char)
            index += 1
    raise _NotLiteral("a quote is not closed")


def _expand(raw: str, index: int, known: dict[str, str], out: list[str]) -> int:
    """$NAME or ${NAME} at `index`: a variable set earlier in the file; the index after it."""
    match = _NAME.match(raw, index + 1)
    if match is None:
        if raw.startswith("$(", index):
            raise _NotLiteral("its value runs a command")
        out.append("$")
        return index + 1
    name = match.group(1) or match.group(2)
    if name not in known:
        raise _NotLiteral(f"it uses ${name}, which the file does not set before it")
    out.append(known[name])
    return match.end()


# --- mapping ---------------------------------------------------------------------------------


def map_original_names(path: Path, revealed: Revealed, included: Included) -> tuple[Revealed, OriginalSettings | None]:
    """Give wodmail's keys the values the original gives under its names (ORIGINAL_NAMES,
    VARIABLE_FOLDERS); the original's keys stay as they are. ConfigError on a conflict."""
    values = dict(revealed.values)
    hidden = set(revealed.hidden)
    secret_items = dict(revealed.secret_items)
    mapped: list[Mapped] = []
    notes = list(included.notes)

    def origin(key: str) -> str:
        return str(included.origins.get(key, path))

    def shown(key: str, value: object) -> str:
        if key in hidden:
            return "(a secret, not shown)"
        text = repr(value)
        return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."

    for target, names in ORIGINAL_NAMES:
        source = next((name for name in names if values.get(name) is not None), None)
        if source is None:
            continue
        value = values[source]
        if target in _INTEGER_KEYS and isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        current = values.get(target)
        if current is not None:
            if _text(current) != _text(value):
                raise ConfigError(
                    origin(target),
                    target,
                    f"given as {target} and as the original's {source} ({origin(source)}) with different values:"
                    " they are the same setting, keep one",
                )
            mapped.append(Mapped(target, source, origin(source), shown(source, value), also_given=True))
            continue
        values[target] = value
        if source in hidden:
            hidden.add(target)
        secret_items[target] = secret_items.get(source, (False,))
        mapped.append(Mapped(target, source, origin(source), shown(source, value)))

    group = next((name for name in GROUP_NAMES if values.get(name) is not None), None)
    for target, folders in VARIABLE_FOLDERS:
        folder = next((name for name in folders if values.get(name) is not None), None)
        if folder is None or group is None or values.get(target) is not None:
            continue
        candidate = path_beside(path.parent, os.path.join(str(values[folder]), str(values[group])))
        if candidate.is_dir():
            values[target] = str(candidate)
            mapped.append(Mapped(target, f"{folder}/{group}", origin(folder), repr(str(candidate))))
        else:
            notes.append(f"{target} not set from {folder}/{group}: {candidate} is not a folder")

    ldap_host = next((name for name in _LDAP_HOSTS if values.get(name) is not None), None)
    if ldap_host is not None and values.get("LDAPURI") is None:
        notes.append(
            f"LDAPURI is not set, so the original's {ldap_host} is not used: for `ldap` workshops set"
            f" LDAPURI: ldap://{{{{ {ldap_host} }}}}:<port> and LDAPBINDDN (the original bound as cn=Directory Manager)"
        )
    if not included.files and not mapped and not notes:
        return revealed, None
    settings = OriginalSettings(included.files, tuple(mapped), tuple(notes))
    return Revealed(values, frozenset(hidden), secret_items), settings


def mapping_table() -> str:
    """The mapping as a Markdown table (docs/migrating.md holds it; tests/test_migration.py
    fails when they part)."""
    rows = ["| wodmail's key | the original's names (the first one given counts) |", "| --- | --- |"]
    rows.extend(f"| {target} | {', '.join(names)} |" for target, names in ORIGINAL_NAMES)
    rows.extend(
        f"| {target} | {folders[0]}/{GROUP_NAMES[0]} (older: {folders[1]}/{GROUP_NAMES[1]}), when that folder exists |"
        for target, folders in VARIABLE_FOLDERS
    )
    return "\n".join(rows)


def _text(value: object) -> object:
    """How two values are compared: as the text they would be in a shell or a template."""
    if isinstance(value, tuple):
        return tuple(str(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def explained(
    error: ConfigError, location_file: Path, included: Included, original: OriginalSettings | None
) -> ConfigError:
    """`error` told where the operator wrote the value: the original's file and name, when the
    key came from there."""
    if error.key is None or error.file != str(location_file):
        return error
    key = error.key
    item = original.source_of(key) if original is not None else None
    if item is not None and not item.also_given and "/" not in item.source:
        return ConfigError(item.origin, item.source, f"as wodmail's {key}: {error.reason}")
    if item is None and key in included.origins:
        return ConfigError(included.origins[key], key, error.reason)
    return error
