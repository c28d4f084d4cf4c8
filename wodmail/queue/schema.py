"""The database file, its settings and its schema, versioned with `PRAGMA user_version`.

Each entry of MIGRATIONS takes the schema one version up; `open_database` applies those a
file has not had yet, in one transaction. Version 1 is the schema every database made
before versions existed already has (each statement `IF NOT EXISTS`), the signature
nonces' table included (it used to be made inside every signed command's transaction).
Version 3 adds the deadlines (jobs.deadline, outbox.expires) and the relay table. Version 4
adds replies (jobs.reply_to, jobs.reply_id: wodmail.replies) and drained workshops. Version 5
adds the commands dropped as copies (wodmail.queue.copies).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from wodmail.durable import make_folders, sync_folder

#: How long a writer waits for the other process's transaction before giving up.
LOCK_WAIT = 30.0

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, steps, the outbox, refused mails, signature nonces
    """
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

CREATE TABLE IF NOT EXISTS signature_nonces (
    nonce      TEXT    PRIMARY KEY,
    key_id     TEXT    NOT NULL,
    signed     INTEGER NOT NULL,
    job_id     INTEGER
);
CREATE INDEX IF NOT EXISTS signature_nonces_signed ON signature_nonces (signed);
    """,
    # 2: what pruning looks things up by
    """
CREATE INDEX IF NOT EXISTS refused_peer ON refused (peer, id);
CREATE INDEX IF NOT EXISTS refused_received ON refused (received);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished) WHERE state = 'done';
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id);
CREATE INDEX IF NOT EXISTS signature_nonces_job ON signature_nonces (job_id);
    """,
    # 3: the registration app's deadline on a job and on its activating callbacks
    # (wodmail.appdeadline); the mails for people relayed to RELAYHOST (wodmail.relay)
    """
ALTER TABLE jobs ADD COLUMN deadline REAL;
ALTER TABLE outbox ADD COLUMN expires REAL;

CREATE TABLE IF NOT EXISTS relay (
    id            INTEGER PRIMARY KEY,
    received      REAL    NOT NULL,
    door          TEXT    NOT NULL,
    peer          TEXT,
    auth          TEXT    NOT NULL,
    sender        TEXT    NOT NULL,
    recipients    TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    mail          BLOB    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    rejections    INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL    NOT NULL DEFAULT 0,
    last_error    TEXT,
    sent          REAL
);
CREATE INDEX IF NOT EXISTS relay_pending ON relay (next_attempt, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS relay_sent ON relay (sent) WHERE state = 'sent';
    """,
    # 4: where a command's reply goes and the relayed mail that carried it (wodmail.replies);
    # the workshops whose CREATEs are refused until RESUME (wodmail.queue.drains)
    """
ALTER TABLE jobs ADD COLUMN reply_to TEXT;
ALTER TABLE jobs ADD COLUMN reply_id INTEGER;
CREATE INDEX IF NOT EXISTS jobs_reply_owed ON jobs (id) WHERE reply_to IS NOT NULL AND reply_id IS NULL;

CREATE TABLE IF NOT EXISTS drains (
    workshop    TEXT    PRIMARY KEY,
    since       REAL    NOT NULL,
    by          TEXT    NOT NULL
);
    """,
    # 5: the commands dropped as copies of a job already taken (wodmail.queue.copies)
    """
CREATE TABLE IF NOT EXISTS copies (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id),
    received    REAL    NOT NULL,
    door        TEXT    NOT NULL,
    peer        TEXT,
    sender      TEXT,
    reason      TEXT    NOT NULL,
    command     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS copies_job ON copies (job_id, id);
CREATE INDEX IF NOT EXISTS copies_received ON copies (received);
    """,
)


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
        migrate(conn)
    finally:
        conn.close()
    sync_folder(state_dir)
    return path


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to the last version, in one transaction; return that version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise sqlite3.DatabaseError(
                f"the queue's schema is version {version}, newer than this wodmail's {len(MIGRATIONS)}"
            )
        for script in MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


def checkpoint(path: Path) -> None:
    """Copy the write-ahead log back into the database and truncate it (it grows while
    readers hold old snapshots), from a connection of its own."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def free_bytes(path: Path) -> int:
    """Free space for an unprivileged writer on the filesystem that holds `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
