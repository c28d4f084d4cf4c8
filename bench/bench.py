"""The benchmark: wodmail against a bare SMTP listener and against the platform it replaces.

    .venv/bin/python bench/bench.py [--count 1000] [--connections 50] [--ansible-students 5]
                                    [--no-ldap] [--json FILE]

On one machine, all on loopback, in one run:

1. a bare aiosmtpd listener that stores nothing: the intake rate to compare with;
2. a real `wodmail serve` on a temporary location: a 10-notebook `ldap` + `varpass`
   workshop, a real slapd holding the students, the registration-app stand-in from the
   tests; a burst of --count CREATE mails over --connections SMTP connections, then the
   --count CLEANUPs;
3. the replaced platform's way for --ansible-students students: one `ansible-playbook` run
   per student with a template task per notebook.

Every burst (1 and 2) is sent by one SMTP client in a process of its own (`MailClient`), as
the registration app's is on its own host.

It reports the intake rate (250s per second, each after an fsync'd commit) and its ratio to
the bare listener, the end-to-end rate (commands per second until every callback arrived),
p50/p95/p99 from each 250 to that command's last callback, the daemon's CPU seconds per
command (user + system, from /proc), the whole machine's (and, on a virtual machine, the
share of the cores its hypervisor gave to other guests meanwhile: steal, which makes one
run's rates differ from the next's), its peak RSS, the LDAP and HTTP connections it opened,
and the CPU per CREATE of the ansible path against wodmail's. A table on stdout, the same
figures as JSON with --json. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import json
import multiprocessing
import os
import pwd
import re
import resource
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from tests.conftest import Daemon, Site, with_app
from tests.standins import RegistrationApp
from wodmail.homes import filesystem_of
from wodmail.location import keys

TICKS = os.sysconf("SC_CLK_TCK")
NOTEBOOKS = 10


# --- the workshop: 10 realistic notebooks using the student's values ---


RUN_RE = re.compile(r"chpasswd run (\d+) of (\d+) line")


def notebook(index: int) -> dict[str, Any]:
    cells: list[dict[str, Any]] = [
        {
            "cell_type": "markdown",
            "metadata": {},
            "source": [
                f"# Lab {index}: working with the API\n",
                "\n",
                "You are **student{{ STDID }}** on {{ JPHOSTEXT }}; your password is `{{ PASSSTU }}`.\n",
            ],
        }
    ]
    for cell in range(24):
        cells.append(
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": [
                    "import requests\n",
                    f"# step {cell} of lab {index}\n",
                    "url = 'https://{{ JPHOSTEXT }}/api/v1/student{{ STDID }}'\n",
                    "auth = ('student{{ STDID }}', '{{ PASSSTU }}')\n",
                    "print(requests.get(url, auth=auth, timeout=10).status_code)\n",
                ],
            }
        )
        cells.append(
            {
                "cell_type": "markdown",
                "metadata": {},
                "source": [f"Explanation {cell}: " + "lorem ipsum dolor sit amet " * 12 + "\n"],
            }
        )
    return {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_workshop(catalog: Path) -> Path:
    root = catalog / "WKSHP-Bench"
    root.mkdir(parents=True)
    for index in range(NOTEBOOKS):
        (root / f"{index}-Lab.ipynb").write_text(json.dumps(notebook(index), indent=1) + "\n")
    return root


# --- a site's create step (--create-step) ---


CREATE_SCRIPT = """#!/bin/bash
# What a small create script of a site does: check its arguments, note the student's port
# in the per-student variables file the templates read, and log a line.
set -euo pipefail
[ -n "$stdid" ] && [ -n "$w" ]
port=$((10000 + stdid))
printf 'STUDENTPORT: %s\\n' "$port" > "$WODVARFILE"
echo "$(date +%s) $w student$stdid port $port" >> "$(dirname "$0")/create.log"
"""

CREATE_PLAYBOOK = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: note the student's port, as a site's create playbook does
      ansible.builtin.copy:
        content: "student{{ STDID }} {{ 10000 + STDID | int }}\\n"
        dest: "{{ playbook_dir }}/created-{{ STDID }}"
        mode: "0600"
"""


def write_create_script(folder: Path) -> Path:
    folder.mkdir(parents=True)
    script = folder / "create-WKSHP-Bench.sh"
    script.write_text(CREATE_SCRIPT)
    script.chmod(0o755)
    return folder


