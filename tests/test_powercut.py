"""Power cuts under the daemon: every acknowledged command is kept, every step recorded as done
has its effects on disk.

The daemon runs with STATEDIR and STUDENTDIR on ext4, on a loop device, over a disk that keeps
writes in memory until they are flushed (tests/powercut.py). Bursts of CREATEs and CLEANUPs
go in through the real SMTP door; at a random moment the power is cut: every other cut at a
random time (the daemon's two processes are stopped, then everything the disk was not asked
to flush is dropped, with what the kernel still held in memory), the others as a random write
reaches the disk (the middle of a journal commit, of a WAL append...; from then on the disk
fails every write and flush, so nothing can be answered as if it were durable). The
processes are killed, the disk comes back from what survived, e2fsck runs, ext4 is mounted
again, and then:

- before the daemon is started again: every command answered 250 is in the queue, none
  twice, and every student whose latest job is recorded done has its home exactly as an
  undisturbed run leaves it;
- after it is started again and the queue drained: the same, every job done.

"Exactly as an undisturbed run leaves it": for a CREATE, the home holds the workshop and
nothing else, every file byte for byte what `wodmail render` (wodmail.catalog's
render_for_student) makes for that student with that job's password (derived from
STATEDIR/password.key and the job id, as the daemon does), links as links, folders as
folders; modes and owners are not compared. For a CLEANUP of a (non-reset) workshop, the
home is empty or gone. So the files that carry the password are compared too.

Cuts also land while `wodmail serve` makes a new STATEDIR: afterwards it must start, with no
temporary key file left, and with the key it had if it was already accepting mail.

The control shows the check can fail: with the homes' flush turned off (the test knob
WODMAIL_SKIP_HOME_FLUSH=1), a cut must leave done jobs whose files are empty or missing.

These tests need root (loop devices, mounts, FUSE): they fail, not skip, without it.
WODMAIL_POWERCUT_SEED replays the moments of a run (its seed is printed).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Daemon, Site
from tests.powercut import PowerCutRig, children_of, missing_tools, signal_all

pytestmark = pytest.mark.timeout(900)

#: Cuts during bursts: every other one at a random time, the others as a random write
#: reaches the disk (somewhere in the middle of what the kernel sends it).
BURST_CUTS = 12
#: Every third cut keeps a random half of what was not flushed (a disk that wrote part of
#: its cache back before it died, in any order); the others drop all of it.
KEEP_SOME_EVERY = 3
#: An armed cut comes at the N-th write to the disk, N drawn from 1..ARMED_WRITES (a burst
#: sends a few hundred to a thousand).
ARMED_WRITES = 300
#: Cuts while STATEDIR is made.
START_CUTS = 5
CONNECTIONS = 4
DRAIN_TIMEOUT = 120.0


def seed() -> int:
    text = os.environ.get("WODMAIL_POWERCUT_SEED")
    value = int(text) if text else random.SystemRandom().randrange(1 << 32)
    print(f"power-cut seed: WODMAIL_POWERCUT_SEED={value}")
    return value


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PowerCutRig]:
    if os.geteuid() != 0:
        pytest.fail("the power-cut tests run as root: they attach loop devices and mount ext4 and FUSE")
    missing = missing_tools()
    if missing:
        pytest.fail(f"the power-cut tests need: {', '.join(missing)} (scripts/test installs them)")
    disk = PowerCutRig(tmp_path / "disk").make()
    try:
        disk.power_on()
        yield disk
    finally:
        disk.close()


def site_on(rig: PowerCutRig, root: Path, name: str = "") -> Site:
    """A site whose STATEDIR and STUDENTDIR are on the disk that loses power."""
    root.mkdir(parents=True, exist_ok=True)
    site = Site(root)
    site.state_dir = rig.mount / f"state{name}"
    site.student_dir = rig.mount / f"students{name}"
    site.values.update(STATEDIR=str(site.state_dir), STUDENTDIR=str(site.student_dir))
    return site


# --- what is sent ---


@dataclass(frozen=True)
class Sent:
    verb: str
    stdid: int
    customer: str


class Burst:
    """Commands sent over CONNECTIONS SMTP connections at once; a student's commands all go
    over the same one, in order. Records which were answered 250."""

    def __init__(self, port: int, commands: list[Sent]) -> None:
        self.port = port
        self.acked: list[Sent] = []
        self.answers: Counter[int] = Counter()
        self._lock = threading.Lock()
        shares = [[sent for sent in commands if sent.stdid % CONNECTIONS == k] for k in range(CONNECTIONS)]
        self._threads = [threading.Thread(target=self._send, args=(share,), daemon=True) for share in shares]

    def start(self) -> Burst:
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float = 30.0) -> None:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a sender did not end"

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def _send(self, share: list[Sent]) -> None:
        try:
            client = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
            client.ehlo()
            for sent in share:
                client.mail("wod@example.com")
                client.rcpt("jupyter@example.com")
                code, _text = client.data(
                    f"From: wod@example.com\r\nTo: jupyter@example.com\r\n"
                    f"Subject: {sent.verb} {sent.stdid} {sent.customer}\r\n"
                    f"Message-ID: <{sent.customer}@powercut.test>\r\n\r\nWKSHP-Sample\r\n".encode()
                )
                with self._lock:
                    self.answers[code] += 1
                    if code == 250:
                        self.acked.append(sent)
                client.rset()
            client.quit()
        except (OSError, smtplib.SMTPException):
            return  # the daemon is gone: what was not answered 250 may or may not be kept


def plan(round_number: int, previous: list[int]) -> list[Sent]:
    """One burst: CREATEs for 64 new students, CLEANUPs of a quarter of them and of a few
    students of the round before, CREATEs again of some that were cleaned up."""
    first = 1 + round_number * 80
    fresh = list(range(first, first + 64))
    commands = [Sent("CREATE", stdid, f"r{round_number}c{stdid}") for stdid in fresh]
    cleaned = fresh[::4] + previous[1::12]
    commands += [Sent("CLEANUP", stdid, f"r{round_number}d{stdid}") for stdid in cleaned]
    commands += [Sent("CREATE", stdid, f"r{round_number}e{stdid}") for stdid in fresh[::8]]
    return commands


# --- what is on the disk ---


@dataclass
class Findings:
    """What one look at the disk found."""

    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong: dict[int, tuple[str, list[tuple[str, str]]]] = field(default_factory=dict)  # job id: who, problems
    checked: int = 0
    done: int = 0
    unfinished: int = 0


class Ledger:
    """Every problem found over the cuts, each counted once (where it was first seen)."""

    def __init__(self) -> None:
        self.lost: dict[str, str] = {}
        self.duplicated: dict[str, str] = {}
        self.wrong: dict[int, str] = {}
        self.not_done: dict[int, str] = {}
        self.kinds: Counter[str] = Counter()  # wrong entries, by kind

    def add(self, where: str, findings: Findings) -> int:
        """Record `findings`; return how many done jobs it newly found with wrong effects."""
        for command in findings.lost:
            self.lost.setdefault(command, where)
        for command in findings.duplicated:
            self.duplicated.setdefault(command, where)
        new = 0
        for job_id, (who, problems) in findings.wrong.items():
            if job_id not in self.wrong:
                new += 1
                kinds = Counter(kind for kind, _ in problems)
                self.kinds.update(kinds)
                self.wrong[job_id] = f"{where}: {who}: {dict(kinds)}, e.g. {problems[0][1]}"
        return new

    def problems(self) -> list[str]:
        return (
            [f"acknowledged, then lost ({where}): {command}" for command, where in self.lost.items()]
            + [f"run twice ({where}): {command}" for command, where in self.duplicated.items()]
            + [f"done with wrong effects, {text}" for text in self.wrong.values()]
            + [f"not done after the restart: {text}" for text in self.not_done.values()]
        )


def queued_jobs(site: Site) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(site.state_dir / "queue.sqlite3", timeout=30)) as conn:
        rows = conn.execute("SELECT id, verb, stdid, state, command, error FROM jobs ORDER BY id").fetchall()
    return [
        {"id": row[0], "verb": row[1], "stdid": row[2], "state": row[3], "customer": json.loads(row[4])["customer"],
         "error": row[5]}
        for row in rows
    ]  # fmt: skip


def tree(root: Path) -> dict[str, Any]:
    """Everything under `root`: a file's bytes, a link's target, "folder" for a folder."""
    found: dict[str, Any] = {}
    if not root.is_dir():
        return found
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = "folder"
            else:
                found[key] = path.read_bytes()
    return found


def describe(value: Any) -> str:
    if isinstance(value, bytes):
        if not value:
            return "empty"
        return f"{len(value)} bytes" + ("" if value.strip(b"\0") else ", all zero")
    return str(value)


class Reference:
    """What an undisturbed run leaves in a home, by job."""

    def __init__(self, site: Site) -> None:
        from wodmail.location import load_location
        from wodmail.workshop import Renderer

        self.site = site
        self.location = load_location(site.write())
        self.renderer = Renderer(optional_variables=self.location.optional_variables)
        self.out = Path(tempfile.mkdtemp(prefix="powercut-reference-"))
        # What `home` rendered, by everything the rendering depends on: each look checks every
        # done job again (7,000 renderings in 12 cuts, 28 s of the test, for 1,000 jobs).
        self.rendered: dict[tuple[int, int, str, bytes], dict[str, Any]] = {}

    def close(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)

    def home(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The home's tree after `job`; None: the home is gone or empty."""
        if job["verb"] == "CLEANUP":
            return None
        from wodmail.catalog import render_for_student
        from wodmail.passwords import PasswordMint

        key = (self.site.state_dir / "password.key").read_bytes()
        stdid = job["stdid"]
        inputs = (job["id"], stdid, job["customer"], key)  # a job id lost in a cut may come back for another command
        if inputs in self.rendered:
            return self.rendered[inputs]
        mint = PasswordMint(key)
        out = self.out / f"job{job['id']}"
        render_for_student(
            self.location, "WKSHP-Sample", stdid, out=out, password=mint.password(job["id"], f"student{stdid}"),
            customer=job["customer"], renderer=self.renderer,
        )  # fmt: skip
        expected = tree(out)
        shutil.rmtree(out)
        self.rendered[inputs] = expected
        return expected

    def compare(self, job: dict[str, Any]) -> list[tuple[str, str]]:
        """How student{stdid}'s home differs from what `job` leaves: (kind, what) for each
        entry that differs (empty: it does not)."""
        expected = self.home(job)
        actual = tree(self.site.home(job["stdid"]))
        if expected is None:
            return [("home of a CLEANUP not erased", name) for name in sorted(actual)]
        problems = []
        for name in sorted(expected.keys() | actual.keys()):
            want, have = expected.get(name), actual.get(name)
            if have is None:
                problems.append(("missing", name))
            elif want is None:
                problems.append(("not written by an undisturbed run", f"{name} ({describe(have)})"))
            elif want != have:
                kind = "empty" if have == b"" else "zeroed" if describe(have).endswith("all zero") else "other bytes"
                problems.append((kind, f"{name}: {describe(have)}, an undisturbed run writes {describe(want)}"))
        return problems


