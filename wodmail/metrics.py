"""Prometheus metrics and the status page on METRICSPORT, served by the doors' process.

    GET /metrics   the Prometheus text format (prometheus-client's exposition)
    GET /          the status page (wodmail.statuspage): read-only, no script

Who may ask: any peer with `Authorization: Bearer <METRICSTOKEN>` (when the location sets
one), or a peer on loopback whose socket root or wodmail's user opened (LOCALPEERUSERS, as
the kernel says, wodmail.peers: every student can connect from 127.x too); anyone else gets
403. Nothing served holds a secret.

What a scrape costs, and what a command costs: the figures the queue database holds (jobs by
state and verb, callbacks waiting, relayed and refused mails kept, the students active per
workshop) are read from it at the scrape, in the server's thread, from a connection of its own
(wodmail.queue.status). What it does not hold is counted where it happens, in plain
dictionaries (wodmail.figures): the commands received and refused (the doors), the jobs
ended and their steps' durations (the jobs process, which writes them to STATEDIR once a
second when they changed), and the doors' connections (wodmail.admission: counters the
doors keep anyway). So a command costs a few dictionary increments, and no SQL, for the
metrics.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import socketserver
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from wodmail import queue
from wodmail.admission import ConnectionBudget, Listener
from wodmail.figures import STEP_BUCKETS, DoorFigures, JobFigures
from wodmail.location import Location
from wodmail.peers import HostPeers, parse_address
from wodmail.queue.status import QueueStatus, read_status
from wodmail.statuspage import render_status_page

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
FORBIDDEN = (
    b"403 forbidden: only from loopback by root or wodmail's user (LOCALPEERUSERS),"
    b" or with the METRICSTOKEN bearer token\n"
)
#: Requests served at once; a connection beyond them is closed at once.
REQUESTS_AT_ONCE = 8
#: Seconds a client may take to send its request.
REQUEST_TIMEOUT = 10.0
#: The page loads nothing: no script, no style or image from elsewhere (inline SVG and CSS).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class DoorSnapshot:
    """The doors' counters, copied at a scrape."""

    received: dict[tuple[str, str, str], int]
    refused: dict[tuple[str, str], int]
    accepted: dict[str, int]
    connections_open: int
    connections_refused: int
    connections_evicted: int


def peer_allowed(
    peer: object,
    authorization: str | None,
    token: str | None,
    owner: Callable[[], int | None],
    local_uids: frozenset[int],
) -> bool:
    """Whether a request may be answered: it carries the bearer token, or it comes from
    loopback and the kernel says (`owner()`: the uid owning the client's socket) that one of
    LOCALPEERUSERS opened it: on a Jupyter host every student can connect from 127.x."""
    if token is not None and authorization is not None:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False
    address = parse_address(peer[0].split("%", 1)[0])
    if address is None or not address.is_loopback:
        return False
    uid = owner()
    return uid is not None and uid in local_uids


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def metric_families(
    location: Location, doors: DoorSnapshot, jobs: JobFigures, status: QueueStatus | None
) -> list[Metric]:
    """Every wodmail metric, from the doors' counters, the jobs process's and the queue's."""
    received = CounterMetricFamily(
        "wodmail_commands_received",
        "Commands taken at the doors since the daemon started, by verb, door and outcome"
        " (queued, or duplicate: a copy of an earlier command, not queued again)",
        labels=["verb", "door", "outcome"],
    )
    for (verb, door, outcome), count in sorted(doors.received.items()):
        received.add_metric([verb, door, outcome], count)
    refused = CounterMetricFamily(
        "wodmail_commands_refused",
        "Mails refused at the doors since the daemon started, by door and reason"
        " (bad_command, not_permitted, try_later)",
        labels=["door", "reason"],
    )
    for (door, reason), count in sorted(doors.refused.items()):
        refused.add_metric([door, reason], count)
    done = CounterMetricFamily(
        "wodmail_commands_done",
        "Jobs the jobs process ended, by verb and state (done, failed)",
        labels=["verb", "state"],
    )
    for (verb, state), count in sorted(jobs.ended.items()):
        done.add_metric([verb, state], count)
    steps = HistogramMetricFamily(
        "wodmail_step_duration_seconds", "How long each step of a job took, by verb and step", labels=["verb", "step"]
    )
    for (verb, step), counts in sorted(jobs.steps.items()):
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        for bound, in_bucket in zip((*map(str, STEP_BUCKETS), "+Inf"), counts[:-1], strict=True):
            cumulative += in_bucket
            buckets.append((bound, cumulative))
        steps.add_metric([verb, step], buckets, sum_value=counts[-1])
    accepted = CounterMetricFamily(
        "wodmail_door_connections", "Connections accepted since the daemon started, by door", labels=["door"]
    )
    for door, count in sorted(doors.accepted.items()):
        accepted.add_metric([door], count)
    families: list[Metric] = [
        received,
        refused,
        done,
        steps,
        accepted,
        GaugeMetricFamily("wodmail_door_connections_open", "Connections open on the doors", doors.connections_open),
        CounterMetricFamily(
            "wodmail_door_connections_refused",
            "Connections refused because every slot was taken (MAXCONNECTIONS)",
            doors.connections_refused,
        ),
        CounterMetricFamily(
            "wodmail_door_connections_evicted",
            "Idle strangers' connections closed for a trusted peer",
            doors.connections_evicted,
        ),
        GaugeMetricFamily("wodmail_queue_up", "Whether the queue database could be read", 0 if status is None else 1),
    ]
    if status is not None:
        families.extend(_queue_families(location, status))
    return families


