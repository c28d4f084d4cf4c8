"""The durable queue: jobs, their steps, the callback outbox and refused mails, in SQLite.

One database file under STATEDIR, in WAL mode with `synchronous=FULL`: a transaction is
on disk (fsync'd) when COMMIT returns. Every write goes through one `Writer` thread that
commits whatever is waiting as one transaction (group commit): a burst of a thousand
mails costs a few dozen fsyncs, not a thousand, and nothing is answered before its
commit returned.

Job states:

    queued ──claim──▶ running ──▶ done
       ▲                 │  └───▶ failed   (a step failed for good, or retries ran out)
       └─── backoff ─────┘  └───▶ held     (interrupted MAX_CRASHES times: set aside)

`wodmail retry ID` puts a failed or held job back to queued; it resumes after its last
finished step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from wodmail.command import Command
from wodmail.durable import make_folders, sync_folder
from wodmail.errors import TryLater
from wodmail.inbound import InboundMail

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A job interrupted this many times (the daemon died while running it) is set aside.
MAX_CRASHES = 3
#: Refused mails are kept up to this many bytes each.
REFUSED_MAIL_LIMIT = 65536

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    received    REAL    NOT NULL,
    door        TEXT    NOT NULL,
    peer        TEXT,
    sender      TEXT,
    message_id  TEXT,
    verb        TEXT    NOT NULL,
    stdid       INTEGER NOT NULL,
    last_stdid  INTEGER NOT NULL,
    canonical   TEXT    NOT NULL,
    command     TEXT    NOT NULL,
    state       TEXT    NOT NULL DEFAULT 'queued',
    attempts    INTEGER NOT NULL DEFAULT 0,
    crashes     INTEGER NOT NULL DEFAULT 0,
    retries     INTEGER NOT NULL DEFAULT 0,
    not_before  REAL    NOT NULL DEFAULT 0,
    started     REAL,
    finished    REAL,
    outcome     TEXT,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (state) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_student ON jobs (stdid, id);
CREATE INDEX IF NOT EXISTS jobs_message ON jobs (message_id) WHERE message_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS steps (
    job_id      INTEGER NOT NULL REFERENCES jobs (id),
    name        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    started     REAL    NOT NULL,
    finished    REAL,
    attempts    INTEGER NOT NULL DEFAULT 1,
    result      TEXT,
    error       TEXT,
    PRIMARY KEY (job_id, name)
);

CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY,
    job_id        INTEGER NOT NULL REFERENCES jobs (id),
    student       INTEGER NOT NULL,
    method        TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    secret_field  TEXT,
    secret_name   TEXT,
    state         TEXT    NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL    NOT NULL DEFAULT 0,
    last_error    TEXT,
    created       REAL    NOT NULL,
    delivered     REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, id) WHERE state = 'pending';

CREATE TABLE IF NOT EXISTS refused (
    id          INTEGER PRIMARY KEY,
    received    REAL    NOT NULL,
    door        TEXT    NOT NULL,
    peer        TEXT,
    sender      TEXT,
    code        INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    mail        BLOB    NOT NULL
);
"""


@dataclass(frozen=True)
class Callback:
    """One call to the registration app, kept in the outbox until it is delivered.

    A secret value (a student's password) is never stored: `secret_field` names the body
    key to fill at delivery time with the job's password called `secret_name`.
    """

    method: str
    path: str
    body: dict[str, str]
    secret_field: str | None = None
    secret_name: str | None = None


@dataclass(frozen=True)
class Enqueued:
    job_id: int
    duplicate: bool


@dataclass(frozen=True)
class Job:
    id: int
    command: Command
    state: str
    received: float
    attempts: int
    crashes: int
    retries: int
    not_before: float
    error: str | None = None
    outcome: str | None = None
    door: str = ""
    peer: str | None = None
    sender: str | None = None
    started: float | None = None
    finished: float | None = None


@dataclass(frozen=True)
class Step:
    name: str
    state: str
    started: float
    finished: float | None
    attempts: int
    result: Any
    error: str | None


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    job_id: int
    student: int
    method: str
    path: str
    body: dict[str, str]
    secret_field: str | None
    secret_name: str | None
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    created: float
    delivered: float | None


#: How long a writer waits for the other process's transaction before giving up.
LOCK_WAIT = 30.0


