"""The jobs process: the worker, beside the doors' process.

`wodmail serve` runs two processes. The first holds the doors: it answers mail and commits
commands, so a burst of registrations is answered at the speed of the disk whatever the
jobs cost, and it delivers the callbacks the jobs queue (wodmail.outbox). It starts this
second one (`wodmail jobs-process`, not for operators), which runs the jobs and, with
RELAYHOST, passes the app's mails for people to the site's MTA (wodmail.relay), at a lower
CPU priority (JOBSNICE, default 10, and the kernel's batch policy): on a busy host the mail
is answered first and the jobs catch up.
Two processes also put both cores of a small Jupyter host to work: in a burst the jobs'
event loop is the busiest thing on the host, and the callbacks' HTTP (a fifth of its work
when it ran here) goes on beside it, in the doors' process, which is idle once the burst
is in. A third process for the callbacks did as well, and cost 30 MiB more.

The two share the queue database (SQLite serialises their writes) and two pipes. The doors
write a byte on one after each commit, which wakes the worker at once (it also polls, for
`wodmail deliver`). On the other this process reports: READY, a HEARTBEAT every second,
and CALLBACKS after a job queued some, which wakes the doors' outbox.
If the doors' process dies, even by SIGKILL, the kernel kills this one too
(PR_SET_PDEATHSIG), so a restarted daemon never meets a worker left running. If this one
dies, the doors' process starts it again; the jobs it was running go back on the queue,
and a job that keeps killing it is set aside after MAX_CRASHES.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wodmail import faults, queue
from wodmail.backoff import backoff
from wodmail.erase import DIR_FLAGS, erase_contents
from wodmail.errors import TryLater
from wodmail.figures import JobFigures
from wodmail.location import Location
from wodmail.passwords import PasswordMint
from wodmail.relay import MailRelay
from wodmail.replies import Replier
from wodmail.reports import Desk
from wodmail.transport import HttpClient
from wodmail.verbspec import shipped_verbs
from wodmail.wiring import build_services
from wodmail.worker import Worker

log = logging.getLogger(__name__)

STOP_GRACE = 20.0
#: How often the jobs process forgets what is older than the location keeps (seconds).
TIDY_INTERVAL = 3600.0
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    faults.KILL_PARENT = True


async def run_jobs(location: Location, wake_fd: int, report_fd: int | None = None) -> None:
    """The jobs process's life: recover, then work until SIGTERM (or the parent's death).

    On `report_fd` it tells the doors' process READY once the queue is recovered and its
    workers run, then a HEARTBEAT from its event loop every second (the doors' process
    gives systemd's watchdog its pings only while these come)."""
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the prctl took
        os.kill(os.getpid(), signal.SIGKILL)
    os.nice(location.jobs.nice)
    # A batch task is not favoured on waking: the doors, woken by each SMTP command, get
    # their core at once while the jobs process, always busy in a burst, takes what is left.
    with contextlib.suppress(OSError):  # a sandbox may forbid it: the nice value still holds
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))

    db_path = location.state_dir / "queue.sqlite3"
    directory = None
    if location.ldap_uri:
        from wodmail.directory import LdapDirectory  # imports ldap3: only where there is LDAP

        directory = LdapDirectory.from_location(location)
    writer = queue.Writer(db_path)
    held = await writer.run(queue.recover)
    for job_id in held:
        log.warning("job %d was interrupted too often and is set aside (wodmail jobs show %d)", job_id, job_id)
    mint = PasswordMint.for_state_dir(location.state_dir)
    client = HttpClient(max_per_origin=32, timeout=30.0, connect_timeout=10.0)
    try:
        services, app = build_services(location, client, directory)
        services.queue_desk = Desk(location, db_path, writer, shipped_verbs())
        clear_hook_runs(services.playbooks.run_dir)
        replier: Replier | None = None

        def job_ended() -> None:
            if replier is not None:
                replier.wake()

        outbox = None
        if app is not None and report_fd is not None:
            outbox = DoorsOutbox(report_fd)
            faults.quiesce.append(outbox)
        # Counted only when the metrics are served (METRICSPORT): wodmail.figures.
        figures = JobFigures.resume(location.state_dir) if location.metrics.port is not None else None
        worker = Worker(
            db_path,
            writer,
            services,
            shipped_verbs(),
            mint,
            concurrency=location.workers,
            retry_for=location.jobs.retry_for,
            backoff_cap=location.jobs.retry_backoff_max,
            on_callbacks=outbox.queued if outbox is not None else None,
            on_end=job_ended,
            figures=figures,
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def woken() -> None:
            try:
                data = os.read(wake_fd, 4096)
            except BlockingIOError:
                return
            if data:
                if OUTBOX_IDLE in data and outbox is not None:
                    outbox.quiet()
                worker.wake()
                if relay is not None:
                    relay.wake()
                if replier is not None:
                    replier.wake()  # a CLEANUP may have cancelled a CREATE owed a reply
            elif not stop.is_set():
                # The doors' process is gone without a word: die as it did (the kernel's
                # PDEATHSIG will say the same); the queue tells the next daemon where we were.
                os.kill(os.getpid(), signal.SIGKILL)

        os.set_blocking(wake_fd, False)
        loop.add_reader(wake_fd, woken)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        relay = None
        if location.relay.host:
            relay = MailRelay(db_path, writer, location.relay)
        else:
            warn_unrelayed(db_path)
        tasks = [asyncio.create_task(worker.run(), name="worker")]
        if relay is not None:
            tasks.append(asyncio.create_task(relay.run(), name="relay"))
            replier = Replier(db_path, writer, location, relay.wake)
            tasks.append(asyncio.create_task(replier.run(), name="replies"))
        tasks.append(asyncio.create_task(keep_tidy(writer, location), name="retention"))
        tasks.append(asyncio.create_task(services.compile_catalog(), name="catalog"))
        if figures is not None:
            tasks.append(asyncio.create_task(figures.publish_every(location.state_dir), name="figures"))
        log.info(
            "jobs process ready (%d workers, %d hook slots); %s",
            location.workers,
            location.jobs.hook_slots,
            services.homes.describe(),
        )
        if why := services.homes.not_durable():
            log.warning("steps are recorded after a flush, but %s", why)
        # The keeper starts with the jobs process, not at a burst's first request (its start
        # held the first 64 CREATEs of a burst 0.4 s). It empties the trash when it starts:
        # homes a crash left set aside there are erased at once.
        try:
            await services.homes.keeper.start()
        except OSError as exc:  # the first request tries again
            log.error("cannot start the keeper (%s): it is started again at the first job that needs it", exc)
        if report_fd is not None:
            tasks.append(asyncio.create_task(report_to_parent(report_fd), name="heartbeat"))
        try:
            await stop.wait()
        finally:
            loop.remove_reader(wake_fd)
            await worker.stop(STOP_GRACE)
            if relay is not None:
                try:
                    await asyncio.wait_for(relay.wait_idle(), timeout=5)
                except TimeoutError:  # still pending in the queue: the next start sends them
                    log.warning("mails being relayed after 5 s: stopping without them")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if relay is not None:
                relay.close()
            if replier is not None:
                replier.close()
            services.desk().close()
            if directory is not None:
                await directory.aclose()
            await services.homes.keeper.aclose()
            writer.close()
            log.info("jobs process stopped")
    finally:
        await client.aclose()


def warn_unrelayed(db_path: Path) -> None:
    """Without RELAYHOST: say so when relayed mails still wait (it was removed since)."""
    try:
        conn = queue.connect(db_path)
        try:
            waiting = queue.relay_counts(conn).get("pending", 0)
        finally:
            conn.close()
    except sqlite3.Error:
        return
    if waiting:
        log.warning("%d relayed mail(s) wait for RELAYHOST, which is not set (wodmail relay)", waiting)


def clear_hook_runs(run_dir: Path) -> None:
    """Empty the hooks' run folder of what an earlier jobs process left there when it died: a
    hook's variables file (it holds the student's password) and Ansible's temporary folders.
    No hook runs yet: the jobs they served run again, and write their own."""
    try:
        folder = os.open(run_dir, DIR_FLAGS)
    except FileNotFoundError:
        return
    try:
        removed = erase_contents(folder)  # through descriptors, never following a link
    except OSError as exc:
        log.warning("cannot empty %s: %s", run_dir, exc)
        return
    finally:
        os.close(folder)
    if removed:
        log.warning("removed what hooks of an earlier run left in %s: %d entries", run_dir, removed)


async def keep_tidy(writer: queue.Writer, location: Location) -> None:
    """Every TIDY_INTERVAL (first a minute after the start): forget the done jobs and the
    refused mails older than the location keeps them."""
    await asyncio.sleep(60)
    while True:
        try:
            jobs, refused = await asyncio.to_thread(
                queue.prune_old, writer, location.job_keep_days, location.refused_keep_days
            )
            if jobs or refused:
                log.info(
                    "forgot %d done jobs older than %d days and %d refused mails older than %d days",
                    jobs,
                    location.job_keep_days,
                    refused,
                    location.refused_keep_days,
                )
        except (TryLater, sqlite3.Error) as exc:
            log.warning("cannot forget old jobs and refused mails now: %s", exc)
        await asyncio.sleep(TIDY_INTERVAL)


#: What the jobs process writes on its report pipe: it recovered the queue, its loop runs,
#: a job queued callbacks, a crash point waits for the outbox to be idle (wodmail.faults).
READY, HEARTBEAT, CALLBACKS, QUIESCE = b"R", b".", b"C", b"Q"
#: What the doors write on the wake pipe, besides a wake: their outbox is idle and paused.
OUTBOX_IDLE = b"I"
#: Seconds between heartbeats.
HEARTBEAT_INTERVAL = 1.0


async def report_to_parent(report_fd: int) -> None:
    """READY once, then a HEARTBEAT every HEARTBEAT_INTERVAL, from this process's loop: a
    loop that hangs stops them. A full pipe drops a beat (the next one says the same)."""
    os.set_blocking(report_fd, False)
    message = READY + HEARTBEAT
    while True:
        try:
            os.write(report_fd, message)
        except BlockingIOError:
            pass
        except BrokenPipeError:  # the doors' process is gone: PDEATHSIG ends this one
            return
        message = HEARTBEAT
        await asyncio.sleep(HEARTBEAT_INTERVAL)


class DoorsOutbox:
    """This process's side of the outbox, which runs in the doors' process: tell it that a
    job queued callbacks; for a crash point, have it pause and wait until it is idle."""

    def __init__(self, report_fd: int) -> None:
        self._report_fd = report_fd
        os.set_blocking(report_fd, False)
        self._quiet = asyncio.Event()

    def queued(self) -> None:
        self._say(CALLBACKS)

    def quiet(self) -> None:
        """The doors said their outbox is paused and idle."""
        self._quiet.set()

    @property
    def idle(self) -> bool:
        return self._quiet.is_set()

    async def wait_idle(self) -> None:
        self._say(QUIESCE)
        await self._quiet.wait()

    def _say(self, what: bytes) -> None:
        # A full pipe holds bytes the doors have not read yet: they read them, and their
        # outbox reads the queue, soon; and it reads every pending callback every few seconds.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._report_fd, what)


class JobsProcess:
    """The doors' side: start the jobs process, wake it, restart it if it dies, stop it."""

    def __init__(
        self,
        location: Location,
        keep_fds: tuple[int, ...],
        on_callbacks: Callable[[], None] | None = None,
        on_quiesce: Callable[[], None] | None = None,
    ) -> None:
        self.location = location
        self.keep_fds = keep_fds
        self.on_callbacks = on_callbacks
        """Called when the jobs process says a job queued callbacks (it wakes the outbox)."""
        self.on_quiesce = on_quiesce
        """Called when a crash point asks for the outbox to be paused and idle (faults)."""
        self.process: asyncio.subprocess.Process | None = None
        self._wake_w: int | None = None
        self._report_r: int | None = None
        self._stopping = False
        self._restarts = 0
        self.recovered = asyncio.Event()
        """Set once the (first) jobs process said it recovered the queue and works."""
        self._started_at = 0.0
        self._heard_at: float | None = None

    async def start(self) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        report_r, report_w = os.pipe()
        argv = [
            sys.executable,
            "-P",  # run from "/", importing nothing from the folder the daemon was started in
            "-m",
            "wodmail",
            "--location",
            os.path.abspath(self.location.file),
            "--log-level",
            logging.getLevelName(logging.getLogger().level).lower(),
            "jobs-process",
            "--wake-fd",
            str(read_end),
            "--report-fd",
            str(report_w),
        ]
        self._close_report()
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(read_end, report_w, *self.keep_fds), cwd="/"
            )
        finally:
            os.close(read_end)
            os.close(report_w)
        self._started_at, self._heard_at = time.monotonic(), None
        os.set_blocking(report_r, False)
        self._report_r = report_r
        asyncio.get_running_loop().add_reader(report_r, self._heard)
        if self._wake_w is not None:
            os.close(self._wake_w)
        self._wake_w = write_end

    def _heard(self) -> None:
        if self._report_r is None:
            return
        try:
            data = os.read(self._report_r, 4096)
        except BlockingIOError:
            return
        if not data:  # the process ended: watch() starts the next one
            self._close_report()
            return
        self._heard_at = time.monotonic()
        if READY in data:
            self.recovered.set()
        if CALLBACKS in data and self.on_callbacks is not None:
            self.on_callbacks()
        if QUIESCE in data and self.on_quiesce is not None:
            self.on_quiesce()

    def _close_report(self) -> None:
        if self._report_r is not None:
            asyncio.get_running_loop().remove_reader(self._report_r)
            os.close(self._report_r)
            self._report_r = None

    def alive(self, within: float) -> bool:
        """Whether the jobs process's loop was heard from in the last `within` seconds (one
        started less than `within` ago counts while it starts; one that died and waits to be
        started again counts too: watch() deals with it)."""
        process = self.process
        if process is None or process.returncode is not None or self._report_r is None:
            return True
        last = self._heard_at if self._heard_at is not None else self._started_at
        return time.monotonic() - last < within

    def wake(self, _job_id: int | None = None) -> None:
        self._say(b"!")

    def outbox_idle(self) -> None:
        """Tell the jobs process the outbox is paused and idle (its crash point may fire)."""
        self._say(OUTBOX_IDLE)

    def _say(self, what: bytes) -> None:
        if self._wake_w is None:
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._wake_w, what)

    async def watch(self) -> None:
        """Restart the jobs process whenever it dies, with a growing pause."""
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            self._restarts += 1
            pause = backoff(self._restarts + 1, first=0.5, cap=30.0)
            log.error("the jobs process ended (%s); starting it again in %.1f s", code, pause)
            await asyncio.sleep(pause)
            if not self._stopping:
                await self.start()

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=timeout)
            except TimeoutError:
                log.error("the jobs process did not stop in %.0f s: killing it", timeout)
                process.kill()
                await process.wait()
        if self._wake_w is not None:
            os.close(self._wake_w)
            self._wake_w = None
        self._close_report()
