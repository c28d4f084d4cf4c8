"""How much of a workshop a student did: the completion percentage CLEANUP reports.

Read as the student (wodmail.homes.Homes.read_home), outside the jobs' event loop, from
files the student controls: every open goes through wodmail.safefs (no link followed,
nothing that blocks), with caps on bytes read and on what is parsed, so a hostile
notebook gives a number and a warning, never a stall.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from wodmail.erase import DIR_FLAGS
from wodmail.safefs import read_regular_beneath

log = logging.getLogger(__name__)

#: A deployed notebook larger than this is not read for the completion percentage.
MAX_NOTEBOOK_BYTES = 16 * 1024 * 1024
#: The most objects and arrays a notebook may hold to be parsed for the completion (a real
#: one has a handful per cell; its outputs' images are strings).
MAX_NOTEBOOK_CONTAINERS = 200_000
#: The most read from one student's notebooks for one completion (memory stays bounded).
MAX_COMPLETION_BYTES = 64 * 1024 * 1024
_CODE_CELL_RE = re.compile(r'"cell_type"\s*:\s*"code"')


def completion_percentage(deployed: Path, notebooks: Iterable[Path]) -> int:
    """`completion_at` on the folder `deployed` (the student's copy of the workshop)."""
    deployed = Path(os.path.abspath(deployed))
    try:
        parent = os.open(deployed.parent, DIR_FLAGS)
    except OSError:
        return 0
    try:
        return completion_at(parent, deployed.name, notebooks)
    finally:
        os.close(parent)


def completion_at(parent_fd: int, leaf: str, notebooks: Iterable[Path], *, who: str = "") -> int:
    """The share of code cells the student ran, in percent, rounded down.

    Over the notebooks `notebooks` (paths relative to `leaf`, the student's copy of the
    workshop in the open folder `parent_fd`): code cells whose `execution_count` is not
    null, divided by all code cells, times 100. 0 when there is no code cell.

    A notebook that is not valid JSON (or not shaped like an nbformat 4 notebook) but can
    be read as text counts its code cells (found by their `"cell_type": "code"`) as not
    executed. A notebook that is missing, is not a regular file, cannot be read or decoded
    as UTF-8, is larger than MAX_NOTEBOOK_BYTES, or comes after MAX_COMPLETION_BYTES were
    read in all, is skipped (with a warning): its cells count neither way. Files are
    opened without following symlinks and without blocking (the student owns the folder);
    run it as the student (wodmail.homes.Homes.read_home).
    """
    executed = total = 0
    budget = MAX_COMPLETION_BYTES
    skipped: list[str] = []
    for notebook in notebooks:
        data = read_regular_beneath(parent_fd, Path(leaf) / notebook, min(MAX_NOTEBOOK_BYTES, budget))
        if data is None:
            skipped.append(Path(notebook).as_posix())
            continue
        budget -= len(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(Path(notebook).as_posix())
            continue
        del data
        ran, cells = _count_code_cells(text)
        executed += ran
        total += cells
    if skipped:
        log.warning(
            "completion of %s%s: %d notebook(s) not counted (missing, not a regular file, unreadable or too large): %s",
            f"{who} " if who else "",
            leaf,
            len(skipped),
            ", ".join(skipped)[:500],
        )
    return executed * 100 // total if total else 0


def _count_code_cells(text: str) -> tuple[int, int]:
    """(executed, all) code cells of a notebook's text.

    A text with more than MAX_NOTEBOOK_CONTAINERS objects and arrays is not parsed (a
    student's 16 MiB of `[{},{},...]` would take 400 MB and hold the GIL for a second), nor
    is one nested too deep for the parser: their code cells count as not executed."""
    document = None
    if text.count("{") + text.count("[") <= MAX_NOTEBOOK_CONTAINERS:
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            document = None
    cells = document.get("cells") if isinstance(document, dict) else None
    if not isinstance(cells, list):
        return 0, len(_CODE_CELL_RE.findall(text))
    code = [c for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"]
    return sum(1 for c in code if c.get("execution_count") is not None), len(code)
