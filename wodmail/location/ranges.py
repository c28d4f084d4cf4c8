"""The booked student ranges: one workshop's range, read and checked against
STUDENTMIN..STUDENTMAX; overlaps between served workshops refused; and what only warns (an
overlap involving a workshop not served, a capacity larger than its range)."""

from __future__ import annotations

import re
from pathlib import Path

from wodmail.errors import ConfigError
from wodmail.location.entries import Entry, Problems, Setting
from wodmail.location.workshops import Workshop

DASHED_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
NO_RANGE = (0, -1)


def booked_range(entry: Entry, problems: Problems, workshops_file: Path, limits: tuple[int, int]) -> tuple[int, int]:
    """The student range `entry` books (NO_RANGE if it has none that holds), checked
    against STUDENTMIN..STUDENTMAX (`limits`)."""
    setting = entry.settings.get("range")
    if setting is None:
        if entry.listed:
            problems.report(
                ConfigError(workshops_file, f"{entry.name}.range", "missing: the booked students, as [first, last]")
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
        return NO_RANGE
    value = setting.value
    if (
        not isinstance(value, list)
        or len(value) != 2
        or any(isinstance(end, bool) or not isinstance(end, int) for end in value)
    ):
        problems(setting, "expected [first, last], two student numbers" + range_hint(value))
        return NO_RANGE
    first, last = value
    if first > last:
        problems(setting, f"range {first}..{last} ends before it starts")
        return NO_RANGE
    low, high = limits
    if first < low or last > high:
        problems(setting, f"range {first}..{last} is outside STUDENTMIN..STUDENTMAX ({low}..{high})")
    return first, last


def refuse_overlaps(served: dict[str, Workshop], sources: dict[str, dict[str, Setting]]) -> None:
    """ConfigError when two served workshops book the same student."""
    reaching: Workshop | None = None  # the workshop seen so far whose range ends last
    for workshop in sorted(served.values(), key=lambda w: (w.first, w.last, w.name)):
        if reaching is not None and workshop.first <= reaching.last:
            setting = sources[workshop.name]["range"]
            raise ConfigError(
                setting.file,
                setting.key,
                f"range {workshop.first}..{workshop.last} overlaps {reaching.name}'s range "
                f"{reaching.first}..{reaching.last}",
            )
        if reaching is None or workshop.last > reaching.last:
            reaching = workshop


def range_warnings(
    known: dict[str, Workshop],
    not_served: dict[str, str],
    sources: dict[str, dict[str, Setting]],
    quiet: set[str],
) -> list[str]:
    """What only warns: an overlap involving a workshop not served, a capacity larger than
    the range (none for the workshops of another site, `quiet`)."""
    warnings: list[str] = []
    ranged = sorted(
        (w for w in known.values() if w.booked and w.name not in quiet),
        key=lambda w: (w.first, w.last, w.name),
    )
    for index, workshop in enumerate(ranged):
        for earlier in ranged[:index]:
            if earlier.last < workshop.first:
                continue
            idle = [name for name in (workshop.name, earlier.name) if name in not_served]
            if not idle:
                continue  # two served workshops: refused above
            setting = sources[workshop.name]["range"]
            why = "; ".join(f"{name} is not served: {not_served[name]}" for name in idle)
            warnings.append(
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
        if workshop.name in quiet or workshop.capacity is None or not workshop.booked:
            continue
        size = workshop.last - workshop.first + 1
        if workshop.capacity > size:
            setting = sources[workshop.name]["capacity"]
            warnings.append(
                str(
                    ConfigError(
                        setting.file,
                        setting.key,
                        f"capacity {workshop.capacity} is larger than the range "
                        f"{workshop.first}..{workshop.last} ({size} students)",
                    )
                )
            )
    return warnings


def range_hint(value: object) -> str:
    """How to write a range given as 52-91 or [52-91] (YAML reads the latter as one text)."""
    text = value[0] if isinstance(value, list) and len(value) == 1 else value
    match = DASHED_RANGE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return ""
    written = f"[{text}]" if isinstance(value, list) else text
    return f" (write [{match.group(1)}, {match.group(2)}], not {written})"
