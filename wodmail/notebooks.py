"""How much of a workshop a student did: the completion percentage CLEANUP reports.

Read as the student (wodmail.homes.Homes.read_home), outside the jobs' event loop, from
files the student controls: every open goes through wodmail.safefs (no link followed,
nothing that blocks), with caps on bytes read and on what is parsed, so a hostile
notebook gives a number and a warning, never a stall.

Two ways to count (COMPLETION):

- `cells` (wodmail's, the default): executed code cells over all code cells, in every
  notebook the workshop deployed (sub-folders too);
- `original`: what the original backend's `wod_get_completion_ratio` computed with
  `grep execution_count WKSHP-Name/*.ipynb`: lines holding `execution_count`, minus those
  also holding `null`, over all of them, in the `*.ipynb` files at the top of the student's
  workshop folder (those the student made too). A run cell whose output is a result has a
  second, non-null `execution_count` line (the output's), so 5 of 10 cells run with a
  result each gives 10 / 15 = 66 where `cells` gives 50.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import msgspec

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
#: COMPLETION's values: wodmail's count (the default) and the original backend's.
COMPLETION_METHODS = ("cells", "original")
#: The most top-level notebooks the `original` count reads (a student may make thousands).
MAX_ORIGINAL_NOTEBOOKS = 1000
#: The most entries of the workshop folder the `original` count looks at: a student may make
#: millions, and listing ten million names took a minute and a gigabyte in the jobs process
#: (past READ_BOUND: the CLEANUP failed, and every one after it).
MAX_ORIGINAL_ENTRIES = 100_000


def completion_percentage(deployed: Path, notebooks: Iterable[Path], *, method: str = "cells") -> int:
    """`completion_at` on the folder `deployed` (the student's copy of the workshop)."""
    deployed = Path(os.path.abspath(deployed))
    try:
        parent = os.open(deployed.parent, DIR_FLAGS)
    except OSError:
        return 0
    try:
        return completion_at(parent, deployed.name, notebooks, method=method)
    finally:
        os.close(parent)


def completion_at(parent_fd: int, leaf: str, notebooks: Iterable[Path], *, who: str = "", method: str = "cells") -> int:
    """The share of the workshop the student did, in percent, rounded down.

    `method` "original": `original_completion_at` (the original backend's count; `notebooks`
    is not used: it reads the top-level *.ipynb the folder holds). "cells", the default:
    the share of code cells the student ran.

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
    if method == "original":
        return original_completion_at(parent_fd, leaf, who=who)
    if method != "cells":
        raise ValueError(f"unknown completion method {method!r}")
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
        ran, cells = _count_code_cells(text, data)
        del data
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


class _Cell(msgspec.Struct):
    """What the count reads of a cell; its other fields are skipped by the parser."""

    cell_type: object = None
    execution_count: object = None


class _Notebook(msgspec.Struct):
    cells: list[_Cell]


#: Decodes a well-formed notebook into its cells' two fields only, skipping the sources and
#: outputs `json.loads` would build: 0.016 ms for a 19 KB notebook where json.loads takes
#: 0.057 ms (measured on a quiet core), and no memory for what is skipped.
_decode_notebook = msgspec.json.Decoder(_Notebook).decode


def _count_code_cells(text: str, data: bytes) -> tuple[int, int]:
    """(executed, all) code cells of a notebook's text (`data` is the same, as UTF-8 bytes).

    A text with more than MAX_NOTEBOOK_CONTAINERS objects and arrays is not parsed (a
    student's 16 MiB of `[{},{},...]` would take 400 MB and hold the GIL for a second), nor
    is one nested too deep for the parser: their code cells count as not executed.
    A notebook shaped as nbformat writes it takes the fast path; any other (a cell that is
    not an object, no cells, JSON that only Python's parser takes) is read by `json` with
    the same result it always gave."""
    if text.count("{") + text.count("[") > MAX_NOTEBOOK_CONTAINERS:
        return 0, len(_CODE_CELL_RE.findall(text))
    try:
        cells = _decode_notebook(data).cells
    except RecursionError:
        return 0, len(_CODE_CELL_RE.findall(text))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _count_code_cells_slowly(text)
    code = [c for c in cells if c.cell_type == "code"]
    return sum(1 for c in code if c.execution_count is not None), len(code)


def _count_code_cells_slowly(text: str) -> tuple[int, int]:
    """`_count_code_cells` through Python's `json`, for notebooks of unusual shape."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
    cells = document.get("cells") if isinstance(document, dict) else None
    if not isinstance(cells, list):
        return 0, len(_CODE_CELL_RE.findall(text))
    code = [c for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"]
    return sum(1 for c in code if c.get("execution_count") is not None), len(code)


def original_completion_at(parent_fd: int, leaf: str, *, who: str = "") -> int:
    """The original backend's completion of the folder `leaf` of `parent_fd`, in percent.

    As `grep execution_count leaf/*.ipynb | wc -l` (all) and the same piped to `grep null`
    (not run) computed it: over the regular files named *.ipynb (not hidden) at the top of
    the folder, in name order, the lines holding `execution_count`; those also holding
    `null` (with grep's `leaf/NAME.ipynb:` prefix when there are several files, as grep
    wrote it) are not run; (all - not run) * 100 // all, 0 when there is none. Files are
    read as `completion_at` reads them (no link followed, nothing that blocks, the same
    caps); what cannot be read counts neither way.
    """
    try:
        folder = os.open(leaf, DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return 0
    try:
        found, first, looked = _first_notebooks(folder)
    except OSError:
        found, first, looked = 0, [], 0
    finally:
        os.close(folder)
    counted = first[:MAX_ORIGINAL_NOTEBOOKS]
    prefixed = found > 1
    total = missed = 0
    budget = MAX_COMPLETION_BYTES
    skipped: list[str] = []
    for name in counted:
        data = read_regular_beneath(parent_fd, Path(leaf) / name, min(MAX_NOTEBOOK_BYTES, budget))
        if data is None:
            skipped.append(name)
            continue
        budget -= len(data)
        prefix = f"{leaf}/{name}:".encode() if prefixed else b""
        for line in data.split(b"\n"):
            if b"execution_count" in line:
                total += 1
                if b"null" in line or b"null" in prefix:
                    missed += 1
    if skipped or found > len(counted):
        log.warning(
            "completion of %s%s: %d notebook(s) not counted: %s",
            f"{who} " if who else "",
            leaf,
            len(skipped) + found - len(counted),
            ", ".join(skipped)[:500],
        )
    if looked > MAX_ORIGINAL_ENTRIES:
        log.warning(
            "completion of %s%s: more than %d entries: only the first listed were looked at",
            f"{who} " if who else "",
            leaf,
            MAX_ORIGINAL_ENTRIES,
        )
    return (total - missed) * 100 // total if total else 0


def _first_notebooks(folder: int) -> tuple[int, list[str], int]:
    """Of the open folder's top-level *.ipynb regular files (not hidden): how many there are,
    the first MAX_ORIGINAL_NOTEBOOKS names in name order, and how many entries were looked
    at. At most MAX_ORIGINAL_ENTRIES (+1) entries are looked at, and no more than twice
    MAX_ORIGINAL_NOTEBOOKS names are held at a time."""
    found = looked = 0
    first: list[str] = []
    with os.scandir(folder) as listing:
        for entry in listing:
            looked += 1
            if looked > MAX_ORIGINAL_ENTRIES:
                break
            name = entry.name
            if name.endswith(".ipynb") and not name.startswith(".") and entry.is_file(follow_symlinks=False):
                found += 1
                first.append(name)
                if len(first) >= 2 * MAX_ORIGINAL_NOTEBOOKS:
                    first = sorted(first)[:MAX_ORIGINAL_NOTEBOOKS]
    return found, sorted(first)[:MAX_ORIGINAL_NOTEBOOKS], looked
