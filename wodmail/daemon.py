"""`wodmail serve`: the doors of one location, the callbacks' outbox, and the jobs process beside them.

Start-up: load the location (a configuration error stops here, one line saying why), check
every setting the jobs will need, take the STATEDIR lock (one daemon per state), remove what
a crash left half-made there and make the password key (durably) on first use, start the
jobs process (wodmail/jobs.py: it puts interrupted jobs back on the queue and runs them),
then open the doors. This process answers mail (parse, check, commit, answer, and wake the
jobs process) and, with APIENDPOINT, delivers the callbacks the jobs queue (wodmail.outbox:
the jobs process says when there are new ones): at most 16 small requests at once, beside
the doors, on the core the jobs process leaves.

SIGTERM / SIGINT: close the doors, let commits in flight finish, then stop the jobs
process (running jobs get a grace period, the rest are handed back), give the callbacks in
flight 5 s, exit.

The doors: SMTPPORT (standard), LEGACYPORT (the registration app's crude client), and the
admin socket STATEDIR/admin.sock (root and wodmail's own user: `wodmail send`). On a host
with student accounts, the start log warns when the peer lists reach loopback
(wodmail.trust).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wodmail import queue
from wodmail.admin import AdminDoor
from wodmail.admission import ConnectionBudget, Listener
from wodmail.errors import ConfigError
from wodmail.intake import CommandIntake
from wodmail.jobs import STOP_GRACE, JobsProcess
from wodmail.legacy import LegacyLimits, LegacyPolicy, drain, start_legacy_server
from wodmail.location import Location
from wodmail.notify import Notifier
from wodmail.outbox import DOORS_QUIET, Outbox
from wodmail.passwords import PasswordMint, remove_temporaries
from wodmail.peers import HostPeers
from wodmail.regapp import RegistrationApp
from wodmail.smtp import SmtpLimits, SmtpSecurity, start_smtp_server
from wodmail.transport import HttpClient
from wodmail.trust import shared_host_warnings
from wodmail.wiring import check_settings

if TYPE_CHECKING:
    from wodmail.metrics import MetricsServer

log = logging.getLogger(__name__)

#: How long a new daemon waits for the lock of one that is still going (its jobs process
#: may take a moment to die after its doors' process was killed).
LOCK_WAIT = 10.0
#: How often STATUS= tells systemd the queue's depth (seconds).
STATUS_INTERVAL = 5.0


@contextmanager
def state_lock(state_dir: Path) -> Iterator[int]:
    """Hold STATEDIR/daemon.lock: two daemons on one queue would run jobs twice.

    The jobs process inherits the descriptor, so the lock is free only once both are gone.
    """
    fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            raise ConfigError(
                state_dir, "STATEDIR", "another wodmail daemon is already running on this state"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield fd
    finally:
        os.close(fd)


@dataclass(frozen=True)
class DoorSettings:
    """What the doors start with: the location's settings, with their files loaded."""

    smtp_limits: SmtpLimits
    smtp_security: SmtpSecurity
    """The TLS certificate and the SMTP AUTH file, loaded."""
    legacy_limits: LegacyLimits


async def prepare(location: Location) -> DoorSettings:
    """Everything `serve` builds from a loaded location before it starts, built and checked:
    the jobs' services (wiring.check_settings) and the doors' settings. `wodmail check` runs
    this too, so a file that cannot be used is the same one-line error in both."""
    location.check_parts()
    await check_settings(location)
    return DoorSettings(
        smtp_limits=SmtpLimits.from_location(location),
        smtp_security=SmtpSecurity.from_location(location),
        legacy_limits=LegacyLimits(
            max_message=location.max_message_size,
            idle_timeout=location.legacy.idle_timeout,
            total_timeout=location.legacy.session_timeout,
            peer_connections=location.legacy.peer_connections,
        ),
    )


async def serve(location: Location, ready: asyncio.Event | None = None) -> None:
    notifier = Notifier.from_environment()  # systemd's variables: read, and kept from children
    try:
        doors = await prepare(location)
        db_path = queue.open_database(location.state_dir)
        with state_lock(location.state_dir) as lock_fd:
            remove_half_made(location.state_dir)
            PasswordMint.for_state_dir(location.state_dir)  # made, durably, before anything is accepted
            await _serve(location, doors, db_path, lock_fd, ready, notifier)
    finally:
        notifier.close()


