"""The record of one workshop as a location knows it, and the keys of the workshops file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from wodmail.verbspec import shipped_verbs

HOOK_VERBS = shipped_verbs().hook_names
"""The verbs a workshop may hook a playbook to (each verb module declares its hook)."""

WORKSHOP_KEYS = frozenset(
    {"range", "reset", "ldap", "varpass", "id", "hooks", "variables", "active", "capacity"}
    | {"monoappliance", "multiappliance"}
)
"""Entry keys wodmail acts on: a malformed value of a served workshop is a ConfigError."""
INFORMATIONAL_KEYS = frozenset(
    {"name", "description", "duration", "priority", "category", "compile", "location", "beta"}
)
"""wod.yml keys the workshops file may also give: checked, a malformed value only warns."""

WOD_FILE = "wod.yml"
"""A catalog folder's metadata file."""

VARIABLES_FILE = "variables_{name}.yml"
"""A workshop's variable file in VARDIR and VARPRIVDIR ({name}: the command's WKSHP-/CHLG- name)."""


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
    monoappliance: bool = False
    """Its scripts get WODRTARGET: the appliance's base address (IP-<name>, wodmail.scripts)."""
    multiappliance: bool = False
    """Its scripts get WODRTARGET: the base address plus the student's place in the range."""
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
        return content_name(self.name)

    def holds(self, stdid: int) -> bool:
        """Whether student `stdid` is inside this workshop's booked range."""
        return self.first <= stdid <= self.last

    @property
    def booked(self) -> bool:
        """Whether it has a range (a workshop that is not served may have none: 0..-1)."""
        return self.first <= self.last


def content_name(name: str) -> str:
    """The WKSHP- name the content of workshop `name` lives under (a challenge shares its workshop's)."""
    return "WKSHP-" + name.removeprefix("CHLG-") if name.startswith("CHLG-") else name
