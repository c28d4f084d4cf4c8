"""The kill test: a burst of commands while the daemon is SIGKILLed at random moments.

    .venv/bin/python bench/killtest.py [--students 500] [--kills 5] [--seed 1] [--json FILE]

Sends CREATE then CLEANUP for every student (2 x --students commands, the CLEANUPs once the
CREATEs ran, as the app does) plus a few invalid commands, over several SMTP connections,
the way an MTA would: each mail has its own Message-ID and is sent again until it gets a
250 (or a 5xx). Meanwhile the daemon is
killed with SIGKILL --kills times at random moments and started again. At the end it
checks, and prints:

- sent, answered 250, refused (5xx), kills;
- completed: commands answered 250 whose job is done;
- lost: commands answered 250 with no done job (must be 0);
- duplicates: commands run by more than one job (must be 0);
- refused that ran: 5xx-refused commands that have a job (must be 0);
- stuck: jobs not done (must be 0);
- the final state: every student's home erased, the registration app told
  active/completionPercentage/cleaned once per customer, and how many callbacks were
  delivered again after a kill (an HTTP PUT whose 200 was received by a daemon that died
  before it could record it: the same value again, harmless for a PUT; reported, not hidden).
Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import smtplib
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from tests.conftest import SAMPLES, Daemon, Site, with_app
from tests.standins import RegistrationApp

#: Like an MTA, a new connection now and then (the door caps commands per connection).
MAILS_PER_CONNECTION = 50


class Sender:
    """Sends mails like an MTA: retries until a definite answer, in order per connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: dict[str, int] = {}
        self.lock = threading.Lock()
        self.attempts = 0

    def send_all(self, mails: list[tuple[str, str]]) -> None:
        client: smtplib.SMTP | None = None
        for number, (message_id, text) in enumerate(mails):
            if client is not None and number % MAILS_PER_CONNECTION == 0:
                with contextlib.suppress(OSError, smtplib.SMTPException):
                    client.quit()
                client = None
            while True:
                try:
                    if client is None:
                        client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                        client.ehlo()
                    with self.lock:
                        self.attempts += 1
                    client.mail("wod@example.com")
                    client.rcpt("jupyter@example.com")
                    code, _ = client.data(text.encode())
                except smtplib.SMTPDataError as exc:
                    code = exc.smtp_code
                except (OSError, smtplib.SMTPException):
                    client = None
                    time.sleep(0.05)
                    continue
                if code == 250 or code >= 500:
                    with self.lock:
                        self.answers[message_id] = code
                    break
                time.sleep(0.05)  # 4xx: try again later
        if client is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()


def mail(message_id: str, subject: str, body: str = "WKSHP-Sample") -> tuple[str, str]:
    return message_id, f"Message-ID: <{message_id}>\r\nSubject: {subject}\r\n\r\n{body}\r\n"


