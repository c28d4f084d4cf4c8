"""The soak run: commands arriving steadily for minutes, the daemon's memory recorded.

    .venv/bin/python bench/soak.py [--seconds 600] [--rate 20] [--every 5] [--json FILE]

Starts a real daemon (callbacks to the registration-app stand-in on), sends CREATE then
CLEANUP pairs at --rate commands per second over SMTP for --seconds, and samples the
daemon's RSS (from /proc) every --every seconds. Prints the memory curve and whether it
stayed flat: the last third's mean RSS within 10% of the second third's (after warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import SAMPLES, Daemon, Site, with_app
from tests.standins import RegistrationApp

#: Like an MTA, a new connection now and then (the door caps commands per connection).
MAILS_PER_CONNECTION = 50


def rss_kib(pid: int) -> int:
    """The resident memory of the daemon: its doors' process and its children (the jobs
    process and its render worker), added up."""
    total = 0
    for proc in tree(pid):
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total


def tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += tree(int(child))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=float, default=20, help="commands per second")
    parser.add_argument("--every", type=float, default=5, help="seconds between RSS samples")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    students = 1000
    with tempfile.TemporaryDirectory() as tmp, RegistrationApp() as app, contextlib.ExitStack() as cleanup:
        site = Site(Path(tmp))
        with_app(site, app)
        site.workshops = {"WKSHP-Sample": {"range": [1, students], "varpass": True}}
        # A catalog of its own: only the sample workshop, whatever else templates/ ships.
        shutil.copytree(SAMPLES / "WKSHP-Sample", Path(tmp) / "catalog" / "WKSHP-Sample")
        site.values["WORKSHOPDIR"] = str(Path(tmp) / "catalog")
        daemon = Daemon(site).start()
        cleanup.callback(daemon.stop)
        assert daemon.process is not None
        pid = daemon.process.pid
        samples: list[tuple[float, int]] = []
        sent = 0
        started = time.monotonic()
        next_sample = started
        interval = 1.0 / args.rate
        client = None
        while (now := time.monotonic()) - started < args.seconds:
            if now >= next_sample:
                samples.append((round(now - started, 1), rss_kib(pid)))
                next_sample += args.every
            if client is None or sent % MAILS_PER_CONNECTION == 0:
                if client is not None:
                    client.quit()
                client = smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=60)
                client.ehlo()
            pair, verb = divmod(sent, 2)
            stdid = pair % students + 1
            subject = f"CREATE {stdid} c{pair}" if verb == 0 else f"CLEANUP {stdid} c{pair}"
            client.mail("wod@example.com")
            client.rcpt("jupyter@example.com")
            code, text = client.data(f"Subject: {subject}\r\n\r\nWKSHP-Sample\r\n".encode())
            if code != 250:
                raise SystemExit(f"{subject}: {code} {text!r}")
            sent += 1
            time.sleep(max(0.0, started + sent * interval - time.monotonic()))
        if client is not None:
            client.quit()
        # A CLEANUP that came while its CREATE still waited supersedes it (cancelled).
        site.wait_jobs(sent, timeout=120, states=("done", "failed", "cancelled"))
        samples.append((round(time.monotonic() - started, 1), rss_kib(pid)))
    third = max(1, len(samples) // 3)
    middle = statistics.mean(r for _t, r in samples[third : 2 * third] or samples)
    last = statistics.mean(r for _t, r in samples[2 * third :])
    flat = last <= middle * 1.10
    print(f"sent {sent} commands in {args.seconds:.0f} s ({sent / args.seconds:.1f}/s), all done")
    print("seconds  RSS MiB")
    for t, r in samples:
        print(f"{t:7.1f}  {r / 1024:7.1f}")
    verdict = "flat" if flat else "GROWING"
    print(f"middle third mean {middle / 1024:.1f} MiB, last third mean {last / 1024:.1f} MiB: {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"sent": sent, "samples": samples, "flat": flat}, indent=2) + "\n")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
