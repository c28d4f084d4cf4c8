"""The queue's writer: two processes write to one database (the doors and the jobs)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from wodmail import queue

INSERT = "INSERT INTO refused (received, door, code, reason, size, mail) VALUES (0, 'test', 550, ?, 0, x'')"


def test_a_writer_waits_for_the_other_ones_transaction_then_commits(tmp_path: Path) -> None:
    """Writer B's write arrives while writer A holds the write lock (as the other process's
    writer would): B waits, without an error, and commits as soon as A is done."""
    path = queue.open_database(tmp_path)
    first, second = queue.Writer(path), queue.Writer(path)
    holding = threading.Event()
    released_at: list[float] = []

    def hold_the_lock(conn: sqlite3.Connection) -> None:
        conn.execute(INSERT, ("first",))
        holding.set()
        time.sleep(0.5)
        released_at.append(time.monotonic())

    def write(conn: sqlite3.Connection) -> float:
        conn.execute(INSERT, ("second",))
        return time.monotonic()

    try:
        holder = threading.Thread(target=first.run_sync, args=(hold_the_lock,))
        holder.start()
        assert holding.wait(5)
        written_at = second.run_sync(write)
        holder.join()
    finally:
        first.close()
        second.close()
    assert written_at >= released_at[0], "B wrote inside A's transaction"
    with sqlite3.connect(path) as conn:
        reasons = [row[0] for row in conn.execute("SELECT reason FROM refused ORDER BY id")]
    assert reasons == ["first", "second"]