def connect(path: Path) -> sqlite3.Connection:
    """Open the queue database with the settings durability depends on."""
    conn = sqlite3.connect(path, timeout=LOCK_WAIT, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def open_database(state_dir: Path) -> Path:
    """Make STATEDIR (0700) and the schema; return the database path.

    Every folder made and the database's name are synced before this returns (the commits
    that follow sync the database's content, not the names that lead to it).
    """
    make_folders(state_dir)
    os.chmod(state_dir, 0o700)
    path = state_dir / "queue.sqlite3"
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
    finally:
        conn.close()
    sync_folder(state_dir)
    return path


class Writer:
    """The one thread that writes to the database, committing in groups.

    `submit(fn)` (from an event loop) queues `fn(conn)` to run inside the next transaction
    and returns an asyncio future that resolves once that transaction is committed (or
    fails with the error `fn` raised, or with `TryLater` when the commit itself failed,
    e.g. disk full or a read-only STATEDIR); `run` awaits it. After each commit the thread
    wakes each waiting event loop once for the whole group, not once per write: in the jobs
    process a job makes about ten writes, and a wake-up per write was a context switch each.
    `run_sync` is the same for code without an event loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.execute("PRAGMA busy_timeout = 0")  # busy: `_until_free` waits its own, shorter way
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], _Waiter]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="wodmail-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue(fn, (loop, future))
        return future

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.submit(fn)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue(fn, future)
        return future.result()

    def _queue(self, fn: Callable[[sqlite3.Connection], Any], waiter: _Waiter) -> None:
        with self._cond:
            if self._closed:
                raise TryLater("the queue is closed")
            self._pending.append((fn, waiter))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                batch, self._pending = self._pending, []
                if not batch and self._closed:
                    return
            _settle(self._commit(batch))

    def _commit(self, batch: list[tuple[Callable[[sqlite3.Connection], Any], _Waiter]]) -> list[_Outcome]:
        """Run the batch in one transaction: each waiter with its value or its error.

        A write that raises is taken out and the others run again in a new transaction
        (rare: a replayed signature, an operator's retry of a job that is not failed); no
        savepoint per write, each of which cost two more statements and two more GIL
        hand-overs with the event loop.
        """
        conn = self._conn
        errors: dict[int, BaseException] = {}
        try:
            while True:
                values: dict[int, Any] = {}
                _until_free(conn, "BEGIN IMMEDIATE")  # the write lock
                for index, (fn, _waiter) in enumerate(batch):
                    if index in errors:
                        continue
                    try:
                        values[index] = fn(conn)
                    except sqlite3.OperationalError:
                        raise  # the database itself failed (disk full, read-only, I/O): the whole batch
                    except Exception as exc:  # noqa: BLE001 - the caller gets its own error; the batch goes on
                        errors[index] = exc
                        break
                else:
                    _until_free(conn, "COMMIT")
                    return [
                        (waiter, values.get(index), errors.get(index)) for index, (_fn, waiter) in enumerate(batch)
                    ]
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("queue commit failed: %s", exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = TryLater(f"the queue could not commit: {exc}")
            return [(waiter, None, failure) for _fn, waiter in batch]


def _until_free(conn: sqlite3.Connection, statement: str) -> None:
    """Run `statement`, again and again while the database is busy (the doors' and the jobs'
    processes each have a writer), for LOCK_WAIT seconds at most.

    SQLite's own busy handler sleeps 1, 2, 5, 10... 25 ms between tries: strace showed the
    doors' writer asleep an eighth of a burst that way, every SMTP session waiting with it,
    while the jobs' transactions it waited for last a millisecond or two. Here the pause
    starts at 0.1 ms and stays under 2 ms.
    """
    pause, deadline = 0.0001, time.monotonic() + LOCK_WAIT
    while True:
        try:
            conn.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.002)


#: Who waits for a write: a thread (a concurrent future) or an event loop and its future.
_Waiter = concurrent.futures.Future[Any] | tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]
_Outcome = tuple[_Waiter, Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """Give every waiter its outcome: threads directly, each event loop in one call."""
    per_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for waiter, value, error in outcomes:
        if isinstance(waiter, tuple):
            loop, future = waiter
            per_loop.setdefault(loop, []).append((future, value, error))
        elif error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(value)
    for loop, items in per_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in items:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


# --- the operations, each a function of a connection run inside the writer's transaction ---


def enqueue(command: Command, mail: InboundMail) -> Callable[[sqlite3.Connection], Enqueued]:
    """Add `command`, unless it is a copy of one already taken (see `find_duplicate`)."""

    def run(conn: sqlite3.Connection) -> Enqueued:
        duplicate = find_duplicate(conn, command)
        if duplicate is not None:
            return Enqueued(duplicate, duplicate=True)
        cursor = conn.execute(
            "INSERT INTO jobs (received, door, peer, sender, message_id, verb, stdid, last_stdid,"
            " canonical, command) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                mail.door,
                mail.peer,
                mail.mail_from[:320],
                command.message_id,
                command.verb,
                command.stdid,
                command.last_stdid,
                command.canonical(),
                command.to_json(),
            ),
        )
        assert cursor.lastrowid is not None
        return Enqueued(cursor.lastrowid, duplicate=False)

    return run


def find_duplicate(conn: sqlite3.Connection, command: Command) -> int | None:
    """The job `command` repeats, if any.

    A mail seen before (same Message-ID) is a redelivery. Without a Message-ID (the legacy
    client sends none), the same command as the student's latest job is a resend, unless
    that job failed: then the resend is how the sender asks for another try.
    """
    if command.message_id:
        row = conn.execute(
            "SELECT id FROM jobs WHERE message_id = ? ORDER BY id LIMIT 1", (command.message_id,)
        ).fetchone()
        if row:
            return int(row[0])
    row = conn.execute(
        "SELECT id, canonical, state FROM jobs WHERE stdid = ? ORDER BY id DESC LIMIT 1",
        (command.stdid,),
    ).fetchone()
    if row and row[1] == command.canonical() and row[2] in ("queued", "running", "done"):
        return int(row[0])
    return None


def record_refusal(mail: InboundMail, code: int, reason: str) -> Callable[[sqlite3.Connection], int]:
    def run(conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            "INSERT INTO refused (received, door, peer, sender, code, reason, size, mail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                mail.door,
                mail.peer,
                mail.mail_from[:320],
                code,
                reason,
                len(mail.data),
                mail.data[:REFUSED_MAIL_LIMIT],
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    return run


def recover(conn: sqlite3.Connection) -> list[int]:
    """At start-up: jobs left running were interrupted; queue them again or set them aside."""
    held: list[int] = []
    rows = conn.execute("SELECT id, crashes FROM jobs WHERE state = 'running'").fetchall()
    for job_id, earlier in rows:
        crashes = earlier + 1
        if crashes >= MAX_CRASHES:
            conn.execute(
                "UPDATE jobs SET state = 'held', crashes = ?, finished = ?, error = ? WHERE id = ?",
                (
                    crashes,
                    time.time(),
                    f"interrupted {crashes} times while running: set aside for an operator (wodmail retry {job_id})",
                    job_id,
                ),
            )
            held.append(job_id)
        else:
            conn.execute("UPDATE jobs SET state = 'queued', crashes = ? WHERE id = ?", (crashes, job_id))
    return held


def requeue_stopped(job_ids: Sequence[int]) -> Callable[[sqlite3.Connection], None]:
    """Hand back jobs a clean shutdown interrupted: they are not crashes."""

    def run(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE jobs SET state = 'queued' WHERE id = ? AND state = 'running'", [(i,) for i in job_ids])

    return run


def claim(job_id: int) -> Callable[[sqlite3.Connection], dict[str, Any]]:
    """Mark a job running; return the results of the steps it already finished."""

    def run(conn: sqlite3.Connection) -> dict[str, Any]:
        conn.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ? WHERE id = ?",
            (time.time(), job_id),
        )
        rows = conn.execute("SELECT name, result FROM steps WHERE job_id = ? AND state = 'done'", (job_id,)).fetchall()
        return {name: json.loads(result) if result is not None else None for name, result in rows}

    return run


def step_done(
    job_id: int,
    student: int,
    name: str,
    started: float,
    result: Any = None,
    callbacks: Iterable[Callback] = (),
) -> Callable[[sqlite3.Connection], None]:
    """Record a finished step and, in the same transaction, the callbacks it produced."""

    def run(conn: sqlite3.Connection) -> None:
        now = time.time()
        conn.execute(
            "INSERT INTO steps (job_id, name, state, started, finished, result) VALUES (?, ?, 'done', ?, ?, ?)"
            " ON CONFLICT (job_id, name) DO UPDATE SET state = 'done', finished = excluded.finished,"
            " result = excluded.result, error = NULL, attempts = attempts + 1",
            (job_id, name, started, now, json.dumps(result) if result is not None else None),
        )
        conn.executemany(
            "INSERT INTO outbox (job_id, student, method, path, body, secret_field, secret_name, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (job_id, student, cb.method, cb.path, json.dumps(cb.body), cb.secret_field, cb.secret_name, now)
                for cb in callbacks
            ],
        )

    return run


def step_failed(job_id: int, name: str, started: float, error: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO steps (job_id, name, state, started, finished, error) VALUES (?, ?, 'failed', ?, ?, ?)"
            " ON CONFLICT (job_id, name) DO UPDATE SET state = 'failed', finished = excluded.finished,"
            " error = excluded.error, attempts = attempts + 1",
            (job_id, name, started, time.time(), error),
        )

    return run


def finish(
    job_id: int, state: str, outcome: str | None = None, error: str | None = None
) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE jobs SET state = ?, finished = ?, outcome = ?, error = ? WHERE id = ?",
            (state, time.time(), outcome, error, job_id),
        )

    return run


def postpone(job_id: int, not_before: float, error: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE jobs SET state = 'queued', not_before = ?, retries = retries + 1, error = ? WHERE id = ?",
            (not_before, error, job_id),
        )

    return run


def retry(job_id: int) -> Callable[[sqlite3.Connection], str]:
    """An operator's retry: a failed or held job goes back to the queue, and the callbacks
    of any job that the registration app refused until they were set aside go back to the
    outbox. Returns what was done, for the operator."""

    def run(conn: sqlite3.Connection) -> str:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise LookupError(f"no job {job_id}")
        if row[0] not in ("failed", "held"):
            cursor = conn.execute(
                "UPDATE outbox SET state = 'pending', next_attempt = 0, attempts = 0"
                " WHERE job_id = ? AND state = 'failed'",
                (job_id,),
            )
            if cursor.rowcount:
                return f"job {job_id} is {row[0]}: its {cursor.rowcount} set-aside callback(s) go out again"
            raise ValueError(
                f"job {job_id} is {row[0]} with no set-aside callback: only failed or held jobs can be retried"
            )
        conn.execute(
            "UPDATE jobs SET state = 'queued', not_before = 0, retries = 0, crashes = 0, received = ? WHERE id = ?",
            (time.time(), job_id),
        )
        conn.execute(
            "UPDATE outbox SET state = 'pending', next_attempt = 0, attempts = 0 WHERE job_id = ? AND state = 'failed'",
            (job_id,),
        )
        return f"job {job_id} was {row[0]}: queued again; the daemon takes it within seconds"

    return run


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


# --- reading (any connection) ---

JOB_COLUMNS = (
    "id, command, state, received, attempts, crashes, retries, not_before, error, outcome, door, peer,"
    " sender, started, finished"
)


def job_from_row(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        command=Command.from_json(row[1]),
        state=row[2],
        received=row[3],
        attempts=row[4],
        crashes=row[5],
        retries=row[6],
        not_before=row[7],
        error=row[8],
        outcome=row[9],
        door=row[10],
        peer=row[11],
        sender=row[12],
        started=row[13],
        finished=row[14],
    )


def open_jobs(conn: sqlite3.Connection, after: int = 0) -> list[Job]:
    """Queued and running jobs with an id above `after`, in arrival order."""
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') AND id > ? ORDER BY id",
        (after,),
    ).fetchall()
    return [job_from_row(row) for row in rows]


def get_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return job_from_row(row) if row else None


def list_jobs(conn: sqlite3.Connection, states: Sequence[str] = (), limit: int = 50) -> list[Job]:
    if states:
        marks = ",".join("?" for _ in states)
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY id DESC LIMIT ?",
            (*states, limit),
        ).fetchall()
    else:
        rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [job_from_row(row) for row in rows]


def job_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {state: count for state, count in conn.execute("SELECT state, count(*) FROM jobs GROUP BY state")}


def steps_of(conn: sqlite3.Connection, job_id: int) -> list[Step]:
    rows = conn.execute(
        "SELECT name, state, started, finished, attempts, result, error FROM steps WHERE job_id = ?"
        " ORDER BY started, rowid",
        (job_id,),
    ).fetchall()
    return [
        Step(name, state, started, finished, attempts, json.loads(result) if result else None, error)
        for name, state, started, finished, attempts, result, error in rows
    ]


OUTBOX_COLUMNS = (
    "id, job_id, student, method, path, body, secret_field, secret_name, state, attempts, next_attempt,"
    " last_error, created, delivered"
)


def outbox_from_row(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(
        id=row[0],
        job_id=row[1],
        student=row[2],
        method=row[3],
        path=row[4],
        body=json.loads(row[5]),
        secret_field=row[6],
        secret_name=row[7],
        state=row[8],
        attempts=row[9],
        next_attempt=row[10],
        last_error=row[11],
        created=row[12],
        delivered=row[13],
    )


def pending_callbacks(conn: sqlite3.Connection, after: int = 0) -> list[OutboxEntry]:
    """The callbacks still to deliver whose id is above `after`, in id order."""
    rows = conn.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' AND id > ? ORDER BY id", (after,)
    ).fetchall()
    return [outbox_from_row(row) for row in rows]


def pending_callback_ids(conn: sqlite3.Connection) -> set[int]:
    return {row[0] for row in conn.execute("SELECT id FROM outbox WHERE state = 'pending'")}


def callbacks_of(conn: sqlite3.Connection, job_id: int) -> list[OutboxEntry]:
    rows = conn.execute(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
    return [outbox_from_row(row) for row in rows]


def outbox_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {state: count for state, count in conn.execute("SELECT state, count(*) FROM outbox GROUP BY state")}


def list_refused(conn: sqlite3.Connection, limit: int = 50) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, received, door, peer, sender, code, reason, size FROM refused ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()


def get_refused(conn: sqlite3.Connection, refused_id: int) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(
        "SELECT id, received, door, peer, sender, code, reason, size, mail FROM refused WHERE id = ?",
        (refused_id,),
    ).fetchone()
    return row
