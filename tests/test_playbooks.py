"""The host playbooks, run for real: `ansible-playbook -i localhost, -c local` as root.

site.yml prepares this host under a temporary prefix (the virtual environment, the location,
STATEDIR, STUDENTDIR, real accounts student7601..7603 and their homes, the unit, the nightly
cron file), twice: the second run changes nothing. check.yml then finds a clean host, and
after an operator's night of mistakes (a home given away, a home gone, a job stuck, a job
failed, the hub down, a broken location value) reports each one, changes nothing, and with
`-e fix=true` mends the homes and only them.

wodmail itself is installed into the prefix's virtual environment from a snapshot of this
checkout; its dependencies are this project's venv's (PYTHONPATH and `--no-deps`), so the
test needs no index and does not spend 25 s installing ansible-core a second time. The
accounts are removed (`userdel -r`) at the end, whatever happened.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA, REPO, SAMPLES
from tests.standins import JupyterHubStandin, RegistrationApp

from .test_trust import APP, received

PLAYBOOKS = REPO / "playbooks"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
STUDENTS = (7601, 7602, 7603)
UIDBASE = 30000
#: The GECOS wodmail and site.yml give an account they make: only such accounts are removed.
MARK = "wodmail student"
#: What of the checkout the wheel is built from (site.yml fingerprints the same).
SOURCE_PARTS = ("pyproject.toml", "README.md", "wodmail", "verbs", "templates", "locations", "playbooks", "systemd")

SYSTEMD_RUNS = Path("/run/systemd/system").is_dir()


@pytest.fixture(autouse=True)
def _root_only() -> None:
    """The host playbooks make accounts: without root the tests fail (never skip)."""
    if os.geteuid() != 0:
        pytest.fail("the host playbook tests need root: they make accounts, folders owned by root")


@dataclass
class Run:
    returncode: int
    output: str

    @property
    def changed(self) -> int:
        recap = re.findall(r"localhost\s+:\s+ok=\d+\s+changed=(\d+)", self.output)
        assert len(recap) == 1, self.output[-3000:]
        return int(recap[0])

    def report(self) -> list[str]:
        """The lines of check.yml's final report."""
        match = re.search(r'"msg": (\[\n.*?\n    \])', self.output, re.DOTALL)
        assert match, self.output[-3000:]
        lines: list[str] = json.loads(match[1])
        return lines


@dataclass
class Host:
    root: Path
    prefix: Path
    etc: Path
    state_dir: Path
    student_dir: Path
    location_source: Path
    hub: JupyterHubStandin
    first_run: Run

    @property
    def location(self) -> Path:
        return self.etc / "location.yaml"

    def home(self, stdid: int) -> Path:
        return self.student_dir / f"student{stdid}"

    def play(self, playbook: str, *extra: str) -> Run:
        variables = {
            "wodmail_source": str(self.root / "source"),
            "wodmail_prefix": str(self.prefix),
            "wodmail_etc": str(self.etc),
            "wodmail_location_source": str(self.location_source),
            "wodmail_location_files": [str(self.location_source.parent / "workshops.yaml")],
            "wodmail_unit_dir": str(self.root / "systemd"),
            # Where systemd runs, a unit installed under a temporary folder is not one to start.
            "wodmail_start": not SYSTEMD_RUNS,
            "wodmail_cron_file": str(self.root / "cron.d" / "wodmail-check"),
            "wodmail_check_log": str(self.root / "wodmail-check.log"),
            # This venv's pip installs into the prefix's venv (`pip --python`): making the venv
            # without a pip of its own saves 7 s of ensurepip.
            "wodmail_venv_args": ["--without-pip"],
            "wodmail_pip": [sys.executable, "-m", "pip", "--python", str(self.prefix / ".venv" / "bin" / "python")],
            # --no-build-isolation: the build backend is this venv's (hatchling, from the test
            # extra, through PYTHONPATH) rather than one pip fetches into a new build environment
            # at every run (12 s of the first run).
            "wodmail_pip_args": ["--no-deps", "--no-build-isolation"],
        }
        return play(playbook, "-e", json.dumps(variables), *extra)


def with_dependencies() -> dict[str, str]:
    """The environment for the prefix's wodmail: its dependencies are this venv's."""
    return {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}


