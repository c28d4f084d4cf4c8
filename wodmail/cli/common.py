"""What several subcommands share: exit codes, the queue's file, how times and origins read."""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from wodmail import queue
from wodmail.errors import ConfigError
from wodmail.location import Location

EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_TEMPFAIL = 75
EX_CONFIG = 78

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What a subcommand module's `register` adds its parser to."""
Handler: TypeAlias = Callable[[Location, argparse.Namespace], int]
"""A subcommand: the loaded location and the parsed arguments in, the exit code out."""


def queue_file(location: Location, reason: str = "holds no queue yet") -> Path:
    """The queue's database file; a `ConfigError` (exit 78) when STATEDIR holds none."""
    path = location.state_dir / "queue.sqlite3"
    if not path.exists():
        raise ConfigError(location.state_dir, "STATEDIR", reason)
    return path


def reader(location: Location) -> sqlite3.Connection:
    """A connection to the queue, for the subcommands that only read it."""
    return queue.connect(queue_file(location, "holds no queue yet: has `wodmail serve` run here?"))


def origin(door: str, peer: str | None) -> str:
    """Where a mail came from, as `jobs show` and `refused show` say it."""
    return peer or ("the admin socket" if door == "admin" else "local pipe")


def when(timestamp: float | None) -> str:
    """A time as the listings print it (local time, to the second); "-" for none."""
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