def look(site: Site, reference: Reference, acked: list[Sent]) -> Findings:
    """Check the queue and the homes as they are now (the daemon not running)."""
    findings = Findings()
    jobs = queued_jobs(site)
    seen = Counter(job["customer"] for job in jobs)
    findings.lost = [f"{s.verb} {s.stdid} {s.customer}" for s in acked if seen[s.customer] == 0]
    findings.duplicated = [f"{customer} x{count}" for customer, count in seen.items() if count > 1]
    latest: dict[int, dict[str, Any]] = {}
    for job in jobs:
        latest[job["stdid"]] = job
    findings.done = sum(job["state"] == "done" for job in jobs)
    findings.unfinished = sum(job["state"] in ("queued", "running") for job in jobs)
    for job in latest.values():
        if job["state"] == "done":
            findings.checked += 1
            problems = reference.compare(job)
            if problems:
                findings.wrong[job["id"]] = (f"student{job['stdid']} (job {job['id']} {job['verb']})", problems)
    return findings


# --- the daemon ---


def daemon_pids(daemon: Daemon) -> list[int]:
    assert daemon.process is not None
    return [daemon.process.pid, *children_of(daemon.process.pid)]


def wait_stopped(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until every thread of `pids` is stopped (a thread inside a system call stops as
    it returns), so that nothing they do can be seen after the cut."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            while time.monotonic() < deadline:
                try:
                    state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                except OSError:
                    break
                if state in ("T", "t", "Z", "X"):
                    break
                time.sleep(0.001)


def cut_under(rig: PowerCutRig, daemon: Daemon, keep: float, cut_seed: int) -> dict[str, Any]:
    pids = daemon_pids(daemon)
    signal_all(pids, signal.SIGSTOP)
    wait_stopped(pids)
    stats = rig.cut(pids, keep=keep, seed=cut_seed)
    assert daemon.process is not None
    daemon.process.wait()
    return stats


def wait_drained(site: Site, timeout: float = DRAIN_TIMEOUT) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = queued_jobs(site)
        if all(job["state"] not in ("queued", "running") for job in jobs):
            return jobs
        if time.monotonic() > deadline:
            waiting = [(job["id"], job["verb"], job["stdid"], job["state"]) for job in jobs
                       if job["state"] in ("queued", "running")]  # fmt: skip
            raise AssertionError(f"the queue did not drain in {timeout:.0f} s: {waiting[:10]}")
        time.sleep(0.1)


def superseded(job: dict[str, Any], jobs: list[dict[str, Any]]) -> bool:
    """Whether `job` is a CREATE cancelled by a later CLEANUP or PURGE of the same student
    (it arrived while the CREATE still waited: wodmail.appdeadline), and that one is done."""
    if job["state"] != "cancelled" or job["verb"] != "CREATE":
        return False
    return any(
        other["id"] > job["id"]
        and other["stdid"] == job["stdid"]
        and other["verb"] in ("CLEANUP", "PURGE")
        and other["state"] == "done"
        and f"superseded by job {other['id']} " in (job["error"] or "")
        for other in jobs
    )


# --- the tests ---


def test_power_cuts_during_bursts(rig: PowerCutRig, tmp_path: Path) -> None:
    """BURST_CUTS cuts at random moments of bursts of CREATEs and CLEANUPs."""
    rng = random.Random(seed())
    print("flushes as the FUSE server sees them:", rig.evidence())
    site = site_on(rig, tmp_path / "site")
    reference = Reference(site)
    report: list[str] = []
    ledger = Ledger()
    acked: list[Sent] = []
    answers: Counter[int] = Counter()
    previous: list[int] = []
    daemon = Daemon(site).start(timeout=60)
    started = time.monotonic()
    try:
        for number in range(BURST_CUTS):
            commands = plan(number, previous)
            previous = sorted({sent.stdid for sent in commands})
            keep = 0.5 if number % KEEP_SOME_EVERY == KEEP_SOME_EVERY - 1 else 0.0
            cut_seed = rng.randrange(1 << 30)
            if number % 2:
                writes = rng.randint(1, ARMED_WRITES)
                rig.arm(writes, keep, cut_seed)
                begun = time.monotonic()
                burst = Burst(site.smtp_port, commands).start()
                happened = rig.wait_armed_cut(timeout=5.0)
                how = f"at write {writes}{'' if happened else ' (never came: cut after 5 s)'},"
                how += f" {time.monotonic() - begun:.2f} s in"
            else:
                moment = rng.uniform(0.02, 1.5)
                burst = Burst(site.smtp_port, commands).start()
                time.sleep(moment)
                how = f"at {moment:.2f} s"
            stats = cut_under(rig, daemon, keep, cut_seed)
            burst.join()
            acked += burst.acked
            answers += burst.answers
            rig.power_on()
            at_cut = look(site, reference, acked)
            wrong_at_cut = ledger.add(f"cut {number + 1}, before the restart", at_cut)
            daemon = Daemon(site).start(timeout=60)
            jobs = wait_drained(site)
            drained = look(site, reference, acked)
            wrong_after = ledger.add(f"cut {number + 1}, after the restart", drained)
            for job in jobs:
                if superseded(job, jobs):
                    continue  # a CREATE a later CLEANUP of its student cancelled before it ran: no effect
                if job["state"] != "done":
                    ledger.not_done.setdefault(job["id"], f"job {job['id']} {job['verb']} {job['stdid']}:"
                                               f" {job['state']}: {job['error']}")  # fmt: skip
            unflushed = stats.get("pages lost in the cut", 0) + stats.get("pages kept in the cut", 0)
            report.append(
                f"cut {number + 1} {how} ({'kept half' if keep else 'dropped all'} of {unflushed}"
                f" unflushed pages): {len(burst.acked)}/{len(commands)} acknowledged; after it {at_cut.done} jobs"
                f" done, {at_cut.unfinished} queued or interrupted, {at_cut.checked} homes checked,"
                f" {len(at_cut.lost)} lost, {len(at_cut.duplicated)} twice, {wrong_at_cut} done jobs newly wrong;"
                f" e2fsck {rig.fsck[-1][0]}; drained: {len(jobs)} jobs, {wrong_after} more done jobs wrong"
            )
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop()
        reference.close()
    problems = ledger.problems()
    report.append(
        f"{BURST_CUTS} cuts in {time.monotonic() - started:.0f} s: {len(acked)} commands acknowledged"
        f" (answers {dict(answers)}), {len(ledger.lost)} lost, {len(ledger.duplicated)} run twice,"
        f" {len(ledger.wrong)} done jobs with wrong effects (entries: {dict(ledger.kinds)}),"
        f" {len(ledger.not_done)} jobs not done; e2fsck exits {dict(Counter(code for code, _ in rig.fsck))}"
        f" ({dict(Counter(said.split(':', 1)[-1].split(',')[0].strip() for _, said in rig.fsck))});"
        f" FUSE server totals {dict(rig.totals)}"
    )
    print("\n".join(report))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30]) + "\n\n" + "\n".join(report)


