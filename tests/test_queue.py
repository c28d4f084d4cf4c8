"""The queue: two processes write to one database (the doors and the jobs); its schema's
versions; what it keeps, and for how long."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, Site, wodmail
from wodmail import queue
from wodmail.command import command_from_fields, read_fields
from wodmail.inbound import InboundMail
from wodmail.location import load_location

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


# --- the schema's versions --------------------------------------------------------------------


def test_a_database_from_before_versions_is_brought_up_to_date(tmp_path: Path) -> None:
    """A queue made by an earlier wodmail (user_version 0, no nonce table, no pruning
    indexes) keeps its jobs and gains what is missing; one from a newer wodmail is refused."""
    path = tmp_path / "queue.sqlite3"
    with sqlite3.connect(path) as conn:
        older = queue.MIGRATIONS[0].split("CREATE TABLE IF NOT EXISTS signature_nonces")[0]
        conn.executescript(older)
        conn.execute(INSERT, ("kept",))
    queue.open_database(tmp_path)
    with sqlite3.connect(path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"signature_nonces", "refused_peer", "jobs_finished"} <= names
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(queue.MIGRATIONS)
        assert conn.execute("SELECT reason FROM refused").fetchall() == [("kept",)]
        conn.execute(f"PRAGMA user_version = {len(queue.MIGRATIONS) + 1}")
    with pytest.raises(sqlite3.DatabaseError, match="newer than this wodmail's"):
        queue.open_database(tmp_path)


# --- bounded storage --------------------------------------------------------------------------


def refusal(peer: str | None, size: int = 100) -> InboundMail:
    return InboundMail(door="smtp", peer=peer, mail_from="x@example.com", data=b"Subject: x\r\n\r\n" + b"y" * size)


def test_refused_mails_are_excerpts_capped_per_address_and_in_all(tmp_path: Path) -> None:
    """A stranger's flood keeps the newest REFUSED_PER_PEER of its mails, 4 KiB of each,
    and leaves the other addresses' records alone; no more than REFUSED_TOTAL in all."""
    path = queue.open_database(tmp_path)
    conn = queue.connect(path)
    with conn:
        conn.execute("BEGIN")
        queue.record_refusal(refusal("192.0.2.1"), 554, "the app's")(conn)
        for _ in range(queue.REFUSED_PER_PEER + 300):
            queue.record_refusal(refusal("198.51.100.7", 1 << 20), 554, "a flood")(conn)
        conn.execute("COMMIT")
    rows = conn.execute("SELECT peer, count(*), max(length(mail)), max(size) FROM refused GROUP BY peer").fetchall()
    assert sorted(rows) == [
        ("192.0.2.1", 1, 114, 114),
        ("198.51.100.7", queue.REFUSED_PER_PEER, queue.REFUSED_MAIL_LIMIT, (1 << 20) + 14),
    ]
    newest = conn.execute("SELECT max(id) FROM refused").fetchone()[0]
    conn.execute("BEGIN")
    for number in range(queue.REFUSED_TOTAL + 50):
        queue.record_refusal(refusal(f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"), 554, "many")(conn)
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM refused").fetchone()[0] == queue.REFUSED_TOTAL
    assert conn.execute("SELECT count(*) FROM refused WHERE id <= ?", (newest,)).fetchone()[0] == 0
    conn.close()


def test_pruning_forgets_old_done_jobs_and_refusals_but_not_what_an_operator_needs(site: Site) -> None:
    """Old done jobs whose callbacks were delivered go with their steps and callbacks; a done
    job with a callback still pending, a failed job and a recent done job stay; refused
    mails older than REFUSEDKEEPDAYS go. `wodmail prune` says what it forgot."""
    location = load_location(site.write())
    path = queue.open_database(location.state_dir)
    writer = queue.Writer(path)
    old, recent = time.time() - 40 * 86400, time.time() - 86400
    try:
        ids = {}
        for name, stdid in (("old", 1), ("pending", 2), ("failed", 3), ("recent", 4)):
            command = command_from_fields(
                read_fields(f"Subject: PURGE {stdid} c{stdid}\r\n\r\nWKSHP-Sample\r\n".encode())
            )
            ids[name] = writer.run_sync(queue.enqueue(command, refusal("127.0.0.1"))).job_id
            writer.run_sync(queue.step_done(ids[name], stdid, "rotate", 0, callbacks=[queue.Callback("PUT", "/x", {})]))
        delivered = [e.id for e in queue.pending_callbacks(queue.connect(path)) if e.job_id != ids["pending"]]
        for entry in delivered:
            writer.run_sync(queue.outbox_delivered(entry))
        for name in ids:
            writer.run_sync(queue.finish(ids[name], "failed" if name == "failed" else "done", "ok"))

        def age(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE jobs SET finished = ? WHERE id != ?", (old, ids["recent"]))
            conn.execute("UPDATE jobs SET finished = ? WHERE id = ?", (recent, ids["recent"]))
            conn.execute(
                "INSERT INTO refused (received, door, code, reason, size, mail) VALUES (?, 'smtp', 554, 'old', 1, x'')",
                (old,),
            )
            conn.execute(
                "INSERT INTO refused (received, door, code, reason, size, mail) VALUES (?, 'smtp', 554, 'new', 1, x'')",
                (time.time(),),
            )

        writer.run_sync(age)
    finally:
        writer.close()
    result = wodmail(site, "prune")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.decode().strip() == "forgot 1 done jobs older than 30 days and 1 refused mails older than 7 days"
    )
    conn = queue.connect(path)
    assert {row[0] for row in conn.execute("SELECT id FROM jobs")} == {ids["pending"], ids["failed"], ids["recent"]}
    assert conn.execute("SELECT count(*) FROM steps WHERE job_id = ?", (ids["old"],)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM outbox WHERE job_id = ?", (ids["old"],)).fetchone()[0] == 0
    assert [row[0] for row in conn.execute("SELECT reason FROM refused")] == ["new"]
    conn.close()


def test_copies_are_kept_with_their_job_capped_and_forgotten_with_it(tmp_path: Path) -> None:
    """A command dropped as a copy is recorded with the job it repeats (not run, not a job);
    the newest COPIES_PER_JOB of a job are kept; a resend after a failure is no copy; pruning
    the job forgets its copies."""
    from wodmail.queue.copies import COPIES_PER_JOB, SAME_COMMAND

    path = queue.open_database(tmp_path)
    writer = queue.Writer(path)
    purge = command_from_fields(read_fields(b"Subject: PURGE 1 c1\r\n\r\nWKSHP-Sample\r\n"))
    failing = command_from_fields(read_fields(b"Subject: PURGE 2 c2\r\n\r\nWKSHP-Sample\r\n"))
    try:
        job = writer.run_sync(queue.enqueue(purge, refusal("192.0.2.1"))).job_id
        for _ in range(COPIES_PER_JOB + 5):
            assert writer.run_sync(queue.enqueue(purge, refusal("192.0.2.1"))) == queue.Enqueued(job, duplicate=True)
        failed = writer.run_sync(queue.enqueue(failing, refusal("192.0.2.1"))).job_id
        writer.run_sync(queue.finish(failed, "failed", error="the hub said no"))
        resent = writer.run_sync(queue.enqueue(failing, refusal("192.0.2.1")))
        assert not resent.duplicate and resent.job_id > failed
        conn = queue.connect(path)
        kept = queue.copies_of(conn, job)
        assert [copy.id for copy in kept] == list(range(6, COPIES_PER_JOB + 6))  # the 5 oldest dropped
        assert {(copy.job_id, copy.reason, copy.peer) for copy in kept} == {
            (job, f"{SAME_COMMAND} (queued)", "192.0.2.1")
        }
        assert queue.copy_count(conn) == COPIES_PER_JOB and queue.copies_of(conn, failed) == []
        assert [row[0] for row in conn.execute("SELECT id FROM jobs ORDER BY id")] == [job, failed, resent.job_id]
        writer.run_sync(queue.finish(job, "done", "ok"))
        assert writer.run_sync(queue.prune(time.time() + 1, 0)) == (1, 0)  # the failed job stays
        assert queue.copy_count(conn) == 0
        conn.close()
    finally:
        writer.close()


def test_below_the_free_space_floor_the_doors_answer_451_and_write_nothing(
    site: Site, daemon_factory: Callable[..., Daemon]
) -> None:
    """FREESPACEFLOOR above what the disk has: a command and a refused mail alike get 451
    (the sender keeps the mail), and nothing is written."""
    site.values["FREESPACEFLOOR"] = 1 << 30  # MiB: more than any disk here
    daemon = daemon_factory()
    assert daemon.send("CREATE 1 c1 someone@example.com")[0] == 451
    assert daemon.send("LAUNCH 1 c1")[0] == 451
    result = wodmail(site, "deliver", stdin=b"Subject: PURGE 1 c1\n\nWKSHP-Sample\n")
    assert result.returncode == 75, result.stderr
    assert b"try again later" in result.stderr
    assert "below FREESPACEFLOOR" in daemon.logs()
    assert site.jobs() == [] and site.refused() == []
