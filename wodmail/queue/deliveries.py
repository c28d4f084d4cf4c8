"""What goes out: the callback outbox (each delivery's end) and the mails relayed to
RELAYHOST (wodmail.relay: kept, sent, failed, retried). Each change is a function of a
connection, run inside the writer's transaction."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

from wodmail.inbound import InboundMail


def outbox_delivered(entry_id: int) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE outbox SET state = 'delivered', delivered = ?, attempts = attempts + 1, last_error = NULL"
            " WHERE id = ?",
            (time.time(), entry_id),
        )

    return run


def outbox_failed(entry_id: int, next_attempt: float | None, error: str) -> Callable[[sqlite3.Connection], None]:
    """A failed delivery: try again at `next_attempt`, or (None) give up, visible as failed."""

    def run(conn: sqlite3.Connection) -> None:
        if next_attempt is None:
            conn.execute(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error, entry_id),
            )
        else:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE id = ?",
                (next_attempt, error, entry_id),
            )

    return run


def outbox_expired(entry_id: int, error: str) -> Callable[[sqlite3.Connection], None]:
    """An activating callback past its deadline: never sent, kept as expired for the operator."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE outbox SET state = 'expired', last_error = ? WHERE id = ? AND state = 'pending'", (error, entry_id)
        )

    return run


# --- mails relayed to RELAYHOST (wodmail.relay) ------------------------------------------------


def relay_mail(mail: InboundMail, auth: str) -> Callable[[sqlite3.Connection], int]:
    """Keep a mail to pass on to the site's MTA, its envelope as given; its id."""

    def run(conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            "INSERT INTO relay (received, door, peer, auth, sender, recipients, size, mail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                mail.door,
                mail.peer,
                auth,
                mail.mail_from,
                json.dumps(list(mail.rcpt_tos)),
                len(mail.data),
                mail.data,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    return run


def relay_sent(relay_id: int, note: str | None) -> Callable[[sqlite3.Connection], None]:
    """The MTA took the mail: its content is erased (secure_delete overwrites it), its record stays."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE relay SET state = 'sent', sent = ?, attempts = attempts + 1, last_error = ?, mail = x''"
            " WHERE id = ?",
            (time.time(), note, relay_id),
        )

    return run


def relay_failed(
    relay_id: int, next_attempt: float | None, error: str, *, rejected: bool
) -> Callable[[sqlite3.Connection], None]:
    """A try that failed: again at `next_attempt`, or (None) set aside as failed."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE relay SET state = ?, attempts = attempts + 1, rejections = rejections + ?,"
            " next_attempt = ?, last_error = ? WHERE id = ?",
            (
                "pending" if next_attempt is not None else "failed",
                1 if rejected else 0,
                next_attempt if next_attempt is not None else 0,
                error,
                relay_id,
            ),
        )

    return run


def relay_retry(relay_id: int | None) -> Callable[[sqlite3.Connection], int]:
    """An operator's retry of a set-aside mail (None: of every one); how many go out again."""

    def run(conn: sqlite3.Connection) -> int:
        if relay_id is not None:
            row = conn.execute("SELECT state FROM relay WHERE id = ?", (relay_id,)).fetchone()
            if row is None:
                raise LookupError(f"no relayed mail {relay_id}")
            if row[0] != "failed":
                raise ValueError(f"relayed mail {relay_id} is {row[0]}: only a failed one can be retried")
        cursor = conn.execute(
            "UPDATE relay SET state = 'pending', next_attempt = 0, rejections = 0 WHERE state = 'failed'"
            + (" AND id = ?" if relay_id is not None else ""),
            (relay_id,) if relay_id is not None else (),
        )
        return cursor.rowcount

    return run