def wait_for_jobs(site: Site, count: int, timeout: float) -> None:
    """Until `count` jobs exist and every one has ended (a cancelled one counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = site.jobs()
        if len(jobs) >= count and all(job[3] in ("done", "failed", "held", "cancelled") for job in jobs):
            return
        time.sleep(0.2)


def run(students: int, kills: int, seed: int, connections: int) -> dict[str, object]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp, RegistrationApp() as app, contextlib.ExitStack() as cleanup:
        site = Site(Path(tmp))
        with_app(site, app)
        site.values.update(STUDENTMAX=max(2000, students + 10), CALLBACKBACKOFFMAX=1)
        site.workshops = {"WKSHP-Sample": {"range": [1, students], "varpass": True}}
        # A catalog of its own: only the sample workshop, whatever else templates/ ships.
        shutil.copytree(SAMPLES / "WKSHP-Sample", Path(tmp) / "catalog" / "WKSHP-Sample")
        site.values["WORKSHOPDIR"] = str(Path(tmp) / "catalog")
        ids = list(range(1, students + 1))
        # Two rounds, as the app sends them: the CREATEs, then (once they ran: a CLEANUP that
        # comes while its CREATE still waits supersedes it) the CLEANUPs; a student's mail
        # goes down one connection of --connections, and the daemon is killed in both rounds.
        creates: list[list[tuple[str, str]]] = [[] for _ in range(connections)]
        cleanups: list[list[tuple[str, str]]] = [[] for _ in range(connections)]
        for stdid in ids:
            creates[stdid % connections].append(mail(f"create-{stdid}@kill", f"CREATE {stdid} c{stdid}"))
            cleanups[stdid % connections].append(mail(f"cleanup-{stdid}@kill", f"CLEANUP {stdid} c{stdid}"))
        invalid = [
            mail("bad-1@kill", f"CREATE {students + 5} x1"),
            mail("bad-2@kill", "LAUNCH 1 x2"),
            mail("bad-3@kill", "CREATE 1 x3", "WKSHP-Nonesuch"),
        ]
        creates[0][len(creates[0]) // 2 : len(creates[0]) // 2] = invalid

        daemons = [Daemon(site).start()]
        cleanup.callback(lambda: daemons[-1].stop())  # noqa: PLW0108 - the last one, when it runs
        sender = Sender(site.smtp_port)
        started = time.monotonic()
        done_kills = 0
        for round_, lanes in enumerate((creates, cleanups)):
            threads = [threading.Thread(target=sender.send_all, args=(lane,)) for lane in lanes]
            for thread in threads:
                thread.start()
            for _ in range(kills // 2 if round_ == 0 else kills - kills // 2):
                time.sleep(rng.uniform(0.2, 1.5))
                daemons[-1].kill()
                done_kills += 1
                daemons.append(Daemon(site).start())
            for thread in threads:
                thread.join()
            wait_for_jobs(site, students * (round_ + 1), timeout=600)
        sent_for = time.monotonic() - started
        app.wait_for(lambda a: len(a.puts()) >= 6 * students, timeout=120)
        time.sleep(1.0)  # let a last retried callback land, if any
        daemons[-1].stop()

        with site.db() as conn:
            rows = conn.execute("SELECT id, message_id, state FROM jobs").fetchall()
            refused = conn.execute("SELECT count(*) FROM refused").fetchone()[0]
        by_message = Counter(message_id for _id, message_id, _state in rows)
        done = {message_id for _id, message_id, state in rows if state == "done"}
        accepted = [m for m, code in sender.answers.items() if code == 250]
        refused_ids = [m for m, code in sender.answers.items() if code >= 500]
        state = app.state()
        applied = Counter((c.path, tuple(sorted(c.body))) for c in app.puts())
        final_ok = all(
            state["customer"].get(f"c{s}") == {"active": "true", "completionPercentage": "0", "cleaned": "true"}
            and state["student"].get(str(s + 1000), {}).get("assigned") == "false"
            and not any(site.home(s).iterdir())
            for s in ids
        )
        unique_callbacks = 6 * students
        report: dict[str, object] = {
            "students": students,
            "sent": len(sender.answers),
            "smtp_transactions_tried": sender.attempts,
            "answered_250": len(accepted),
            "refused_5xx": len(refused_ids),
            "refused_recorded": refused,
            "kills": done_kills,
            "completed": sum(1 for m in accepted if f"<{m}>" in done),
            "lost": sum(1 for m in accepted if f"<{m}>" not in done),
            "duplicates": sum(count - 1 for count in by_message.values() if count > 1),
            "refused_that_ran": sum(1 for m in refused_ids if f"<{m}>" in by_message),
            "stuck": sum(1 for _id, _m, state in rows if state != "done"),
            "final_state_ok": final_ok,
            "callbacks_applied": sum(applied.values()),
            "callbacks_expected": unique_callbacks,
            "callbacks_redelivered_after_kill": sum(applied.values()) - unique_callbacks,
            "sending_seconds": round(sent_for, 1),
        }
        return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=500)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.students, args.kills, args.seed, args.connections)
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = (
        report["lost"] == 0
        and report["duplicates"] == 0
        and report["refused_that_ran"] == 0
        and report["stuck"] == 0
        and report["final_state_ok"]
        and report["answered_250"] == 2 * args.students
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
