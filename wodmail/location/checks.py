"""How a key's value is checked: one checker per type, and the reader that runs them.

A checker gets a value that is present (not null) and returns it typed, or fails with a
`ConfigError` "file: KEY: reason". A reason shows a bad value only when the key never held
a secret.
"""

from __future__ import annotations

import ipaddress
import pwd
import re
from collections.abc import Callable, Iterator, Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar, cast

from wodmail.errors import ConfigError
from wodmail.location.reading import kind, path_beside

T = TypeVar("T")

Network = IPv4Network | IPv6Network


class KeyReader:
    """The resolved values of one location file, and how a mistake in them is reported."""

    def __init__(
        self,
        file: Path,
        values: Mapping[str, object],
        hidden: frozenset[str],
        secret_items: Mapping[str, tuple[bool, ...]] | None = None,
    ) -> None:
        self.file = file
        self.values = values
        self.hidden = hidden
        """Keys never shown in a reason: they are, or came from, a secret."""
        self.secret_items = secret_items or {}
        """Per key, whether each item came from an `env:` or `file:` secret."""

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ConfigError(self.file, key, reason)

    def shown(self, key: str, value: object) -> str:
        """How a bad value appears in a reason: never when it is (or came from) a secret."""
        if key in self.hidden:
            return "(a secret, not shown)"
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    def path(self, text: str) -> Path:
        """A path the location gives, by the one rule: relative to the location file's folder."""
        return path_beside(self.file.parent, text)


Check = Callable[[KeyReader, str, object], T]
"""A checker: (reader, key, a present value) -> the typed value."""


class Key(Generic[T]):
    """One key wodmail reads: its name, its type (the checker), its default, what it is for.

    `default` is the value when the key is absent or null (None: none); `required`, when set,
    says what the key is ("missing: <text>" when absent); `fallback` computes a default from
    the host (login.defs, the euid, ...). (Plain classes, here and for the checkers: a
    dataclass costs a process start more, and `wodmail deliver` is one process per mail.)"""

    __slots__ = ("check", "default", "doc", "fallback", "name", "required")

    def __init__(
        self,
        name: str,
        check: Check[T],
        default: T | None = None,
        doc: str = "",
        required: str | None = None,
        fallback: Callable[[], T] | None = None,
    ) -> None:
        self.name = name
        self.check = check
        self.default = default
        self.doc = doc
        self.required = required
        self.fallback = fallback

    def __repr__(self) -> str:
        return f"Key({self.name!r})"

    @property
    def standard(self) -> T:
        """The default, for code that builds a setting without a location (tests, tools)."""
        assert self.default is not None
        return self.default

    def read(self, reader: KeyReader) -> T | None:
        value = reader.values.get(self.name)
        if value is None:
            if self.required is not None:
                reader.fail(self.name, f"missing: {self.required}")
            return self.fallback() if self.fallback is not None else self.default
        return self.check(reader, self.name, value)


class Checked:
    """The typed value of every declared key of one location, read once."""

    def __init__(self, reader: KeyReader, keys: Iterator[Key[Any]] | tuple[Key[Any], ...]) -> None:
        self.reader = reader
        self._values: dict[str, object] = {key.name: key.read(reader) for key in keys}

    def __getitem__(self, key: Key[T]) -> T:
        return cast(T, self._values[key.name])

    def fail(self, key: Key[Any] | str, reason: str) -> NoReturn:
        self.reader.fail(key if isinstance(key, str) else key.name, reason)

    def shown(self, key: Key[Any] | str, value: object) -> str:
        return self.reader.shown(key if isinstance(key, str) else key.name, value)


def items(value: object) -> tuple[object, ...]:
    """A list key's items: a single value is a list of one."""
    return value if isinstance(value, tuple) else (value,)


# --- the checkers ------------------------------------------------------------------------


class Integer:
    """A whole number low..high (high None: no upper bound); `unit` is said after the bounds,
    e.g. " (seconds)"; `expected` replaces "an integer low..high" in a reason."""

    def __init__(self, low: int, high: int | None = None, unit: str = "", expected: str | None = None) -> None:
        self.low, self.high, self.unit, self.expected = low, high, unit, expected

    def __call__(self, reader: KeyReader, key: str, value: object) -> int:
        bounds = f"{self.low}..{self.high}" if self.high is not None else f">= {self.low}"
        expected = self.expected or f"an integer {bounds}{self.unit}"
        if isinstance(value, bool) or not isinstance(value, int):
            hint = " (remove the quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
            reader.fail(key, f"expected {expected}, found {reader.shown(key, value)}{hint}")
        if value < self.low or (self.high is not None and value > self.high):
            reader.fail(key, f"expected {expected}, found {reader.shown(key, value)}")
        return value


