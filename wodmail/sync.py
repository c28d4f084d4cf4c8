"""The registration app's workshops against the local workshops file (`wodmail workshops sync`).

The app (GET {APIENDPOINT}/workshops) lists every workshop of every backend:

    [{"id": 12, "notebook": "WKSHP-Ansible101", "range": [1, 40], "reset": false,
      "ldap": false, "varpass": true, "active": true, "location": "nb3.example.com", ...}]

Everything here is pure: `parse_listing` reads the app's answer, `for_backend` keeps the
workshops of this backend, `compare` lists what differs from the local file (range, flags,
id, a workshop missing on either side), and `propose` builds the workshops file the app's
values describe, for an operator to review. Nothing here reads or writes a file or the
network: the CLI does that, and never touches the local workshops file itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wodmail.location import Location, Workshop

FLAGS = ("reset", "ldap", "varpass", "monoappliance", "multiappliance")


@dataclass(frozen=True)
class AppWorkshop:
    """One workshop as the registration app lists it, read leniently."""

    notebook: str
    id: int | None
    range: tuple[int, int] | None
    """None: missing or unreadable (see `problems`)."""
    flags: Mapping[str, bool]
    """The flags the app gave as booleans (missing ones are false, as in the app's database)."""
    active: bool | None
    location: str | None
    problems: tuple[str, ...] = ()
    """What could not be read (a range that is not two numbers, a flag that is not a boolean)."""

    def summary(self) -> str:
        parts = [f"id {self.id}" if self.id is not None else "no id"]
        parts.append(f"range {_range_text(self.range)}")
        parts += [flag for flag in FLAGS if self.flags.get(flag)]
        if self.active is False:
            parts.append("inactive")
        return ", ".join(parts)


@dataclass(frozen=True)
class Difference:
    """One thing the local workshops file and the registration app disagree on."""

    workshop: str
    what: str
    """"range", a flag ("reset", "ldap", "varpass", "monoappliance", "multiappliance"), "id",
    "missing locally", "missing in the app", "listed twice" or "unreadable"."""
    local: str = ""
    app: str = ""

    def __str__(self) -> str:
        if self.what in ("range", "id", *FLAGS):
            return f"{self.workshop}: {self.what}: local {self.local}, app {self.app}"
        detail = "; ".join(part for part in (self.local, self.app) if part)
        return f"{self.workshop}: {self.what}" + (f" ({detail})" if detail else "")


def parse_listing(items: Iterable[Any]) -> list[AppWorkshop]:
    """The app's GET /workshops answer as `AppWorkshop`s (items without a notebook are left out)."""
    parsed = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        notebook = item.get("notebook")
        if not isinstance(notebook, str) or not notebook.strip():
            continue
        problems: list[str] = []
        flags: dict[str, bool] = {}
        for flag in FLAGS:
            value = _boolean(item.get(flag))
            if value is None:
                problems.append(f"{flag} is {item.get(flag)!r}, not true or false")
            else:
                flags[flag] = value
        workshop_range = _app_range(item.get("range"))
        if workshop_range is None:
            problems.append(f"range is {item.get('range')!r}, not [first, last]")
        raw_id = item.get("id")
        app_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        if raw_id is not None and app_id is None:
            problems.append(f"id is {raw_id!r}, not a number")
        location = item.get("location")
        active = item.get("active")
        parsed.append(
            AppWorkshop(
                notebook=notebook.strip(),
                id=app_id,
                range=workshop_range,
                flags=flags,
                active=_boolean(active) if active is not None else None,
                location=location if isinstance(location, str) and location else None,
                problems=tuple(problems),
            )
        )
    return parsed


def for_backend(listed: Sequence[AppWorkshop], names: Iterable[str] | None) -> tuple[list[AppWorkshop], str]:
    """The workshops of the backend called one of `names` (the app's `location` field).

    Returns them and a line saying what was kept. `names` None keeps every workshop; so
    does a listing in which no workshop carries a location.
    """
    if names is None:
        return list(listed), f"all {len(listed)} workshops of the app"
    wanted = {name.lower() for name in names if name}
    if not any(item.location for item in listed):
        return list(listed), f"all {len(listed)} workshops of the app (none names its location)"
    kept = [item for item in listed if item.location and item.location.lower() in wanted]
    shown = ", ".join(sorted(wanted)) or "(none)"
    if kept:
        return kept, f"{len(kept)} of the app's {len(listed)} workshops, those located on {shown}"
    seen = ", ".join(sorted({item.location for item in listed if item.location}))
    return kept, f"no workshop of the app is located on {shown} (the app's locations: {seen})"


def compare(local: Mapping[str, Workshop], listed: Sequence[AppWorkshop]) -> list[Difference]:
    """What differs between the local workshops and the app's, in the order of the names."""
    by_name: dict[str, list[AppWorkshop]] = {}
    for item in listed:
        by_name.setdefault(item.notebook, []).append(item)
    differences: list[Difference] = []
    for name in sorted(set(local) | set(by_name)):
        mine = local.get(name)
        theirs = by_name.get(name, [])
        if mine is None:
            differences.append(Difference(name, "missing locally", app=theirs[0].summary()))
            continue
        if not theirs:
            differences.append(Difference(name, "missing in the app", local=_local_summary(mine)))
            continue
        if len(theirs) > 1:
            ids = ", ".join(str(item.id) for item in theirs)
            differences.append(Difference(name, "listed twice", app=f"{len(theirs)} entries, ids {ids}"))
            continue
        app = theirs[0]
        if app.problems:
            differences.append(Difference(name, "unreadable", app="; ".join(app.problems)))
        if app.range is not None and app.range != (mine.first, mine.last):
            differences.append(Difference(name, "range", _range_text((mine.first, mine.last)), _range_text(app.range)))
        for flag in FLAGS:
            ours = bool(getattr(mine, flag))
            if flag in app.flags and app.flags[flag] != ours:
                differences.append(Difference(name, flag, _bool_text(ours), _bool_text(app.flags[flag])))
        if app.id is not None and app.id != mine.app_id:
            differences.append(
                Difference(name, "id", str(mine.app_id) if mine.app_id is not None else "none", str(app.id))
            )
    return differences


def propose(raw_local: Mapping[str, Any], listed: Sequence[AppWorkshop]) -> dict[str, Any]:
    """The workshops file the app describes: the local entries (hooks, variables and all)
    with the app's range, flags and id, plus the app's workshops missing locally.

    Local workshops the app does not list are kept as they are. A workshop the app lists
    more than once, or whose range cannot be read, keeps its local range.
    """
    proposed: dict[str, Any] = {
        name: dict(entry) if isinstance(entry, Mapping) else entry for name, entry in raw_local.items()
    }
    counts: dict[str, int] = {}
    for item in listed:
        counts[item.notebook] = counts.get(item.notebook, 0) + 1
    for item in listed:
        if counts[item.notebook] > 1:
            continue
        entry = proposed.get(item.notebook)
        entry = dict(entry) if isinstance(entry, Mapping) else {}
        if item.range is not None:
            entry["range"] = list(item.range)
        for flag, value in item.flags.items():
            if value or flag in entry:
                entry[flag] = value
        if item.id is not None:
            entry["id"] = item.id
        if "range" in entry:
            proposed[item.notebook] = _ordered(entry)
    return proposed


def workshops_file(location: Location) -> Path:
    """The workshops file of `location` (WORKSHOPS, else workshops.yaml beside it)."""
    return location.workshops_file


def _ordered(entry: dict[str, Any]) -> dict[str, Any]:
    """range, flags and id first (as the app lists them), then the local-only keys."""
    first = ["range", *FLAGS, "id"]
    return {key: entry[key] for key in first if key in entry} | {k: v for k, v in entry.items() if k not in first}


def _boolean(value: object) -> bool | None:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _app_range(value: object) -> tuple[int, int] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    ends: list[int] = []
    for end in value:
        if isinstance(end, bool):
            return None
        if isinstance(end, int):
            ends.append(end)
        elif isinstance(end, str) and end.strip().isdigit():
            ends.append(int(end))
        else:
            return None
    return ends[0], ends[1]


def _range_text(value: tuple[int, int] | None) -> str:
    return f"{value[0]}..{value[1]}" if value is not None else "unreadable"


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _local_summary(workshop: Workshop) -> str:
    parts = [f"range {workshop.first}..{workshop.last}"]
    parts += [flag for flag in FLAGS if getattr(workshop, flag)]
    if workshop.app_id is not None:
        parts.append(f"id {workshop.app_id}")
    return ", ".join(parts)
