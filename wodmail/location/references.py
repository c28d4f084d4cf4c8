"""`{{ KEY }}` references between the keys of one location file, and `env:`/`file:` secrets.

A value that is one reference takes the referred value as it is (an integer stays an
integer), as Ansible does; a reference inside a text is put in as text. Then a value
written `env:NAME` is replaced by that environment variable, and `file:/path` by the file's
content (its last line break removed; a relative path is beside the location file). A
value tagged `!unsafe` is neither.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from wodmail.errors import ConfigError
from wodmail.location.reading import LiteralText, path_beside

SECRET_KEYS = frozenset({"APIPWD", "JPHUBTOKEN", "LDAPBINDPW", "METRICSTOKEN", "SIGNINGKEYS", "VAULTPWD"})
"""Keys whose values are never handed to templates."""

# The original backend's secrets (wodmail.location.original): kept from templates and logs too.
ORIGINAL_SECRET_KEYS = frozenset(
    {"WODAPIDBUSERPWD", "WODAPIDBADMINPWD", "WODBETOKEN", "WODLDAPPWD", "LDAPPWD", "WODPGPASSWD", "WODSENDGRIDAPIKEY"}
)
SECRET_KEYS = SECRET_KEYS | ORIGINAL_SECRET_KEYS

_REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_JINJA = re.compile(r"\{\{|\{%|\{#")
_ENV_SECRET = re.compile(r"env:(.*)", re.DOTALL)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILE_SECRET = re.compile(r"file:(.*)", re.DOTALL)


class References:
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
        if isinstance(value, LiteralText):
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


@dataclass(frozen=True)
class Revealed:
    """A location's values with their secrets read, and which of them were secrets."""

    values: dict[str, object]
    """Every key, references and secrets resolved; lists as tuples."""
    hidden: frozenset[str]
    """SECRET_KEYS and every key that held an `env:` or `file:` secret: never shown in a reason."""
    secret_items: dict[str, tuple[bool, ...]]
    """Per key, whether each item (a scalar is one item) came from an `env:` or `file:` secret."""


def reveal_secrets(path: Path, values: dict[str, object]) -> Revealed:
    """Values with `env:NAME` and `file:/path` replaced; and which items held a secret."""
    revealed: dict[str, object] = {}
    flags: dict[str, tuple[bool, ...]] = {}
    for key, value in values.items():
        if isinstance(value, tuple):
            items = [_reveal(path, key, item) for item in value]
            revealed[key] = tuple(item for item, _ in items)
            flags[key] = tuple(secret for _, secret in items)
        else:
            revealed[key], secret = _reveal(path, key, value)
            flags[key] = (secret,)
    hidden = SECRET_KEYS | {key for key, secret in flags.items() if any(secret)}
    return Revealed(revealed, hidden, flags)


def _reveal(path: Path, key: str, value: object) -> tuple[object, bool]:
    if isinstance(value, LiteralText):
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
        where = path_beside(path.parent, name)
        try:
            content = where.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(path, key, f"secret file {where} is not UTF-8 text") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(path, key, f"cannot read secret file {where}: {reason}") from None
        return content.rstrip("\r\n"), True
    return value, False