def _queue_families(location: Location, status: QueueStatus) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "wodmail_jobs", "Jobs in the queue by state (done jobs are kept JOBKEEPDAYS)", labels=["state"]
    )
    for state, count in status.jobs.items():
        jobs.add_metric([state], count)
    by_verb = GaugeMetricFamily("wodmail_jobs_by_verb", "Jobs in the queue by verb and state", labels=["verb", "state"])
    for (verb, state), count in sorted(status.jobs_by_verb.items()):
        by_verb.add_metric([verb, state], count)
    callbacks = GaugeMetricFamily("wodmail_callbacks", "Callbacks in the outbox by state", labels=["state"])
    for state in sorted({"pending", "delivered", "failed", "expired", *status.callbacks}):
        callbacks.add_metric([state], status.callbacks.get(state, 0))
    active = GaugeMetricFamily(
        "wodmail_students_active",
        "Students with a workshop deployed (their last CREATE done, no CLEANUP, RESET or PURGE since), by workshop",
        labels=["workshop"],
    )
    for workshop in sorted({*location.workshops, *status.active}):
        active.add_metric([workshop], status.active.get(workshop, 0))
    relay = GaugeMetricFamily(
        "wodmail_relay_mails", "Mails for people relayed to RELAYHOST, by state", labels=["state"]
    )
    for state in sorted({"pending", "sent", "failed", *status.relay}):
        relay.add_metric([state], status.relay.get(state, 0))
    refused = GaugeMetricFamily("wodmail_refused_mails_kept", "Refused mails kept for the operator", labels=["door"])
    for door, count in sorted(status.refused.items()):
        refused.add_metric([door], count)
    oldest = 0.0 if status.oldest_waiting is None else max(0.0, status.read_at - status.oldest_waiting)
    return [
        jobs,
        by_verb,
        callbacks,
        GaugeMetricFamily(
            "wodmail_callbacks_waiting", "Callbacks waiting to be delivered", status.callbacks.get("pending", 0)
        ),
        active,
        relay,
        refused,
        GaugeMetricFamily("wodmail_oldest_waiting_seconds", "Age of the job queued longest (0: none)", oldest),
        GaugeMetricFamily(
            "wodmail_needing_operator",
            "Failed and held jobs, callbacks and relayed mails set aside",
            status.needing_operator,
        ),
    ]