def test_the_check_catches_steps_recorded_before_their_files_are_flushed(rig: PowerCutRig, tmp_path: Path) -> None:
    """The control: with the homes' flush turned off (WODMAIL_SKIP_HOME_FLUSH=1, a test knob of
    wodmail.homes), steps are recorded while their files are still only in memory, and the
    check of the test above must find done jobs whose files a cut emptied or lost."""
    site = site_on(rig, tmp_path / "site")
    reference = Reference(site)
    ledger, report, acked = Ledger(), [], []
    env = {"WODMAIL_SKIP_HOME_FLUSH": "1"}
    daemon = Daemon(site).start(timeout=60, env=env)
    try:
        for number in range(2):
            done_before = sum(job["state"] == "done" for job in queued_jobs(site))
            commands = plan(number, [])
            burst = Burst(site.smtp_port, commands).start()
            deadline = time.monotonic() + 60
            while sum(job["state"] == "done" for job in queued_jobs(site)) < done_before + 20:
                assert time.monotonic() < deadline, "20 jobs did not finish in 60 s"
                time.sleep(0.02)
            cut_under(rig, daemon, 0.0, number)
            burst.join()
            acked += burst.acked
            rig.power_on()
            found = look(site, reference, acked)
            new = ledger.add(f"control cut {number + 1}", found)
            report.append(f"control cut {number + 1}: {found.done} jobs done, {new} of them with wrong effects")
            daemon = Daemon(site).start(timeout=60, env=env)
            wait_drained(site)
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop()
        reference.close()
    print("\n".join(report), f"\nentries: {dict(ledger.kinds)}")
    assert ledger.wrong, (
        "with the homes' flush turned off, no done job lost its files in a cut: either the check cannot"
        " tell, or WODMAIL_SKIP_HOME_FLUSH is not honoured\n" + "\n".join(report)
    )
    assert not ledger.lost and not ledger.duplicated, ledger.problems()


