"""Time from 250 to the last callback, for one CREATE and for a burst sent at once.

    .venv/bin/python bench/burst.py [--count 100] [--connections 20]

Starts the registration-app stand-in from the tests and a real `wodmail serve` on a
temporary location (the shipped sample workshop, callbacks on), sends the CREATEs over
concurrent SMTP connections, and reports, per command, the time from its 250 to the
arrival of its last callback at the stand-in (one clock: both ends live in this process).
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import Daemon, Site, with_app
from tests.standins import RegistrationApp


def send_burst(port: int, stdids: list[int], connections: int) -> dict[int, float]:
    """CREATE each student; return when each got its 250 (time.monotonic)."""
    accepted: dict[int, float] = {}
    lock = threading.Lock()
    chunks = [stdids[i::connections] for i in range(connections)]

    def run(chunk: list[int]) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.ehlo()
            for stdid in chunk:
                client.mail("wod@example.com")
                client.rcpt("jupyter@example.com")
                code, text = client.data(f"Subject: CREATE {stdid} c{stdid}\r\n\r\nWKSHP-Sample\r\n".encode())
                if code != 250:
                    raise RuntimeError(f"CREATE {stdid}: {code} {text!r}")
                with lock:
                    accepted[stdid] = time.monotonic()

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(run, [c for c in chunks if c]))
    return accepted


def last_callbacks(app: RegistrationApp, stdids: list[int], timeout: float) -> dict[int, float]:
    """When each student's last callback (customer active) arrived."""
    want = {f"/customer/c{s}": s for s in stdids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        arrived = {want[c.path]: c.at for c in app.puts("/customer/") if c.path in want}
        if len(arrived) == len(stdids):
            return arrived
        time.sleep(0.02)
    raise RuntimeError(f"only {len(arrived)} of {len(stdids)} callbacks arrived in {timeout} s")


def measure(site: Site, app: RegistrationApp, stdids: list[int], connections: int) -> list[float]:
    accepted = send_burst(site.smtp_port, stdids, connections)
    arrived = last_callbacks(app, stdids, timeout=120)
    return sorted(arrived[s] - accepted[s] for s in stdids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RegistrationApp() as app:
        site = Site(Path(tmp))
        with_app(site, app)
        site.workshops["WKSHP-Sample"]["range"] = [1, 999]
        daemon = Daemon(site).start()
        try:
            first = measure(site, app, [1], 1)
            print(f"first CREATE (compiles the workshop, logs in): 250 -> last callback {first[0] * 1000:.1f} ms")
            one = measure(site, app, [999], 1)
            print(f"one CREATE: 250 -> last callback {one[0] * 1000:.1f} ms")
            burst = measure(site, app, list(range(2, 2 + args.count)), args.connections)
            q = statistics.quantiles(burst, n=100)
            print(
                f"{args.count} CREATEs over {args.connections} connections: 250 -> last callback"
                f" p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms,"
                f" max {burst[-1] * 1000:.0f} ms"
            )
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
