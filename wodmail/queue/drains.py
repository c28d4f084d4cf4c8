"""Drained workshops (DRAIN, RESUME): a CREATE for one is refused at the door while it is.

The table survives a restart like the rest of the queue. `ALL_WORKSHOPS` ('*') stands for
every workshop (DRAIN all). The doors read it inside the transaction that would queue a
CREATE (wodmail.queue.arrivals.enqueue): a CREATE is never queued once a DRAIN committed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from wodmail.queue.records import Drain

#: The name that stands for every workshop.
ALL_WORKSHOPS = "*"


def drained(conn: sqlite3.Connection, workshop: str) -> Drain | None:
    """The drain that holds `workshop` (its own first, else DRAIN all), or None."""
    row = conn.execute(
        "SELECT workshop, since, by FROM drains WHERE workshop IN (?, ?) ORDER BY workshop = ? LIMIT 1",
        (workshop, ALL_WORKSHOPS, ALL_WORKSHOPS),
    ).fetchone()
    return Drain(*row) if row is not None else None


def list_drains(conn: sqlite3.Connection) -> list[Drain]:
    """Every drain, DRAIN all first."""
    rows = conn.execute("SELECT workshop, since, by FROM drains ORDER BY workshop != ?, workshop", (ALL_WORKSHOPS,))
    return [Drain(*row) for row in rows]


def drain(workshop: str, by: str) -> Callable[[sqlite3.Connection], Drain | None]:
    """Drain `workshop` (or ALL_WORKSHOPS); the drain already there, kept as it was, if any."""

    def run(conn: sqlite3.Connection) -> Drain | None:
        row = conn.execute("SELECT workshop, since, by FROM drains WHERE workshop = ?", (workshop,)).fetchone()
        if row is not None:
            return Drain(*row)
        conn.execute("INSERT INTO drains (workshop, since, by) VALUES (?, ?, ?)", (workshop, time.time(), by[:300]))
        return None

    return run


def resume(workshop: str) -> Callable[[sqlite3.Connection], list[str]]:
    """Lift the drain of `workshop`, or (ALL_WORKSHOPS) every drain; the names lifted."""

    def run(conn: sqlite3.Connection) -> list[str]:
        if workshop == ALL_WORKSHOPS:
            names = [row[0] for row in conn.execute("SELECT workshop FROM drains ORDER BY workshop")]
            conn.execute("DELETE FROM drains")
            return names
        removed = conn.execute("DELETE FROM drains WHERE workshop = ?", (workshop,)).rowcount
        return [workshop] if removed else []

    return run
