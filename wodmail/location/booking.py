"""The booking of student ranges: the workshops file and the catalog's wod.yml files.

Which workshops a location serves, each with its booked student range, its flags, hooks and
variables (the rules are in wodmail.location's docstring). A malformed setting of a served
workshop is a `ConfigError`; what is known but not served only gives warnings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from wodmail.command import WORKSHOP_RE
from wodmail.errors import ConfigError
from wodmail.location.reading import (
    SCALARS,
    DuplicateKey,
    duplicate_warnings,
    kind,
    path_beside,
    read_variable_file,
    read_yaml,
)
from wodmail.location.workshops import (
    HOOK_VERBS,
    INFORMATIONAL_KEYS,
    VARIABLES_FILE,
    WOD_FILE,
    WORKSHOP_KEYS,
    Workshop,
    content_name,
)

_FLAGS = ("reset", "ldap", "varpass", "monoappliance", "multiappliance")
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
class Booked:
    served: dict[str, Workshop]
    known: dict[str, Workshop]
    not_served: dict[str, str]
    warnings: list[str]


@dataclass
class Booking:
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
    private_workshop_dir: Path | None = None
    """WORKSHOPPRIVDIR: a workshop with no folder in workshop_dir has its content (and its
    wod.yml) here, as the original backend's private notebooks (WODPRIVNOBO)."""
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, dict[str, _Setting]] = field(default_factory=dict)
    quiet: set[str] = field(default_factory=set)
    """Workshops for another site (CATALOGLOCATION): no warning about their ranges."""

    def load(self) -> Booked:
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
        return Booked(served, known, not_served, self.warnings)

    # --- reading ----------------------------------------------------------------------

    def _listed(self) -> dict[str, _Entry]:
        path = self.workshops_file
        if not path.is_file():
            return {}
        raw = read_yaml(path)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ConfigError(path, None, f"expected a mapping of workshop name: entry, found {kind(raw)}")
        entries: dict[str, _Entry] = {}
        for name, entry in raw.items():
            if not isinstance(name, str) or not WORKSHOP_RE.fullmatch(name) or ".." in name:
                shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
                raise ConfigError(
                    path,
                    shown,
                    "not a workshop name: expected WKSHP- or CHLG- followed by letters, digits, '-', '_' or '.'",
                )
            if entry is None and not (self._content_dir(name) / name / WOD_FILE).is_file():
                raise ConfigError(path, name, "empty entry: a workshop needs at least `range: [first, last]`")
            given = {} if entry is None else entry  # an empty entry: serve it as its wod.yml says
            if not isinstance(given, dict):
                raise ConfigError(path, name, f"expected a mapping of settings, found {kind(given)}")
            for key in given:
                if key not in WORKSHOP_KEYS and key not in INFORMATIONAL_KEYS:
                    known = ", ".join(sorted(WORKSHOP_KEYS | INFORMATIONAL_KEYS))
                    raise ConfigError(path, f"{name}.{key}", f"unknown key (known: {known})")
            settings = {key: _Setting(value, path, f"{name}.{key}") for key, value in given.items()}
            entries[name] = _Entry(name, settings, True, None, path)
        return entries

    def _content_dir(self, folder: str) -> Path:
        """The catalog holding `folder`: WORKSHOPDIR, else WORKSHOPPRIVDIR when only it has it."""
        private = self.private_workshop_dir
        if private is not None and not (self.workshop_dir / folder).is_dir() and (private / folder).is_dir():
            return private
        return self.workshop_dir

    def _catalog(self) -> list[tuple[str, Path]]:
        """(name, wod.yml) of every WKSHP-/CHLG- folder of WORKSHOPDIR (and WORKSHOPPRIVDIR,
        for the names WORKSHOPDIR lacks) that has a wod.yml."""
        names: set[str] = set()
        for folder, key in ((self.workshop_dir, "WORKSHOPDIR"), (self.private_workshop_dir, "WORKSHOPPRIVDIR")):
            if folder is None:
                continue
            try:
                with os.scandir(folder) as scan:
                    names.update(entry.name for entry in scan if entry.name.startswith(("WKSHP-", "CHLG-")))
            except OSError as exc:
                raise ConfigError(folder, None, f"cannot read {key}: {exc.strerror or type(exc).__name__}") from None
        found: list[tuple[str, Path]] = []
        for name in sorted(names):
            metadata_file = self._content_dir(name) / name / WOD_FILE
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
        duplicates: list[DuplicateKey] = []
        raw = read_yaml(path, duplicates=duplicates)
        self.warnings.extend(duplicate_warnings(path, duplicates))
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ConfigError(path, None, f"expected a mapping of key: value, found {kind(raw)}")
        for key in raw:
            if not isinstance(key, str):
                raise ConfigError(path, str(key), f"keys must be strings, found {kind(key)}")
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

        content_folder = content_name(name)
        content = self._content_dir(content_folder) / content_folder
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
                self.playbook_dir / content_folder,
            )
            variables = _variables(self.workshops_file, name, variables_setting.value if variables_setting else None)
        except ConfigError as exc:
            problems.report(exc)
        if flags["ldap"] and self.ldap_uri is None:
            problems(settings["ldap"], "the workshop needs LDAP but the location sets no LDAPURI")

        variable_files = tuple(folder / VARIABLES_FILE.format(name=name) for folder in self.var_dirs)
        for file in variable_files:
            if file.exists():
                duplicates: list[DuplicateKey] = []
                try:
                    read_variable_file(file, duplicates, self.vault_password)
                except ConfigError as exc:
                    problems.report(exc)
                problems.warnings.extend(duplicate_warnings(file, duplicates))
        title = settings.get("name")
        return Workshop(
            name=name,
            first=first,
            last=last,
            content=content,
            reset=flags["reset"],
            ldap=flags["ldap"],
            varpass=flags["varpass"],
            monoappliance=flags["monoappliance"],
            multiappliance=flags["multiappliance"],
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
    problems(setting, f"expected true or false, found {kind(value)}")
    return False


def _integer_setting(setting: _Setting | None, problems: _Problems, low: int, what: str) -> int | None:
    if setting is None or setting.value is None:
        return None
    value = setting.value
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        problems(setting, f"{what}, found {kind(value) if not isinstance(value, int) else value}")
        return None
    return value


def _hooks(path: Path, name: str, value: object, convention_dir: Path) -> dict[str, Path]:
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


def _variables(path: Path, name: str, value: object) -> dict[str, object]:
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