async def tell_systemd(notifier: Notifier, jobs: JobsProcess, db_path: Path) -> None:
    """READY=1 once the jobs process recovered the queue (the doors already listen); then
    WATCHDOG=1 every quarter of the watchdog's interval while the jobs process's loop is
    heard from (this loop running is the other half), and STATUS= every STATUS_INTERVAL."""
    await jobs.recovered.wait()
    notifier.ready(await asyncio.to_thread(queue_status, db_path))
    interval = notifier.watchdog_interval
    tick = min(interval / 4, STATUS_INTERVAL) if interval else STATUS_INTERVAL
    last_status = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        if interval is not None:
            if jobs.alive(within=interval / 2):
                notifier.watchdog()
            else:
                log.error("the jobs process's loop was not heard from in %.0f s: no watchdog ping", interval / 2)
        if time.monotonic() - last_status >= STATUS_INTERVAL:
            last_status = time.monotonic()
            notifier.status(await asyncio.to_thread(queue_status, db_path))


def queue_status(db_path: Path) -> str:
    """One line for `systemctl status`: the jobs by state and the callbacks waiting."""
    try:
        conn = queue.connect(db_path)
        try:
            jobs, callbacks = queue.job_counts(conn), queue.outbox_counts(conn)
            relayed = queue.relay_counts(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"queue unreadable: {exc}"
    states = ("queued", "running", "failed", "held", "done")
    shown = ", ".join(f"{jobs.get(state, 0)} {'waiting' if state == 'queued' else state}" for state in states)
    relaying = f"; {relayed['pending']} mails to relay" if relayed.get("pending") else ""
    return f"{shown}; {callbacks.get('pending', 0)} callbacks waiting{relaying}"


async def start_metrics(
    location: Location,
    db_path: Path,
    intake: CommandIntake,
    servers: list[Listener],
    budget: ConnectionBudget,
    jobs: JobsProcess,
) -> MetricsServer | None:
    """The metrics and the status page on METRICSPORT (wodmail.metrics). A port that cannot
    be listened on is logged, and the doors serve mail without them."""
    from wodmail.metrics import MetricsServer  # prometheus-client and http.server: only when asked

    listeners = dict(zip(("smtp", "legacy"), servers, strict=False))

    def jobs_pid() -> int | None:
        return jobs.process.pid if jobs.process is not None else None

    metrics = MetricsServer(location, db_path, intake.figures, listeners, budget, jobs_pid)
    try:
        await metrics.start()
    except OSError as exc:
        await metrics.stop()
        log.error(
            "cannot serve the metrics on %s:%s (%s): serving mail without them",
            location.metrics.host,
            location.metrics.port,
            exc,
        )
        return None
    for host, port in metrics.addresses:
        log.info("metrics and status page on http://%s:%s/", host, port)
    return metrics


class Callbacks:
    """The outbox (wodmail.outbox), in this process: its own writer (so that FREESPACEFLOOR,
    which refuses mail, never keeps a delivery from being recorded) and its own HTTP client.
    It yields to the doors while they take commands (wodmail.outbox.DOORS_QUIET)."""

    def __init__(self, location: Location, db_path: Path) -> None:
        self._client = HttpClient(max_per_origin=32, timeout=30.0, connect_timeout=10.0)
        assert location.api_endpoint
        app = RegistrationApp(location.api_endpoint, location.api_user or "", location.api_password or "", self._client)
        self._writer = queue.Writer(db_path)
        mint = PasswordMint.for_state_dir(location.state_dir)
        self.outbox = Outbox(
            db_path,
            self._writer,
            app,
            mint,
            backoff_cap=location.jobs.callback_backoff_max,
            doors_busy=self.doors_busy,
        )
        self._took_command = 0.0
        self._task: asyncio.Task[None] | None = None
        self._quiescing: asyncio.Task[None] | None = None

    @classmethod
    def from_location(cls, location: Location, db_path: Path) -> Callbacks | None:
        """The outbox of `location`, or None without APIENDPOINT (no callback is queued)."""
        if not location.api_endpoint:
            return None
        import aiohttp  # noqa: F401 - now, not on the first callback: 0.25 s that would hold the doors' loop

        return cls(location, db_path)

    def took_command(self) -> None:
        """The doors committed a command."""
        self._took_command = time.monotonic()

    def doors_busy(self) -> bool:
        return time.monotonic() - self._took_command < DOORS_QUIET

    def start(self) -> None:
        self._task = asyncio.create_task(self.outbox.run(), name="outbox")

    def quiesce(self, jobs: JobsProcess) -> None:
        """A crash point in the jobs process waits: pause, and say so once nothing is in flight."""

        async def pause() -> None:
            self.outbox.pause()
            await self.outbox.wait_idle()
            jobs.outbox_idle()

        if self._quiescing is None:
            self._quiescing = asyncio.create_task(pause(), name="outbox-quiesce")

    async def aclose(self) -> None:
        """Give the callbacks in flight 5 s, then stop (the next start sends what is left)."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self.outbox.wait_idle(), timeout=5)
            except TimeoutError:
                log.warning("callbacks still in flight after 5 s: stopping without them")
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._quiescing is not None:
            self._quiescing.cancel()
        self.outbox.close()
        self._writer.close()
        await self._client.aclose()


def remove_half_made(state_dir: Path) -> None:
    """Remove what a crash (or a power cut) left half-made in STATEDIR, under the lock, before
    anything else runs: the temporary files of a password key being made. (The hooks' run
    folder is the jobs process's: wodmail/jobs.py empties it at its start.)"""
    removed = remove_temporaries(state_dir)
    if removed:
        log.warning("removed what a crash left half-made in %s: %s", state_dir, ", ".join(sorted(removed)))


async def _serve(
    location: Location,
    doors: DoorSettings,
    db_path: Path,
    lock_fd: int,
    ready: asyncio.Event | None,
    notifier: Notifier,
) -> None:
    budget = ConnectionBudget.from_location(location)  # one for both doors
    writer = queue.Writer(db_path, floor=location.free_space_floor)
    callbacks = Callbacks.from_location(location, db_path)
    jobs = JobsProcess(
        location,
        keep_fds=(lock_fd,),
        on_callbacks=callbacks.outbox.wake if callbacks is not None else None,
        on_quiesce=(lambda: callbacks.quiesce(jobs)) if callbacks is not None else None,
    )
    host_peers = HostPeers()

    def took_command(job_id: int) -> None:
        jobs.wake(job_id)
        if callbacks is not None:
            callbacks.took_command()

    try:
        intake = CommandIntake(location, writer, on_enqueued=took_command, peers=host_peers)
    except ConfigError:
        writer.close()
        if callbacks is not None:
            await callbacks.aclose()
        raise
    # Once every setting is known good (a configuration error is one line and nothing else).
    for warning in shared_host_warnings(location):
        log.warning("%s", warning)
    await jobs.start()
    watcher = asyncio.create_task(jobs.watch(), name="jobs-watch")
    if callbacks is not None:
        callbacks.start()
    supervisor: asyncio.Task[None] | None = None
    servers: list[Listener] = []
    legacy_server = None
    metrics = None
    admin = AdminDoor(intake, location.state_dir, location.max_message_size)
    admin_started = False
    try:
        await admin.start()  # first: once SMTPPORT answers, `wodmail send` finds it
        admin_started = True
        servers.append(
            await start_smtp_server(
                intake,
                location.smtp_host,
                location.smtp_port,
                max_message_size=location.max_message_size,
                limits=doors.smtp_limits,
                security=doors.smtp_security,
                host_peers=host_peers,
                budget=budget,
            )
        )
        if location.legacy_port is not None:
            legacy_server = await start_legacy_server(
                intake,
                location.smtp_host,
                location.legacy_port,
                doors.legacy_limits,
                host_peers,
                LegacyPolicy(location),
                budget,
            )
            servers.append(legacy_server)
        for server in servers:
            for sock in server.sockets:
                log.info("listening on %s:%s", *sock.getsockname()[:2])
        if location.metrics.port is not None:
            metrics = await start_metrics(location, db_path, intake, servers, budget, jobs)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("wodmail serving location %s (%s)", location.name, location.file)
        if ready is not None:
            ready.set()
        if notifier.active:
            supervisor = asyncio.create_task(tell_systemd(notifier, jobs, db_path), name="systemd-notify")
        await stop.wait()
    finally:
        log.info("stopping: closing the doors")
        notifier.stopping()
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        for server in servers:
            server.close()
        if legacy_server is not None:
            await drain(legacy_server)
        if admin_started:
            await admin.drain()
        if metrics is not None:
            await metrics.stop()
        await jobs.stop(STOP_GRACE + 10)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        if callbacks is not None:
            await callbacks.aclose()
        writer.close()
        host_peers.close()
        log.info("stopped")
