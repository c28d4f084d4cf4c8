"""One workshop's settings as its files give them (`Setting`, `Entry`), where their mistakes
go (`Problems`: raised for a served workshop, warnings otherwise), and the checks of each
value: flags, integers, hooks, variables and the informational keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wodmail.errors import ConfigError
from wodmail.location.reading import SCALARS, kind, path_beside
from wodmail.location.workshops import HOOK_VERBS

FLAGS = ("reset", "ldap", "varpass", "monoappliance", "multiappliance")
"""The workshop settings that are true or false."""


@dataclass(frozen=True)
class Setting:
    """One workshop setting, and where it is written (for messages)."""

    value: object
    file: Path
    key: str
    """The key as messages name it: `range` in a wod.yml, `WKSHP-X.range` in the workshops file."""


@dataclass
class Entry:
    """One workshop's settings: its wod.yml's, overridden key by key by the workshops file's."""

    name: str
    settings: dict[str, Setting]
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


class Problems:
    """Mistakes in one workshop: raised when it is served (`strict`), else kept as warnings."""

    def __init__(self, strict: bool, warnings: list[str]) -> None:
        self.strict = strict
        self.warnings = warnings

    def report(self, error: ConfigError) -> None:
        """Raise `error` (strict), or keep it as a warning."""
        if self.strict:
            raise error
        self.warnings.append(str(error))

    def __call__(self, setting: Setting, reason: str) -> None:
        """Report `reason` as a mistake of `setting`, naming its file and key."""
        self.report(ConfigError(setting.file, setting.key, reason))


def check_informational(entry: Entry, problems: Problems) -> None:
    """Keys wodmail only shows: a malformed one warns, served or not."""
    warn = Problems(False, problems.warnings)
    for key, setting in entry.settings.items():
        value = setting.value
        reason = None
        if key in ("name", "description", "location"):
            if not isinstance(value, str):
                reason = f"expected a text, found {kind(value)}"
        elif key == "duration":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                reason = f"expected a number of hours, found {kind(value)}"
        elif key == "priority":
            if isinstance(value, bool) or not isinstance(value, int):
                reason = f"expected an integer, found {kind(value)}"
        elif key == "category":
            if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
                reason = f"expected a text or a list of texts, found {kind(value)}"
        elif key == "beta":
            if not isinstance(value, bool) and str(value).lower() not in ("true", "false"):
                reason = f"expected true or false, found {kind(value)}"
        elif key == "compile":
            scripts = value if isinstance(value, list) else [value]
            if not all(item is None or isinstance(item, (bool, str)) for item in scripts):
                reason = f"expected false or the scripts to compile, found {kind(value)}"
        if reason is not None:
            warn(setting, reason)


def flag_value(setting: Setting, problems: Problems, lenient: bool) -> bool:
    """A true/false setting (`lenient`: "true"/"false" as text too); False if malformed."""
    value = setting.value
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if lenient and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    problems(setting, f"expected true or false, found {kind(value)}")
    return False


def integer_setting(setting: Setting | None, problems: Problems, low: int, what: str) -> int | None:
    """An integer setting of at least `low`; None if absent or malformed."""
    if setting is None or setting.value is None:
        return None
    value = setting.value
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        problems(setting, f"{what}, found {kind(value) if not isinstance(value, int) else value}")
        return None
    return value


def hooks_of(path: Path, name: str, value: object, convention_dir: Path) -> dict[str, Path]:
    """A workshop's hook playbooks: those `value` names, else <verb>.yml in `convention_dir`."""
    hooks: dict[str, Path] = {}
    if value is not None:
        if not isinstance(value, dict):
            raise ConfigError(path, f"{name}.hooks", f"expected a mapping of verb: playbook, found {kind(value)}")
        for verb, playbook in value.items():
            key = f"{name}.hooks.{verb}"
            if verb not in HOOK_VERBS:
                raise ConfigError(path, key, "unknown hook: expected " + ", ".join(HOOK_VERBS))
            if not isinstance(playbook, str) or not playbook.strip():
                raise ConfigError(path, key, f"expected a playbook path, found {kind(playbook)}")
            where = path_beside(path.parent, playbook.strip())
            if not where.is_file():
                raise ConfigError(path, key, f"the hook playbook {where} does not exist")
            hooks[verb] = where
    for verb in HOOK_VERBS:
        conventional = convention_dir / f"{verb}.yml"
        if verb not in hooks and conventional.is_file():
            hooks[verb] = conventional
    return hooks


def variables_of(path: Path, name: str, value: object) -> dict[str, object]:
    """A workshop's `variables` of the workshops file: NAME: scalar."""
    key = f"{name}.variables"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(path, key, f"expected a mapping of NAME: value, found {kind(value)}")
    variables: dict[str, object] = {}
    for var, item in value.items():
        if not isinstance(var, str):
            raise ConfigError(path, key, f"variable names must be strings, found {kind(var)}")
        if not isinstance(item, SCALARS):
            raise ConfigError(
                path,
                f"{key}.{var}",
                f"unknown key type: {kind(item)} (variables are strings, numbers or booleans)",
            )
        variables[var] = item
    return variables