def test_power_cuts_while_the_state_folder_is_made(rig: PowerCutRig, tmp_path: Path) -> None:
    """Cuts from before STATEDIR exists to just after the doors open: the next start works,
    leaves no temporary key file, and keeps the key if mail could already be accepted."""
    rng = random.Random(seed())
    calibration = site_on(rig, tmp_path / "calibration", "-calibration")
    made, listening = start_timings(calibration)
    print(f"STATEDIR made {made:.2f} s after the start, doors open at {listening:.2f} s")
    report, problems = [], []
    for number in range(START_CUTS):
        site = site_on(rig, tmp_path / f"start{number}", str(number))
        # From the moment the folder appears to just after the doors open, spread over the cuts.
        span = max(listening - made, 0.01) + 0.05
        moment = span * (number + rng.random()) / START_CUTS if number else 0.0
        process = launch(site)
        deadline = time.monotonic() + 60
        while not site.state_dir.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(moment)
        daemon = Daemon(site)
        daemon.process = process
        pids = daemon_pids(daemon)
        signal_all(pids, signal.SIGSTOP)
        wait_stopped(pids)
        was_listening = accepts(site.smtp_port)
        key_file = site.state_dir / "password.key"
        key_before = key_file.read_bytes() if key_file.exists() else None
        rig.cut(pids, seed=number)
        process.wait()
        rig.power_on()
        key_after = key_file.read_bytes() if key_file.exists() else None
        leftovers = sorted(p.name for p in site.state_dir.glob("password.key.*")) if site.state_dir.exists() else []
        report.append(
            f"start cut {number + 1} {moment * 1000:.0f} ms after STATEDIR appeared:"
            f" STATEDIR {'made' if site.state_dir.exists() else 'absent'},"
            f" key {'absent' if key_after is None else f'{len(key_after)} bytes'}"
            f" ({'same' if key_after == key_before else 'different'} as before the cut),"
            f" doors {'open' if was_listening else 'not open'}, temporary files {leftovers}"
        )
        if key_after is not None and len(key_after) != 32:
            problems.append(f"start cut {number + 1}: the key survived with {len(key_after)} bytes")
        if was_listening and key_after != key_before:
            problems.append(f"start cut {number + 1}: the doors were open, and the key did not survive as it was")
        try:
            daemon = Daemon(site).start(timeout=60)
        except AssertionError as exc:
            problems.append(f"start cut {number + 1}: the next start failed: {exc}")
            continue
        try:
            left = sorted(p.name for p in site.state_dir.glob("password.key.*.tmp"))
            if left:
                problems.append(f"start cut {number + 1}: temporary key files left after the next start: {left}")
            if was_listening and key_file.read_bytes() != key_before:
                problems.append(f"start cut {number + 1}: the next start uses another key")
            code, text = daemon.send(f"CREATE {number + 1} s{number}")
            assert code == 250, text
            jobs = wait_drained(site)
        finally:
            daemon.stop()
        reference = Reference(site)
        try:
            wrong = [
                f"student{job['stdid']} (job {job['id']}): {kind}: {what}"
                for job in jobs
                if job["state"] == "done"
                for kind, what in reference.compare(job)
            ]
        finally:
            reference.close()
        problems += [f"start cut {number + 1}: {x}" for x in wrong]
        problems += [f"start cut {number + 1}: job {j['id']} {j['state']}: {j['error']}" for j in jobs
                     if j["state"] != "done"]  # fmt: skip
    print("\n".join(report))
    assert not problems, "\n".join([*problems, "", *report])


