"""The one thread that writes to the queue database, committing in groups."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from wodmail.errors import TryLater
from wodmail.queue.schema import LOCK_WAIT, connect, free_bytes

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often (seconds) a writer with a floor looks at the free space.
ROOM_CHECK = 0.5


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

    def __init__(self, path: Path, floor: int = 0) -> None:
        self.path = path
        self.floor = floor
        """Below this many free bytes on the database's filesystem, every write is refused
        with `TryLater` before it is queued (the doors answer 451: the sender keeps the mail)."""
        self._room_checked = 0.0
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
        if self.floor:
            self._check_room()
        with self._cond:
            if self._closed:
                raise TryLater("the queue is closed")
            self._pending.append((fn, waiter))
            self._cond.notify()

    def _check_room(self) -> None:
        """At most every ROOM_CHECK seconds, a statfs of the database's filesystem."""
        now = time.monotonic()
        if now - self._room_checked < ROOM_CHECK:
            return
        free = free_bytes(self.path.parent)
        if free < self.floor:
            raise TryLater(
                f"only {free >> 20} MiB free where the queue is, below FREESPACEFLOOR {self.floor >> 20} MiB"
            )
        self._room_checked = now

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
                    return [(waiter, values.get(index), errors.get(index)) for index, (_fn, waiter) in enumerate(batch)]
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