class Seconds:
    """A duration in seconds (an integer or a decimal number): at least `low`, or more than
    it when `inclusive` is false."""

    def __init__(self, low: float = 0.0, inclusive: bool = False) -> None:
        self.low, self.inclusive = low, inclusive

    def __call__(self, reader: KeyReader, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            reader.fail(key, f"expected a number of seconds, found {reader.shown(key, value)}")
        if value < self.low or (not self.inclusive and value == self.low):
            bound = "at least" if self.inclusive else "more than"
            reader.fail(key, f"must be {bound} {self.low:g} seconds, found {reader.shown(key, value)}")
        return float(value)


def flag(reader: KeyReader, key: str, value: object) -> bool:
    """true or false (YAML booleans only)."""
    if not isinstance(value, bool):
        reader.fail(key, f"expected true or false, found {reader.shown(key, value)}")
    return value


def text(reader: KeyReader, key: str, value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        reader.fail(key, f"expected a string, found {kind(value)} (quote it)")
    if not value.strip():
        reader.fail(key, "is empty")
    return value


def free(reader: KeyReader, key: str, value: object) -> object:
    """Any value: a site key wodmail only shows or passes on."""
    return value


class Choice:
    """One of a few words."""

    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options

    def __call__(self, reader: KeyReader, key: str, value: object) -> str:
        word = text(reader, key, value)
        if word not in self.options:
            joined = " or ".join(self.options) if len(self.options) == 2 else ", ".join(self.options)
            reader.fail(key, "expected " + joined)
        return word


class PathValue:
    """A path (relative: to the location file's folder); `must` "dir" or "file": it must be
    one, else `reason` ({path}: the path)."""

    def __init__(self, must: str | None = None, reason: str = "") -> None:
        self.must, self.reason = must, reason

    def __call__(self, reader: KeyReader, key: str, value: object) -> Path:
        path = reader.path(text(reader, key, value))
        exists = {"dir": Path.is_dir, "file": Path.is_file}.get(self.must or "")
        if exists is not None and not exists(path):
            default = "{path} is not a directory" if self.must == "dir" else "{path} is not a file"
            reader.fail(key, (self.reason or default).format(path=path))
        return path


class Url:
    """A URL with one of `schemes`, no spaces; kept without its trailing slash."""

    def __init__(self, schemes: tuple[str, ...]) -> None:
        self.schemes = schemes

    def __call__(self, reader: KeyReader, key: str, value: object) -> str:
        url = text(reader, key, value)
        if not url.startswith(self.schemes) or url.rstrip("/") in self.schemes:
            reader.fail(key, "must be a URL starting with " + " or ".join(self.schemes))
        if any(ch.isspace() for ch in url):
            reader.fail(key, "a URL holds no spaces")
        return url.rstrip("/")


class Networks:
    """IP addresses or networks, and whether the word "local" was given (when allowed)."""

    def __init__(self, allow_local: bool) -> None:
        self.allow_local = allow_local

    def __call__(self, reader: KeyReader, key: str, value: object) -> tuple[tuple[Network, ...], bool]:
        networks: list[Network] = []
        local = False
        for item in items(value):
            if self.allow_local and item == "local":
                local = True
                continue
            if not isinstance(item, str):
                reader.fail(key, f"expected IP addresses or networks, found {kind(item)}")
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                extra = ' or the word "local"' if self.allow_local else ""
                reader.fail(
                    key,
                    f"{reader.shown(key, item)} is not an IP address or network (e.g. 192.0.2.10, 10.0.0.0/8){extra}",
                )
        return tuple(networks), local


def senders(reader: KeyReader, key: str, value: object) -> tuple[str, ...]:
    """Mail addresses and "@domain" entries, lower-cased."""
    found: list[str] = []
    for item in items(value):
        if not isinstance(item, str):
            reader.fail(key, f"expected addresses or @domain entries, found {kind(item)}")
        entry = item.strip().lower()
        local, at, domain = entry.rpartition("@")
        plain = at and domain and "@" not in local and not any(ch.isspace() for ch in entry)
        if not plain:
            reader.fail(key, f"{reader.shown(key, item)} is neither an address nor an @domain")
        found.append(entry)
    return tuple(found)


def names(reader: KeyReader, key: str, value: object) -> tuple[str, ...]:
    """A name or a list of names (non-empty strings without spaces)."""
    found: list[str] = []
    for item in items(value):
        if not isinstance(item, str) or not item.strip() or any(ch.isspace() for ch in item.strip()):
            reader.fail(key, f"expected names, found {reader.shown(key, item)}")
        found.append(item.strip())
    return tuple(found)


def users(reader: KeyReader, key: str, value: object) -> frozenset[int]:
    """User names or numeric uids, as uids."""
    uids: set[int] = set()
    for item in items(value):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            uids.add(item)
            continue
        if not isinstance(item, str) or not item.strip():
            reader.fail(key, f"expected user names or uids, found {reader.shown(key, item)}")
        name = item.strip()
        if name.isdigit():
            uids.add(int(name))
            continue
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            reader.fail(key, f"no user {reader.shown(key, name)} on this host")
    return frozenset(uids)


def secrets(reader: KeyReader, key: str, value: object) -> tuple[str, ...]:
    """One or more secrets: non-empty strings."""
    found: list[str] = []
    for index, item in enumerate(items(value), start=1):
        if not isinstance(item, str) or not item:
            reader.fail(key, f"item {index} must be a non-empty string (quote it)")
        found.append(item)
    return tuple(found)


_FIXED_OWNER = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")
_MODE = re.compile(r"0?[0-7]{3}")


def owner(reader: KeyReader, key: str, value: object) -> str:
    """student, none or UID:GID."""
    if not isinstance(value, str) or not (value in ("student", "none") or _FIXED_OWNER.fullmatch(value)):
        reader.fail(key, "must be student, none or UID:GID (numbers)")
    return value


def mode(reader: KeyReader, key: str, value: object) -> int:
    """An octal file mode written as text ("0750")."""
    if not isinstance(value, str) or not _MODE.fullmatch(value):
        reader.fail(key, 'must be an octal mode in quotes, e.g. "0750"')
    return int(value, 8)
