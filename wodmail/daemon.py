"""`wodmail serve`: the doors, the worker and the outbox of one location, in one process.

Start-up: load the location (a configuration error stops here, one line saying why),
take the STATEDIR lock (one daemon per state), put interrupted jobs back on the queue,
then open the doors. SIGTERM / SIGINT: close the doors, let commits in flight finish,
give running jobs a grace period, hand back the rest, exit.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from wodmail import faults, queue
from wodmail.errors import ConfigError
from wodmail.homes import Homes
from wodmail.hub import Hub
from wodmail.intake import CommandIntake
from wodmail.legacy import LegacyLimits, drain, start_legacy_server
from wodmail.location import Location
from wodmail.passwords import PasswordMint
from wodmail.playbooks import Playbooks
from wodmail.regapp import Outbox, RegistrationApp
from wodmail.services import Services
from wodmail.smtp import start_smtp_server
from wodmail.worker import Worker
from wodmail.workshop import Renderer

log = logging.getLogger(__name__)

STOP_GRACE = 20.0


def seconds(location: Location, key: str, default: float) -> float:
    """A duration key of the location (seconds, > 0), or its default."""
    value = location.values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(location.file, key, "must be a positive number of seconds")
    return float(value)


@contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold STATEDIR/daemon.lock: two daemons on one queue would run jobs twice."""
    fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                state_dir, "STATEDIR", "another wodmail daemon is already running on this state"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def build_services(location: Location, client: httpx.AsyncClient) -> tuple[Services, RegistrationApp | None]:
    app = None
    if location.api_endpoint:
        app = RegistrationApp(location.api_endpoint, location.api_user or "", location.api_password or "", client)
    hub = Hub.from_location(location, client)
    services = Services(
        location=location,
        homes=Homes(location.student_dir, location.skel_dir),
        renderer=Renderer(),
        playbooks=Playbooks(location.state_dir),
        hub=hub,
        app=app,
    )
    return services, app


async def serve(location: Location, ready: asyncio.Event | None = None) -> None:
    db_path = queue.open_database(location.state_dir)
    with state_lock(location.state_dir):
        await _serve(location, db_path, ready)


async def _serve(location: Location, db_path: Path, ready: asyncio.Event | None) -> None:
    # verbs/ is wodmail.verbs once installed; mypy checks it on its own as `verbs`.
    from wodmail.verbs import REGISTRY  # type: ignore[import-untyped,unused-ignore]

    writer = queue.Writer(db_path)
    held = await writer.run(queue.recover)
    for job_id in held:
        log.warning("job %d was interrupted too often and is set aside (wodmail jobs show %d)", job_id, job_id)
    mint = PasswordMint.for_state_dir(location.state_dir)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0), limits=limits) as client:
        services, app = build_services(location, client)
        outbox = None
        if app is not None:
            outbox = Outbox(db_path, writer, app, mint, backoff_cap=seconds(location, "CALLBACKBACKOFFMAX", 300))
            faults.quiesce.append(outbox.wait_idle)
        worker = Worker(
            db_path,
            writer,
            services,
            REGISTRY,
            mint,
            concurrency=location.workers,
            retry_for=seconds(location, "RETRYFOR", 900),
            backoff_cap=seconds(location, "RETRYBACKOFFMAX", 300),
            on_callbacks=outbox.wake if outbox is not None else None,
        )
        intake = CommandIntake(location, writer, on_enqueued=worker.wake)
        smtp_server = await start_smtp_server(
            intake, location.smtp_host, location.smtp_port, max_message_size=location.max_message_size
        )
        servers = [smtp_server]
        legacy_server = None
        if location.legacy_port is not None:
            legacy_server = await start_legacy_server(
                intake,
                location.smtp_host,
                location.legacy_port,
                LegacyLimits(max_message=location.max_message_size),
            )
            servers.append(legacy_server)
        for server in servers:
            for sock in server.sockets:
                log.info("listening on %s:%s", *sock.getsockname()[:2])
        tasks = [asyncio.create_task(worker.run(), name="worker")]
        if outbox is not None:
            tasks.append(asyncio.create_task(outbox.run(), name="outbox"))

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("wodmail serving location %s (%s)", location.name, location.file)
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            log.info("stopping: closing the doors")
            for server in servers:
                server.close()
            if legacy_server is not None:
                await drain(legacy_server)
            await worker.stop(STOP_GRACE)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if outbox is not None:
                outbox.close()
            writer.close()
            log.info("stopped")