def write_create_playbook(folder: Path) -> Path:
    (folder / "WKSHP-Bench").mkdir(parents=True)
    (folder / "WKSHP-Bench" / "create.yml").write_text(CREATE_PLAYBOOK)
    return folder


# --- process figures ---


def daemon_processes(pid: int) -> list[int]:
    """The daemon's processes: the doors' process and its descendants (the jobs process,
    and any hook it runs)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += daemon_processes(int(child))
    return found


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU of the daemon's processes so far: the doors' process, and the
    others (the jobs process, the keeper), each with its children that ended (chpasswd,
    the keeper's forks, hooks)."""
    doors = others = 0
    for proc in daemon_processes(pid):
        fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        used = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
        if proc == pid:
            doors += used
        else:
            others += used
    return doors / TICKS, others / TICKS


def machine_busy_seconds() -> tuple[float, float]:
    """CPU time the whole machine has spent busy so far, over all cores (/proc/stat: user,
    nice, system, irq, softirq): the daemon, slapd, the shadow tools, this benchmark's own
    client and stand-ins, and the kernel's work for all of them; and apart, the time the
    hypervisor gave to other guests while this one wanted to run (steal), which is no work
    of ours but leaves less of the cores to it."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq) / TICKS, steal / TICKS


def peak_rss_mib(pid: int) -> float:
    """The daemon's peak resident memory: the peaks of its processes, added up."""
    total = 0
    for proc in daemon_processes(pid):
        for line in Path(f"/proc/{proc}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


# --- where the daemon writes ---


@contextlib.contextmanager
def daemon_files(where: str, scratch: Path) -> Iterator[tuple[Path, str]]:
    """The folder for the daemon's STATEDIR and STUDENTDIR, and what filesystem it is on.

    `where` is a folder, or "auto": a fresh ext4 with its journal (what a site's /var and
    /home are), made on a loop image when we are root and may mount; the scratch folder
    otherwise. The VM this was written on has its root on an ext4 without a journal, where
    creating a file scans every inode freed in the last minutes (`recently_deleted` in
    ext4's allocator): 30 us to 1.2 ms a file depending on what ran before, which measures
    the history of the disk rather than wodmail.
    """
    if where != "auto":
        folder = Path(where).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        yield folder, filesystem_of(folder) or "unknown filesystem"
        return
    image, mount = scratch / "files.img", scratch / "files"
    why_not = ""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        why_not = "not root, or no mkfs.ext4"
    else:
        with open(image, "wb") as handle:
            handle.truncate(4 << 30)
        mount.mkdir()
        commands = (["mkfs.ext4", "-q", "-F", str(image)], ["mount", "-o", "loop", str(image), str(mount)])
        if any(subprocess.run(c, check=False, capture_output=True).returncode != 0 for c in commands):
            why_not = "cannot mount a loop image here"
    if why_not:
        folder = scratch / "files"
        folder.mkdir(exist_ok=True)
        yield folder, f"{filesystem_of(folder) or 'unknown filesystem'} ({why_not})"
        return
    try:
        yield mount, "ext4 with its journal, on a loop image"
    finally:
        unmount(mount)


def known_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def host_accounts(count: int, homes: Path, wanted: str) -> Iterator[str]:
    """Host accounts student1..student{count} (each with a group of its own), made for the run
    and removed after it, so that wodmail works in each home as its student (privilege
    separation on) and ends each student's processes from a child running as the student.
    `wanted` "auto": when root and none of those accounts exists yet; "no": none."""
    names = [f"student{n}" for n in range(1, count + 1)]
    why_not = ""
    if wanted == "no":
        why_not = "not asked for"
    elif os.geteuid() != 0 or shutil.which("useradd") is None:
        why_not = "not root, or no useradd"
    else:
        taken = [name for name in names if known_account(name)]
        if taken:
            why_not = f"{taken[0]} exists already: the run touches no existing account"
    if why_not:
        yield f"no host accounts ({why_not}): homes are root's"
        return
    made: list[str] = []
    try:
        for name in names:
            made.append(name)  # before useradd: a run stopped during it still removes the account
            subprocess.run(
                ["useradd", "-M", "-d", str(homes / name), "-s", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
            )
        yield (
            f"{count} host accounts: passwords set in /etc/shadow (ACCOUNTS: unix), work in homes as each"
            " student, processes ended as the student"
        )
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)


def _mapped() -> set[str]:
    """The files this process maps (/proc/self/maps)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def unmount(mount: Path) -> None:
    """Unmount, waiting up to 10 s for the last files to close; say who holds it if not."""
    gc.collect()  # a connection to the queue in a reference cycle still maps its WAL index
    for _ in range(50):
        if subprocess.run(["umount", str(mount)], check=False, capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    ours = sorted({os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")} | _mapped())
    ours = [name for name in ours if name.startswith(str(mount))]
    holders = subprocess.run(["fuser", "-m", str(mount)], check=False, capture_output=True, text=True)
    print(f"{mount} still busy after 10 s: pids {holders.stdout.strip()}; ours: {ours}", file=sys.stderr)
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def stop_daemon(daemon: Daemon) -> None:
    """Stop it with SIGTERM; kill it (and so its jobs process) if that takes too long."""
    try:
        daemon.stop()
    except subprocess.TimeoutExpired:
        daemon.kill()
        raise


# --- sending ---


def send_burst(port: int, subjects: list[tuple[int, str]], body: str, connections: int) -> dict[int, float]:
    """Send every (key, subject) over `connections` SMTP sessions; when each got its 250."""
    accepted: dict[int, float] = {}
    lock = threading.Lock()
    lanes = [subjects[i::connections] for i in range(connections)]
    failures: list[str] = []

    def lane(items: list[tuple[int, str]]) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.ehlo()
            for key, subject in items:
                client.mail("wod@example.com")
                client.rcpt("jupyter@example.com")
                code, text = client.data(f"Subject: {subject}\r\n\r\n{body}\r\n".encode())
                if code != 250:
                    failures.append(f"{subject}: {code} {text!r}")
                    continue
                with lock:
                    accepted[key] = time.monotonic()

    threads = [threading.Thread(target=lane, args=(items,)) for items in lanes if items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} mails refused, first: {failures[0]}")
    return accepted


def timed_burst(
    port: int, subjects: list[tuple[int, str]], body: str, connections: int
) -> tuple[float, float, dict[int, float]]:
    """`send_burst`, with when it began and ended (time.monotonic: the same clock in every process)."""
    started = time.monotonic()
    accepted = send_burst(port, subjects, body, connections)
    return started, time.monotonic(), accepted


def _client_ready() -> None:
    """The client's process has started and imported this module."""


class MailClient:
    """The registration app's SMTP client, in a process of its own, as it is on the app's host.

    In the benchmark's own process its 50 threads shared one interpreter lock with the
    registration-app stand-in, which takes the callbacks that start arriving while the burst
    is still being sent. That slowed the client during wodmail's intake, and only there (a
    bare aiosmtpd makes no callbacks): in six alternating runs on one machine, wodmail's
    intake measured 12% higher (median) from a process of its own, the bare rate the same.
    The process is started (and has imported everything) before any figure is taken, so its
    start-up counts in none.
    """

    def __enter__(self) -> MailClient:
        context = multiprocessing.get_context("spawn")
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
        self._pool.submit(_client_ready).result()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._pool.shutdown(cancel_futures=True)

    def burst(
        self, port: int, subjects: list[tuple[int, str]], body: str, connections: int
    ) -> tuple[float, float, dict[int, float]]:
        """Send the burst from the client's process: (began, ended, when each got its 250)."""
        return self._pool.submit(timed_burst, port, subjects, body, connections).result()


def bare_aiosmtpd_rate(client: MailClient, count: int, connections: int) -> float:
    """Mails per second answered by an aiosmtpd that stores nothing, in its own process."""
    code = """
import asyncio, sys
from aiosmtpd.smtp import SMTP
class Nothing:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Nothing(), loop=loop), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        subjects = [(i, f"CREATE {i} c{i}") for i in range(count)]
        started, ended, _accepted = client.burst(port, subjects, "WKSHP-Bench", connections)
        return count / (ended - started)
    finally:
        process.kill()
        process.wait()


# --- the replaced platform ---

ANSIBLE_PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  tasks:
{tasks}
"""


def ansible_cpu_per_student(workshop: Path, students: int, out: Path) -> float:
    """CPU seconds per student of `ansible-playbook` templating the notebooks, one run each."""
    tasks = "\n".join(
        f'    - ansible.builtin.template:\n        src: {nb}\n        dest: "{out}/student{{{{ STDID }}}}/{nb.name}"'
        for nb in sorted(workshop.glob("*.ipynb"))
    )
    playbook = out / "copy_folder.yml"
    out.mkdir(parents=True, exist_ok=True)
    playbook.write_text(ANSIBLE_PLAYBOOK.format(tasks=tasks))
    ansible = Path(sys.executable).parent / "ansible-playbook"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for stdid in range(1, students + 1):
        (out / f"student{stdid}").mkdir(exist_ok=True)
        subprocess.run(
            [
                str(ansible),
                "-i",
                "localhost,",
                "-c",
                "local",
                "-e",
                f"ansible_python_interpreter={sys.executable}",
                "-e",
                f"STDID={stdid}",
                "-e",
                "PASSSTU=Secret123",
                "-e",
                "JPHOSTEXT=nb.example.com",
                str(playbook),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "ANSIBLE_NOCOWS": "1", "ANSIBLE_LOCALHOST_WARNING": "false"},
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used / students


# --- the run ---


def wait_callbacks(
    site: Site, app: RegistrationApp, want: dict[str, int], per_key: int, timeout: float
) -> dict[int, float]:
    """Per student: when its last expected callback arrived (the `per_key`-th PUT on its paths).
    A job that failed stops the wait at once, with its error.

    The times are the stand-in's own (`Call.at`, taken as each request arrives), so how often
    this looks changes no figure. It looks four times a second: each look sorts every call
    under the stand-in's lock, which its request threads wait on, on the same two cores as
    the daemon (a look at 2,000 calls takes 1.5 ms: at 20 looks a second, 3% of a core by the
    end of a burst of 1,000 CREATEs, 6% by the end of the CLEANUPs after it)."""
    deadline = time.monotonic() + timeout
    next_check = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 1.0
            failed = [job for job in site.jobs() if job[3] == "failed"]
            if failed:
                raise RuntimeError(f"{len(failed)} jobs failed, the first: {failed[0]}")
        arrivals: dict[int, list[float]] = {}
        for call in app.puts():
            key = want.get(call.path)
            if key is not None:
                arrivals.setdefault(key, []).append(call.at)
        if len(arrivals) == len(set(want.values())) and all(len(v) >= per_key for v in arrivals.values()):
            return {key: sorted(times)[per_key - 1] for key, times in arrivals.items()}
        time.sleep(0.25)
    raise RuntimeError(f"callbacks still missing after {timeout} s")


def step_times(site: Site, verb: str) -> dict[str, dict[str, float]]:
    """Where a `verb` job's time went, step by step, from the journal: each step's own
    duration, and the wait before it (from the job's start or the end of the step before:
    the queue's writer, the disk flushes and the event loop in between), p50 and p95 in ms.
    The step that dominates is the one to look at first."""
    # closing(): sqlite3's own `with` commits but leaves the connection (and its map of the
    # WAL index) open, which kept the loop image's mount busy at the end of the run.
    with contextlib.closing(site.db()) as conn:
        rows = conn.execute(
            "SELECT s.job_id, s.name, s.started, s.finished, j.started FROM steps s JOIN jobs j ON j.id = s.job_id"
            " WHERE j.verb = ? AND s.finished IS NOT NULL ORDER BY s.job_id, s.started",
            (verb,),
        ).fetchall()
    spans: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    previous_end: dict[int, float] = {}
    for job_id, name, started, finished, job_started in rows:
        spans.setdefault(name, []).append(1000 * (finished - started))
        before = previous_end.get(job_id, job_started or started)
        waits.setdefault(name, []).append(1000 * max(0.0, started - before))
        previous_end[job_id] = finished
    figures = {}
    for name, values in spans.items():
        took = statistics.quantiles(values, n=20, method="inclusive") if len(values) > 1 else values * 19
        waited = statistics.quantiles(waits[name], n=20, method="inclusive") if len(values) > 1 else waits[name] * 19
        figures[name] = {"p50_ms": took[9], "p95_ms": took[18], "wait_p50_ms": waited[9], "wait_p95_ms": waited[18]}
    return figures


def password_runs(site: Site, verb: str) -> dict[str, float]:
    """How the `verb` jobs' host passwords went to /etc/shadow: chpasswd runs and lines per run
    (from each step's result, "chpasswd run N of M line(s)"). Empty without ACCOUNTS: unix."""
    with contextlib.closing(site.db()) as conn:
        results = conn.execute(
            "SELECT s.result FROM steps s JOIN jobs j ON j.id = s.job_id WHERE j.verb = ? AND s.result LIKE ?",
            (verb, "%chpasswd run %"),
        ).fetchall()
    runs: dict[int, int] = {}
    for (result,) in results:
        found = RUN_RE.search(result)
        if found:
            runs[int(found[1])] = int(found[2])
    if not runs:
        return {}
    return {"runs": len(runs), "lines": sum(runs.values()), "median_lines": statistics.median(runs.values())}


def phase(
    client: MailClient,
    site: Site,
    app: RegistrationApp,
    pid: int,
    verb: str,
    count: int,
    connections: int,
    callbacks_before: int,
    callbacks: int,
) -> dict[str, Any]:
    subjects = [(s, f"{verb} {s} c{s}") for s in range(1, count + 1)]
    cpu_before = cpu_seconds(pid)
    busy_before = machine_busy_seconds()
    started, ended, accepted = client.burst(site.smtp_port, subjects, "WKSHP-Bench", connections)
    intake_seconds = ended - started
    paths = {}
    for s in range(1, count + 1):
        paths[f"/customer/c{s}"] = s
        paths[f"/student/{s + 1000}"] = s
    last = wait_callbacks(site, app, paths, callbacks_before + callbacks, timeout=600)
    finished = max(last.values())
    latency = sorted(last[s] - accepted[s] for s in accepted)
    q = statistics.quantiles(latency, n=100, method="inclusive")
    doors_after, jobs_after = cpu_seconds(pid)
    busy_after = machine_busy_seconds()
    machine_busy, stolen = (after - before for before, after in zip(busy_before, busy_after, strict=True))
    elapsed = finished - started
    doors_cpu, jobs_cpu = doors_after - cpu_before[0], jobs_after - cpu_before[1]
    return {
        "intake_per_s": count / intake_seconds,
        "end_to_end_per_s": count / elapsed,
        "p50_s": q[49],
        "p95_s": q[94],
        "p99_s": q[98],
        "max_s": latency[-1],
        "cpu_ms_per_command": 1000 * (doors_cpu + jobs_cpu) / count,
        "doors_cpu_ms_per_command": 1000 * doors_cpu / count,
        "jobs_cpu_ms_per_command": 1000 * jobs_cpu / count,
        "machine_cpu_ms_per_command": 1000 * machine_busy / count,
        "steal_share": stolen / (elapsed * (os.cpu_count() or 1)),
        "steps": step_times(site, verb),
        "password_runs": password_runs(site, verb),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"count": args.count, "connections": args.connections, "ldap": not args.no_ldap}
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with (
        MailClient() as client,
        tempfile.TemporaryDirectory(dir=args.workdir) as tmp,
        RegistrationApp() as app,
        daemon_files(args.files, Path(tmp)) as (files, files_on),
        host_accounts(args.count, files / "students", args.accounts) as accounts,
    ):
        report["bare_aiosmtpd_per_s"] = bare_aiosmtpd_rate(client, args.count, args.connections)
        root = Path(tmp)
        report["daemon_files_on"] = files_on
        report["accounts"] = accounts
        workshop = write_workshop(root / "catalog")
        site = Site(root)
        site.state_dir, site.student_dir = files / "state", files / "students"
        with_app(site, app)
        site.values.update(
            STATEDIR=str(site.state_dir),
            STUDENTDIR=str(site.student_dir),
            WORKSHOPDIR=str(root / "catalog"),
            STUDENTMAX=max(2000, args.count),
            SMTPPEERCONNECTIONS=args.connections + 10,  # the registration app is one peer
        )
        if args.workers is not None:
            site.values["WORKERS"] = args.workers
        else:  # the location's default
            site.values.pop("WORKERS", None)
        report["workers"] = args.workers if args.workers is not None else keys.WORKERS.standard
        report["create_step"] = args.create_step
        if args.create_step == "script":
            site.values["SCRIPTDIR"] = str(write_create_script(root / "scripts"))
            (root / "private-vars").mkdir()
            site.values["VARPRIVDIR"] = str(root / "private-vars")  # where WODVARFILE goes
        elif args.create_step == "playbook":
            site.values["PLAYBOOKDIR"] = str(write_create_playbook(root / "playbooks"))
        if "ACCOUNTS: unix" in accounts:  # the accounts are the run's own: their passwords are set too
            site.values["ACCOUNTS"] = "unix"
        for setting in args.set:
            key, _, value = setting.partition("=")
            site.values[key] = yaml.safe_load(value)
        if site.values.get("ACCOUNTS") != "unix":  # --set ACCOUNTS=none: the homes' owners only
            report["accounts"] = accounts.replace(" passwords set in /etc/shadow (ACCOUNTS: unix),", "")
        entry: dict[str, Any] = {"range": [1, args.count], "varpass": True}
        slapd = None
        # Whatever fails, everything started is stopped (in reverse order), each even if
        # stopping another failed: no slapd or daemon outlives the run, no mount stays busy.
        stack = contextlib.ExitStack()
        try:
            if not args.no_ldap:
                from tests.slapd import Slapd

                slapd = Slapd(root / "slapd")
                slapd.add_students({s: f"initial-{s}" for s in range(1, args.count + 1)})
                stack.callback(slapd.stop)
                slapd.start()
                site.values.update(slapd.location_keys())
                entry["ldap"] = True
            site.workshops = {"WKSHP-Bench": entry}
            ldap_before = slapd.connections_total() if slapd else 0
            daemon = Daemon(site)
            stack.callback(stop_daemon, daemon)
            daemon.start()
            assert daemon.process is not None
            pid = daemon.process.pid
            http_before = app.connections_accepted
            report["create"] = phase(client, site, app, pid, "CREATE", args.count, args.connections, 0, 1)
            report["peak_rss_mib_after_create_burst"] = peak_rss_mib(pid)
            report["cleanup"] = phase(client, site, app, pid, "CLEANUP", args.count, args.connections, 1, 2)
            report["peak_rss_mib"] = peak_rss_mib(pid)
            report["http_connections_opened"] = app.connections_accepted - http_before
            if slapd:
                report["ldap_connections_opened"] = slapd.connections_total() - ldap_before - 1
        finally:
            stack.close()
        report["ansible_cpu_s_per_student"] = ansible_cpu_per_student(workshop, args.ansible_students, root / "ansible")
    report["intake_ratio_to_bare"] = report["create"]["intake_per_s"] / report["bare_aiosmtpd_per_s"]
    report["cpu_ratio_ansible_to_wodmail"] = (
        1000 * report["ansible_cpu_s_per_student"] / report["create"]["cpu_ms_per_command"]
    )
    return report


def cpu_split(phase: dict[str, Any]) -> str:
    return (
        f"{phase['cpu_ms_per_command']:.2f} ms/command"
        f" (doors {phase['doors_cpu_ms_per_command']:.2f} + jobs {phase['jobs_cpu_ms_per_command']:.2f})"
    )


def machine_split(phase: dict[str, Any]) -> tuple[str, str]:
    """The whole machine's CPU per command, and the rate its cores allow at that cost."""
    ms = phase["machine_cpu_ms_per_command"]
    cores = os.cpu_count() or 1
    ceiling = f"{cores} cores at that cost: at most {cores * 1000 / ms:.0f}/s"
    if phase["steal_share"] >= 0.005:  # a virtual machine whose host was busy: fewer cores were ours
        ceiling += f"; the hypervisor took {100 * phase['steal_share']:.0f}% of them"
    return f"{ms:.2f} ms/command", ceiling


def table(report: dict[str, Any]) -> str:
    create, cleanup = report["create"], report["cleanup"]
    rows = [
        ("bare aiosmtpd intake", f"{report['bare_aiosmtpd_per_s']:.0f} mails/s", ""),
        (
            "wodmail intake (fsync'd before 250)",
            f"{create['intake_per_s']:.0f} mails/s",
            f"{100 * report['intake_ratio_to_bare']:.0f}% of bare (target >= 1000/s and >= 80%)",
        ),
        ("CREATE end to end", f"{create['end_to_end_per_s']:.0f} /s", "target >= 200/s"),
        (
            "CREATE 250 -> last callback",
            f"p50 {create['p50_s']:.2f} s  p95 {create['p95_s']:.2f} s  p99 {create['p99_s']:.2f} s",
            "target p99 <= 10 s",
        ),
        ("CREATE CPU", cpu_split(create), "target < 10 ms"),
        ("CREATE CPU, whole machine", *machine_split(create)),
        ("CLEANUP end to end", f"{cleanup['end_to_end_per_s']:.0f} /s", ""),
        (
            "CLEANUP 250 -> last callback",
            f"p50 {cleanup['p50_s']:.2f} s  p95 {cleanup['p95_s']:.2f} s  p99 {cleanup['p99_s']:.2f} s",
            "",
        ),
        ("CLEANUP CPU", cpu_split(cleanup), ""),
        ("CLEANUP CPU, whole machine", *machine_split(cleanup)),
        ("daemon peak RSS", f"{report['peak_rss_mib']:.0f} MiB", "target <= 150 MiB"),
        ("HTTP connections opened", str(report["http_connections_opened"]), ""),
        ("LDAP connections opened", str(report.get("ldap_connections_opened", "-")), ""),
        ("ansible-playbook CPU per student", f"{report['ansible_cpu_s_per_student']:.2f} s", ""),
        ("CPU ratio ansible / wodmail CREATE", f"{report['cpu_ratio_ansible_to_wodmail']:.0f}x", "target >= 500x"),
    ]
    for verb, figures in (("CREATE", create), ("CLEANUP", cleanup)):
        runs = figures.get("password_runs")
        if runs:
            rows.append(
                (
                    f"  {verb} host passwords",
                    f"{runs['lines']} lines in {runs['runs']} chpasswd runs",
                    f"median {runs['median_lines']:.0f} lines a run",
                )
            )
        for name, step in figures.get("steps", {}).items():
            rows.append(
                (
                    f"  {verb} step {name}",
                    f"p50 {step['p50_ms']:.0f} ms  p95 {step['p95_ms']:.0f} ms",
                    f"waited before it: p50 {step['wait_p50_ms']:.0f} ms  p95 {step['wait_p95_ms']:.0f} ms",
                )
            )
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    head = f"wodmail benchmark: {report['count']} commands, {report['connections']} SMTP connections"
    head += ", LDAP on" if report["ldap"] else ", LDAP off"
    head += f", {report['workers']} workers"
    if report.get("create_step", "none") != "none":
        head += f", a create {report['create_step']} per CREATE"
    head += f"; STATEDIR and homes on {report['daemon_files_on']}; {report['accounts']}"
    return "\n".join([head] + [f"  {a:<{width}}  {b:<{value_width}}  {c}" for a, b, c in rows])


def _interrupted(number: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(number).name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", type=int, help="WORKERS for the run (default: the location's default)")
    parser.add_argument("--ansible-students", type=int, default=5)
    parser.add_argument("--no-ldap", action="store_true", help="a workshop without LDAP (no slapd needed)")
    parser.add_argument(
        "--workdir",
        default=str(Path(__file__).resolve().parent.parent / ".bench"),
        help="scratch folder for slapd, the catalog and the ansible run (default .bench/ in the checkout)",
    )
    parser.add_argument(
        "--files",
        default="auto",
        metavar="auto|DIR",
        help="where the daemon's STATEDIR and homes go: a folder, or auto (default): a fresh journaled"
        " ext4 on a loop image when run as root, else the scratch folder. The table says which",
    )
    parser.add_argument(
        "--accounts",
        choices=("auto", "no"),
        default="auto",
        help="auto (default): make host accounts student1..student{count} for the run when root and"
        " none exists (privilege separation on); no: homes stay root's",
    )
    parser.add_argument(
        "--create-step",
        choices=("none", "script", "playbook"),
        default="none",
        help="the workshop also has a site's create step: a bash create script (SCRIPTDIR) or a create"
        " playbook hook, each doing what a small one of the public catalog does (default none)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a location key for the run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # A run stopped with SIGTERM or SIGHUP (an operator's kill, a closed terminal) unwinds like
    # Ctrl-C: its daemon is stopped, its host accounts removed and its loop image unmounted.
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _interrupted)
    report = run(args)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