def launch(site: Site) -> subprocess.Popen[bytes]:
    """`wodmail serve`, not waiting for anything."""
    location = site.write()
    with open(site.root / "daemon.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "wodmail", "--location", str(location), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=str(REPO),
        )


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_timings(site: Site) -> tuple[float, float]:
    """When, after `wodmail serve` starts on a new STATEDIR, the folder appears and the doors open."""
    started = time.monotonic()
    process = launch(site)
    made = listening = None
    try:
        while listening is None:
            now = time.monotonic() - started
            if made is None and site.state_dir.exists():
                made = now
            if accepts(site.smtp_port):
                listening = now
            if process.poll() is not None or now > 60:
                raise AssertionError(f"wodmail serve did not start: {(site.root / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    return made if made is not None else listening, listening


def test_start_removes_what_a_crash_left_half_made(site: Site) -> None:
    """A temporary key file and a hook's run folder, as a crash leaves them: gone at the next
    start, the key kept (no root needed)."""
    site.state_dir.mkdir(parents=True)
    key = os.urandom(32)
    (site.state_dir / "password.key").write_bytes(key)
    (site.state_dir / "password.key.4242.tmp").write_bytes(os.urandom(32))
    run = site.state_dir / "run"
    (run / "ansible-local" / "ansible-tmp-1").mkdir(parents=True)
    (run / "job3-create.yml").write_text("PASSSTU: secret\n")
    daemon = Daemon(site).start()
    try:
        deadline = time.monotonic() + 15
        while run.exists() and any(run.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (site.state_dir / "password.key.4242.tmp").exists()
        assert (site.state_dir / "password.key").read_bytes() == key
        assert not run.exists() or not any(run.iterdir()), sorted(p.name for p in run.iterdir())
    finally:
        daemon.stop()
    assert "half-made" in daemon.logs()