class _Requests(BaseHTTPRequestHandler):
    """One request: GET /metrics or GET /, from a peer `peer_allowed` lets in."""

    server: _HttpServer
    protocol_version = "HTTP/1.0"  # one request per connection
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        metrics = self.server.metrics
        allowed = peer_allowed(
            self.client_address,
            self.headers.get("Authorization"),
            metrics.location.metrics.token,
            lambda: metrics.socket_owner(self.connection.getsockname(), self.client_address),
            metrics.location.local_peer_uids,
        )
        if not allowed:
            self._send(403, FORBIDDEN, TEXT)
            return
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send(200, metrics.scrape(), CONTENT_TYPE)
        elif path == "/":
            page = metrics.page()
            if page is None:
                self._send(503, b"503 the queue cannot be read now (see the daemon's log)\n", TEXT)
            else:
                self._send(200, page.encode(), "text/html; charset=utf-8", PAGE_HEADERS)
        else:
            self._send(404, b"404 not found: /metrics or /\n", TEXT)

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the doors' log is for mail."""


class _HttpServer(ThreadingHTTPServer):
    """The standard library's threading HTTP server, with at most REQUESTS_AT_ONCE requests
    served at once (a connection beyond them is closed at once) and no name lookup."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: int, metrics: MetricsServer) -> None:
        self.address_family = family
        self.metrics = metrics
        self._slots = threading.BoundedSemaphore(REQUESTS_AT_ONCE)
        super().__init__(address, _Requests)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's also asks the resolver for a name
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """The HTTP server of METRICSPORT: the standard library's, in threads of the doors'
    process (aiohttp's server would cost that process 11 MiB more; its event loop stays
    for mail). A request reads the doors' counters (a copy of a dictionary, or an integer,
    is atomic), the jobs process's file and the queue."""

    def __init__(
        self,
        location: Location,
        db_path: Path,
        door_figures: DoorFigures,
        listeners: Mapping[str, Listener],
        budget: ConnectionBudget,
        jobs_pid: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.location = location
        self.jobs_pid = jobs_pid
        """The jobs process's pid now (it is restarted if it dies), None when none runs."""
        self.db_path = db_path
        self.door_figures = door_figures
        self.listeners = dict(listeners)
        self.budget = budget
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._peers = HostPeers()
        self._peers_lock = threading.Lock()  # HostPeers is not thread-safe; requests are threads

    async def start(self) -> None:
        """Listen on METRICSHOST:METRICSPORT (OSError if it cannot) and serve in a thread."""
        settings = self.location.metrics
        assert settings.port is not None
        infos = await asyncio.get_running_loop().getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _kind, _proto, _name, address = infos[0]
        self._server = _HttpServer((str(address[0]), int(address[1])), family, self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) it listens on."""
        if self._server is None:
            return []
        host, port = self._server.server_address[:2]
        return [(str(host), int(port))]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
        with self._peers_lock:
            self._peers.close()

    def socket_owner(self, server: object, client: object) -> int | None:
        """The uid owning a client's socket on this host, as the kernel says (None: unknown,
        or not on this host)."""
        with self._peers_lock:
            local = self._peers.client_of(server, client)
        return None if local is None else local.uid

    def _snapshot(self) -> DoorSnapshot:
        return DoorSnapshot(
            received=dict(self.door_figures.received),
            refused=dict(self.door_figures.refused),
            accepted={door: listener.accepted for door, listener in self.listeners.items()},
            connections_open=self.budget.open,
            connections_refused=self.budget.refused,
            connections_evicted=self.budget.evicted,
        )

    def _read_queue(self, history: bool) -> QueueStatus | None:
        try:
            conn = queue.connect(self.db_path)
            try:
                return read_status(conn, history=history)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            log.warning("metrics: cannot read the queue: %s", exc)
            return None

    def scrape(self) -> bytes:
        """/metrics: the Prometheus text format."""
        doors = self._snapshot()
        status = self._read_queue(history=False)
        jobs = JobFigures.load(self.location.state_dir)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ProcessCollector(registry=None))
        # The jobs process does most of the work (wodmail_jobs_process_cpu_seconds_total, its
        # RSS, its descriptors): read from /proc like the doors' own. While none runs, the
        # pid "-" names no process and the collector gives nothing.
        registry.register(ProcessCollector(namespace="wodmail_jobs", pid=lambda: self.jobs_pid() or "-", registry=None))
        registry.register(_Families(metric_families(self.location, doors, jobs, status)))
        return generate_latest(registry)

    def page(self) -> str | None:
        """/: the status page; None when the queue cannot be read."""
        status = self._read_queue(history=True)
        return None if status is None else render_status_page(self.location, status)
