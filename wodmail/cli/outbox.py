"""`wodmail outbox`: the callbacks not yet delivered to the registration app (and expired ones)."""

from __future__ import annotations

import argparse

from wodmail import queue
from wodmail.cli.common import Subcommands, reader, when
from wodmail.location import Location


def register(commands: Subcommands) -> None:
    """Add `outbox` to `commands`."""
    outbox = commands.add_parser("outbox", help="callbacks not yet delivered")
    outbox.set_defaults(handler=cmd_outbox)


def cmd_outbox(location: Location, args: argparse.Namespace) -> int:
    conn = reader(location)
    counts = queue.outbox_counts(conn)
    print("callbacks: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pending", "delivered", "failed", "expired")))
    for entry in queue.undelivered_callbacks(conn, 200):
        print(
            f"  {entry.id:>6} job {entry.job_id:<6} {entry.state:8} {entry.method} {entry.path} {entry.shown_body()}"
            f" tries {entry.attempts} next {when(entry.next_attempt)} {entry.last_error or ''}"
        )
    return 0
