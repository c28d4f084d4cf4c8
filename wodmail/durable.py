"""Names on stable storage: a file's fsync makes its content durable, not the name that leads
to it. A folder is fsynced after a name in it is made, linked or renamed, before anything
that depends on that name is recorded or answered.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def sync_folder(folder: Path) -> None:
    """fsync `folder`: the names made, linked, renamed or removed in it are durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folders(folder: Path, mode: int = 0o777) -> None:
    """`mkdir -p folder`, each folder made synced into its parent before the next is made in it."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):
            made.mkdir(mode)
        sync_folder(made.parent)
