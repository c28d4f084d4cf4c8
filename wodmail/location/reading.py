"""Reading the location's YAML files: duplicate keys, `!unsafe` literals, variable files with vault.

Every reader here turns a mistake into a `ConfigError` whose message is one line, "file:
key: reason", and never quotes a value (a file may hold a password).
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from wodmail.errors import ConfigError

SCALARS = (str, int, float, bool, type(None))
"""What a location value (or a list item, or a workshop variable) may be."""


def path_beside(base: Path, text: str) -> Path:
    """The one rule for a path a location gives: ~ expanded, relative to `base` (the folder of
    the file that names it), ".." folded away (symbolic links are left as they are)."""
    return Path(os.path.normpath(base / os.path.expanduser(text)))


class DuplicateKey(Exception):
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


class Loader(_SafeLoader):
    """SafeLoader that refuses duplicate keys and keeps dates as plain text.

    With `duplicates` set to a list, a duplicate key is noted there instead (the last one
    counts, as Ansible and the catalog's other readers took it)."""

    duplicates: list[DuplicateKey] | None = None

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
                    raise DuplicateKey(key, line, seen[key])
                self.duplicates.append(DuplicateKey(key, line, seen[key]))
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class LiteralText(str):
    """Text tagged `!unsafe` (as in Ansible): taken as written, no references, no secrets."""


def _construct_literal(loader: yaml.SafeLoader, node: yaml.Node) -> LiteralText:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "!unsafe applies to a single text value", node.start_mark)
    return LiteralText(loader.construct_scalar(node))


Loader.add_constructor("!unsafe", _construct_literal)

# A date-looking free value (2024-05-01) stays the text the operator wrote.
Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(
    path: Path,
    loader: type[Loader] = Loader,
    duplicates: list[DuplicateKey] | None = None,
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
    except DuplicateKey as dup:
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


def kind(value: object) -> str:
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


def check_value_types(path: Path, raw: dict[Any, Any]) -> dict[str, object]:
    """The file's entries, keys checked to be strings and values scalars or flat lists."""
    entries: dict[str, object] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(path, str(key), f"keys must be strings, found {kind(key)}")
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, SCALARS):
                    raise ConfigError(
                        path,
                        key,
                        f"unknown key type: a list holding {kind(item)} (lists hold strings, numbers or booleans)",
                    )
            entries[key] = tuple(value)
        elif isinstance(value, SCALARS):
            entries[key] = value
        else:
            raise ConfigError(
                path,
                key,
                f"unknown key type: {kind(value)} (values are strings, numbers, booleans or lists of those)",
            )
    return entries


# --- variable files -----------------------------------------------------------------------

_VAULT_HEADER = "$ANSIBLE_VAULT;"


@dataclass(frozen=True)
class _Vaulted:
    """A value encrypted with ansible-vault (`!vault`), decrypted with VAULTPWD."""

    ciphertext: str


class VariablesLoader(Loader):
    """The location's loader, knowing Ansible's `!vault` tag."""


def _construct_vaulted(loader: yaml.SafeLoader, node: yaml.Node) -> _Vaulted:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "!vault applies to a single text value", node.start_mark)
    return _Vaulted(loader.construct_scalar(node))


VariablesLoader.add_constructor("!vault", _construct_vaulted)


def read_variable_file(
    path: Path, duplicates: list[DuplicateKey] | None = None, vault_password: str | None = None
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
    raw = read_yaml(path, VariablesLoader, [] if duplicates is None else duplicates, text)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path, None, f"expected a mapping of NAME: value, found {kind(raw)}")
    variables: dict[str, object] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(path, str(key), f"variable names must be strings, found {kind(key)}")
        variables[key] = _revealed(path, key, value, vault_password)
    return variables


def _starts_with_vault(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(_VAULT_HEADER)) == _VAULT_HEADER.encode()
    except OSError:
        return False  # read_yaml says why


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None


def _revealed(path: Path, key: str, value: object, vault_password: str | None) -> object:
    """`value` with its `!vault` texts decrypted and `!unsafe` texts as plain strings."""
    if isinstance(value, _Vaulted):
        return _decrypt(path, key, value.ciphertext, vault_password)
    if isinstance(value, LiteralText):
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


def duplicate_warnings(path: Path, duplicates: list[DuplicateKey]) -> list[str]:
    return [
        str(ConfigError(path, str(dup.key), f"given twice (lines {dup.first_line} and {dup.line}): the last counts"))
        for dup in duplicates
    ]