def play(playbook: str, *args: str) -> Run:
    env = {
        **with_dependencies(),
        "ANSIBLE_PIPELINING": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": "/tmp/.ansible-playbooks-test",
    }
    result = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(PLAYBOOKS / playbook),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    return Run(result.returncode, result.stdout + result.stderr)


def remove_accounts() -> None:
    for stdid in STUDENTS:
        name = f"student{stdid}"
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_gecos != MARK or entry.pw_uid != stdid + UIDBASE:
            pytest.fail(f"{name} exists and is not this test's: refusing to touch it")
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
        with_group = subprocess.run(["getent", "group", name], capture_output=True, check=False)
        if with_group.returncode == 0:
            subprocess.run(["groupdel", name], capture_output=True, check=True)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """A host prepared by a first run of site.yml (accounts removed at the end)."""
    root = tmp_path_factory.mktemp("host")
    root.chmod(0o755)
    source = root / "source"
    source.mkdir()
    for part in SOURCE_PARTS:  # a snapshot: edits to the checkout meanwhile change nothing here
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / part, source / part)
    (root / "systemd").mkdir()
    (root / "cron.d").mkdir()
    site = root / "site"
    site.mkdir()
    api_password = site / "api-password"
    api_password.write_text("secret-api-pw\n")
    api_password.chmod(0o600)
    remove_accounts()
    with RegistrationApp() as app, JupyterHubStandin() as hub:
        location = {
            "SMTPHOST": "127.0.0.1",
            "SMTPPORT": 8725,
            "LEGACYPORT": 8726,
            "LEGACYPEERS": [APP],
            "TRUSTEDPEERS": [APP, "local"],
            "STATEDIR": str(root / "state"),
            "STUDENTDIR": str(root / "students"),
            "WORKSHOPDIR": str(SAMPLES),
            "WORKSHOPS": "workshops.yaml",
            "CATALOGWORKSHOPS": "listed",
            "STUDENTMIN": STUDENTS[0],
            "STUDENTMAX": STUDENTS[-1],
            "ACCOUNTS": "unix",
            "ACCOUNTCREATE": True,
            "ACCOUNTUIDBASE": UIDBASE,
            "ACCOUNTGIDBASE": UIDBASE,
            "APIENDPOINT": app.url,
            "APIUSER": app.username,
            "APIPWD": f"file:{api_password}",
            "JPHUBAPISRV": hub.url,
            "JPHUBTOKEN": hub.token,
            # free keys the sample workshop's notebooks show (`wodmail check` renders it)
            "BRANDING": "Workshops-on-Demand",
            "JPHOSTEXT": "jupyter.example.com",
        }
        (site / "site.yaml").write_text(yaml.safe_dump(location, sort_keys=False))
        (site / "workshops.yaml").write_text(yaml.safe_dump({"WKSHP-Sample": {"range": [7601, 7603]}}))
        prepared = Host(
            root=root,
            prefix=root / "opt",
            etc=root / "etc",
            state_dir=root / "state",
            student_dir=root / "students",
            location_source=site / "site.yaml",
            hub=hub,
            first_run=Run(0, ""),
        )
        try:
            prepared.first_run = prepared.play("site.yml")
            yield prepared
        finally:
            remove_accounts()
    leftovers = subprocess.run(["getent", "passwd"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in leftovers.splitlines() if line.startswith(tuple(f"student{n}:" for n in STUDENTS))]


def test_both_playbooks_pass_the_syntax_check() -> None:
    run = play("site.yml", str(PLAYBOOKS / "check.yml"), "--syntax-check")
    assert run.returncode == 0, run.output
    assert "playbook: " + str(PLAYBOOKS / "site.yml") in run.output
    assert "playbook: " + str(PLAYBOOKS / "check.yml") in run.output


def test_site_prepares_the_host_and_a_second_run_changes_nothing(host: Host) -> None:
    first = host.first_run
    assert first.returncode == 0, first.output[-6000:]
    assert first.changed > 0

    venv = host.prefix / ".venv"
    version = subprocess.run(
        [venv / "bin" / "wodmail", "--help"], capture_output=True, text=True, env=with_dependencies(), check=False
    )
    assert version.returncode == 0 and "Mail-driven" in version.stdout, version.stderr
    assert [path.parent.parent.name for path in venv.glob("lib/python3*/site-packages/wodmail/__init__.py")]
    assert (venv / "wodmail-source.sha256").exists()

    installed = host.location.stat()
    assert host.location.read_bytes() == host.location_source.read_bytes()
    assert (installed.st_uid, installed.st_mode & 0o7777) == (0, 0o640)
    assert (host.etc / "workshops.yaml").stat().st_mode & 0o7777 == 0o640
    state = host.state_dir.stat()
    assert (state.st_uid, state.st_mode & 0o7777) == (0, 0o700)
    students = host.student_dir.stat()
    assert students.st_uid == 0 and students.st_mode & 0o022 == 0

    for stdid in STUDENTS:
        entry = pwd.getpwnam(f"student{stdid}")
        assert (entry.pw_uid, entry.pw_gid) == (stdid + UIDBASE, stdid + UIDBASE)
        assert grp.getgrgid(entry.pw_gid).gr_name == f"student{stdid}"
        assert (entry.pw_dir, entry.pw_shell, entry.pw_gecos) == (str(host.home(stdid)), "/bin/bash", MARK)
        home = host.home(stdid).stat()
        assert (home.st_uid, home.st_gid, home.st_mode & 0o7777) == (entry.pw_uid, entry.pw_gid, 0o750)

    unit = (host.root / "systemd" / "wodmail.service").read_text()
    assert f"ExecStart={venv}/bin/wodmail serve" in unit
    assert f"Environment=WODMAIL_LOCATION={host.location}\n" in unit
    assert "/opt/wodmail" not in unit and "/etc/wodmail" not in unit
    shipped = (host.root / "source" / "systemd" / "wodmail.service").read_text()
    assert unit.replace(str(venv), "/opt/wodmail/.venv").replace(str(host.etc), "/etc/wodmail") == shipped
    cron = (host.root / "cron.d" / "wodmail-check").read_text()
    assert f"root {venv}/bin/ansible-playbook -i localhost, -c local {host.prefix}/playbooks/check.yml" in cron
    assert (host.prefix / "playbooks" / "host" / "location_facts.py").exists()
    why = "wodmail_start is false" if SYSTEMD_RUNS else "systemd is not running on this host (no /run/systemd/system)"
    assert f"{why}: the unit is installed in {host.root / 'systemd'}, not enabled or started" in first.output

    again = host.play("site.yml")
    assert again.returncode == 0, again.output[-6000:]
    assert again.changed == 0, again.output[-6000:]


def test_check_finds_a_clean_host_clean(host: Host) -> None:
    run = host.play("check.yml")
    assert run.returncode == 0, run.output[-6000:]
    assert run.changed == 0
    report = run.report()
    assert report[0] == f"wodmail check of {host.location}: 0 drift, 0 fixed (run with -e fix=true to mend the homes)"
    assert not [line for line in report if line.startswith(("DRIFT", "FIXED"))], report
    assert "NOTE  jobs: no queue in STATEDIR yet (the daemon has not run here)" in report


def homes_now(host: Host) -> dict[str, tuple[int, ...]]:
    """What STUDENTDIR holds: each name's inode, owner, mode and modification time."""
    return {
        path.name: (st.st_ino, st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns)
        for path in host.student_dir.iterdir()
        for st in [path.lstat()]
    }


def deliver_creates(host: Host) -> None:
    """Three CREATEs in the queue, as the MTA hands them over (no daemon runs them)."""
    for stdid in STUDENTS:
        mail = (DATA / "mails" / "create.eml").read_bytes()
        mail = mail.replace(b"create-1@", f"create-{stdid}@".encode()).replace(
            b"CREATE 1 1001", f"CREATE {stdid} 1001".encode()
        )
        result = subprocess.run(
            [
                host.prefix / ".venv" / "bin" / "wodmail",
                "--location",
                str(host.location),
                "deliver",
                "-f",
                "wod@example.com",
            ],
            input=received(APP) + mail,
            capture_output=True,
            env=with_dependencies(),
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_check_reports_drift_and_fixes_the_homes_only_when_told(host: Host) -> None:
    # An operator's night: a home given away and opened to all, a home gone, STATEDIR opened
    # to all, a job stuck running for two hours, one failed, one waiting for two hours, the
    # hub down.
    given_away, gone = host.home(7601), host.home(7602)
    os.chown(given_away, 0, 0)
    given_away.chmod(0o777)
    gone.rmdir()
    deliver_creates(host)
    host.state_dir.chmod(0o755)
    two_hours_ago = time.time() - 7200
    with sqlite3.connect(host.state_dir / "queue.sqlite3") as db:
        db.execute(
            "UPDATE jobs SET state = 'running', received = ?, started = ? WHERE stdid = 7601", (two_hours_ago,) * 2
        )
        db.execute("UPDATE jobs SET state = 'failed', error = 'the hub said no' WHERE stdid = 7602")
        db.execute("UPDATE jobs SET received = ? WHERE stdid = 7603", (two_hours_ago,))
    host.hub.stop()
    homes_before = homes_now(host)

    run = host.play("check.yml")
    assert run.returncode == 2, run.output[-6000:]
    assert run.changed == 0
    report = run.report()
    drift = [line for line in report if line.startswith("DRIFT")]
    assert report[0].startswith(f"wodmail check of {host.location}: {len(drift)} drift, 0 fixed"), report
    wanted = f"{7601 + UIDBASE}:{7601 + UIDBASE} mode 0750"
    assert f"DRIFT homes: {given_away}: 0:0 mode 0777, wanted {wanted}" in drift, report
    assert f"DRIFT homes: {gone}: missing (wanted {7602 + UIDBASE}:{7602 + UIDBASE} mode 0750)" in drift, report
    assert any(
        re.fullmatch(
            r"DRIFT jobs: job \d+ \(CREATE student7601 WKSHP-Sample\) is running, received 7\d\d\d s ago.*", line
        )
        for line in drift
    ), report
    assert any(
        re.fullmatch(r"DRIFT jobs: job \d+ failed \(CREATE student7602 WKSHP-Sample\): the hub said no .*", line)
        for line in drift
    ), report
    assert any(re.fullmatch(r"DRIFT jobs: job \d+ has waited 7\d\d\d s in the queue .*", line) for line in drift), (
        report
    )
    assert any(
        line.startswith(f"DRIFT reachable: the JupyterHub at {host.hub.url} does not answer") for line in drift
    ), report
    assert (
        f"DRIFT folders: STATEDIR {host.state_dir} is 0:0 mode 0755, wanted root's and closed to others (0700)" in drift
    ), report
    assert not any("registration app" in line for line in drift), report
    assert len(drift) == 7, report
    assert homes_now(host) == homes_before

    fixed = host.play("check.yml", "-e", "fix=true")
    assert fixed.returncode == 2, fixed.output[-6000:]  # the jobs and the hub are still to see to
    assert fixed.changed == 2
    report = fixed.report()
    assert f"FIXED homes: {given_away}: 0:0 mode 0777, wanted {wanted}" in report, report
    assert any(line.startswith(f"FIXED homes: {gone}: missing") for line in report), report
    assert not [line for line in report if line.startswith("DRIFT homes")], report
    assert len([line for line in report if line.startswith("DRIFT")]) == 5, report  # only homes are fixed
    for stdid in (7601, 7602):
        home = host.home(stdid).stat()
        assert (home.st_uid, home.st_gid, home.st_mode & 0o7777) == (stdid + UIDBASE, stdid + UIDBASE, 0o750)
    assert host.state_dir.stat().st_mode & 0o7777 == 0o755
    host.state_dir.chmod(0o700)


def test_check_reports_a_broken_location_and_changes_nothing(host: Host) -> None:
    good = host.location.read_text()
    homes_before = homes_now(host)
    host.location.write_text(good.replace("STUDENTMAX: 7603", "STUDENTMAX: lots"))
    try:
        run = host.play("check.yml", "-e", "fix=true")
    finally:
        host.location.write_text(good)
    assert run.returncode == 2, run.output[-6000:]
    assert run.changed == 0
    drift = [line for line in run.report() if line.startswith("DRIFT")]
    assert len(drift) == 1, drift
    assert drift[0].startswith("DRIFT settings: `wodmail check` failed (exit 78): wodmail: configuration error: ")
    assert "STUDENTMAX" in drift[0] and drift[0].endswith("; nothing else was checked")
    assert homes_now(host) == homes_before
