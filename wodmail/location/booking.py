"""The booking of student ranges: the workshops file and the catalog's wod.yml files.

Which workshops a location serves, each with its booked student range, its flags, hooks and
variables (the rules are in wodmail.location's docstring). A malformed setting of a served
workshop is a `ConfigError`; what is known but not served only gives warnings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from wodmail.command import WORKSHOP_RE
from wodmail.errors import ConfigError
from wodmail.location.entries import (
    FLAGS,
    Entry,
    Problems,
    Setting,
    check_informational,
    flag_value,
    hooks_of,
    integer_setting,
    variables_of,
)
from wodmail.location.ranges import booked_range, range_warnings, refuse_overlaps
from wodmail.location.reading import (
    DuplicateKey,
    duplicate_warnings,
    kind,
    read_variable_file,
    read_yaml,
)
from wodmail.location.workshops import (
    INFORMATIONAL_KEYS,
    VARIABLES_FILE,
    WOD_FILE,
    WORKSHOP_KEYS,
    Workshop,
    content_name,
)

_LISTED_ONLY = frozenset({"hooks", "variables"})
"""Keys only the workshops file gives (in a wod.yml they are metadata, never acted on)."""


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
    sources: dict[str, dict[str, Setting]] = field(default_factory=dict)
    quiet: set[str] = field(default_factory=set)
    """Workshops for another site (CATALOGLOCATION): no warning about their ranges."""

    def load(self) -> Booked:
        entries = self._listed()
        for name, metadata_file in self._catalog():
            settings = {
                key: Setting(value, metadata_file, key)
                for key, value in self._metadata(metadata_file).items()
                if key not in _LISTED_ONLY
            }
            listed = entries.get(name)
            if listed is not None:
                listed.metadata_file = metadata_file
                listed.settings = {**settings, **listed.settings}
            else:
                entries[name] = Entry(name, settings, False, metadata_file, self.workshops_file)

        served: dict[str, Workshop] = {}
        known: dict[str, Workshop] = {}
        not_served: dict[str, str] = {}
        for entry in entries.values():
            reason = self._why_not_served(entry)
            # Another site's workshop is checked, but its oddities are that site's business.
            warnings = [] if entry.name in self.quiet else self.warnings
            workshop = self._workshop(entry, Problems(reason is None, warnings), reason != "inactive")
            known[entry.name] = workshop
            self.sources[entry.name] = entry.settings
            if reason is None:
                served[entry.name] = workshop
            else:
                not_served[entry.name] = reason
        refuse_overlaps(served, self.sources)
        self.warnings.extend(range_warnings(known, not_served, self.sources, self.quiet))
        return Booked(served, known, not_served, self.warnings)

    # --- reading ----------------------------------------------------------------------

    def _listed(self) -> dict[str, Entry]:
        path = self.workshops_file
        if not path.is_file():
            return {}
        raw = read_yaml(path)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ConfigError(path, None, f"expected a mapping of workshop name: entry, found {kind(raw)}")
        entries: dict[str, Entry] = {}
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
            settings = {key: Setting(value, path, f"{name}.{key}") for key, value in given.items()}
            entries[name] = Entry(name, settings, True, None, path)
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

    def _why_not_served(self, entry: Entry) -> str | None:
        active = entry.settings.get("active")  # absent or empty: active, as the seeder took it
        if (
            active is not None
            and active.value is not None
            and not flag_value(active, Problems(True, self.warnings), self._lenient(active))
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

    def _lenient(self, setting: Setting) -> bool:
        """A wod.yml may write booleans as the text "true"/"false" (the seeder took them so)."""
        return setting.file != self.workshops_file

    def _workshop(self, entry: Entry, problems: Problems, active: bool) -> Workshop:
        name = entry.name
        settings = entry.settings
        first, last = booked_range(entry, problems, self.workshops_file, self.limits)
        flags = {
            flag: flag_value(settings[flag], problems, self._lenient(settings[flag])) if flag in settings else False
            for flag in FLAGS
        }
        app_id = integer_setting(
            settings.get("id"), problems, 0, "expected the registration app's workshop id (an integer)"
        )
        capacity = integer_setting(settings.get("capacity"), problems, 0, "expected a number of seats")
        check_informational(entry, problems)

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
            hooks = hooks_of(
                self.workshops_file,
                name,
                hooks_setting.value if hooks_setting else None,
                self.playbook_dir / content_folder,
            )
            variables = variables_of(self.workshops_file, name, variables_setting.value if variables_setting else None)
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
