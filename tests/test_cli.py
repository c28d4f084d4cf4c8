"""The command line as a new operator meets it: help, version, validated choices, totals,
and a warning about secrets others can read."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import DATA, REPO, SAMPLES, Daemon, Site, wodmail
from wodmail import __version__
from wodmail.cli import build_parser


def test_version_and_help_without_a_location() -> None:
    result = subprocess.run([sys.executable, "-m", "wodmail", "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip() == f"wodmail {__version__}"
    helped = subprocess.run([sys.executable, "-m", "wodmail", "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0
    assert "==SUPPRESS==" not in helped.stdout and "jobs-process" not in helped.stdout


def parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += parsers(child)
    return found


def test_every_argument_is_described() -> None:
    undescribed = [
        f"{prog}: {action.dest}"
        for prog, parser in parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction) and not action.help
    ]
    assert undescribed == []


def test_choices_are_checked_and_refusals_are_counted(site: Site) -> None:
    site.write()
    bogus = wodmail(site, "jobs", "--state", "bogus")
    assert bogus.returncode == 2 and b"invalid choice: 'bogus'" in bogus.stderr
    refused = wodmail(site, "deliver", stdin=b"From: a@example.com\nSubject: HELLO 1 2\n\nWKSHP-Sample\n")
    assert refused.returncode in (65, 77)
    listed = wodmail(site, "refused")
    assert listed.returncode == 0
    assert listed.stdout.startswith(b"refused: 1 mails kept (1 at deliver)"), listed.stdout


def test_check_warns_about_secrets_others_can_read(site: Site) -> None:
    site.values["APIENDPOINT"] = "http://127.0.0.1:9/api"
    site.values["APIUSER"] = "wod"
    site.values["APIPWD"] = "a-password-in-clear"
    site.write()
    os.chmod(site.file, 0o644)
    warned = wodmail(site, "check")
    assert warned.returncode == 0, warned.stderr
    assert f"{site.file} holds APIPWD in clear and is readable by others (mode 0644)".encode() in warned.stderr
    assert b"chmod 600" in warned.stderr and b"a-password-in-clear" not in warned.stderr + warned.stdout
    os.chmod(site.file, 0o600)
    assert b"in clear" not in wodmail(site, "check").stderr
    # Given as env:NAME, the same secret is nothing to warn about.
    site.values["APIPWD"] = "env:WODMAIL_TEST_APIPWD"
    site.write()
    os.chmod(site.file, 0o644)
    env = {**os.environ, "WODMAIL_TEST_APIPWD": "from-the-environment"}
    result = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.file), "check"],
        capture_output=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0 and b"in clear" not in result.stderr


#: What the site's MTA writes on top of a mail the registration app sent it (procmailrc.example).
RELAYED = (
    b"Received: from app.example.com (app.example.com [198.51.100.25])\n"
    b"\tby jupyter.example.com (Postfix) with ESMTP id 4XyZ; Mon, 1 Jan 2024 00:00:00 +0000\n"
)


def listed_rows(site: Site, *args: str) -> list[str]:
    """The table of `wodmail jobs ARGS`: the lines under its ID STATE ... header."""
    lines = wodmail(site, "jobs", *args).stdout.decode().splitlines()
    return lines[[line.split()[:2] for line in lines].index(["ID", "STATE"]) + 1 :]


def test_a_command_dropped_as_a_copy_shows_in_jobs_with_what_it_copies(site: Site) -> None:
    site.values["TRUSTEDPEERS"] = ["198.51.100.25", "local"]
    site.write()
    create = RELAYED + (DATA / "mails" / "create.eml").read_bytes()
    assert wodmail(site, "deliver", stdin=create).stdout.startswith(b"250 queued as job 1")
    redelivered = wodmail(site, "deliver", stdin=create)  # the same Message-ID
    assert redelivered.returncode == 0 and b"already have this command as job 1" in redelivered.stdout
    resent = create.replace(b"Message-ID: <create-1@example.com>\r\n", b"")  # the legacy client sends none
    assert b"already have this command as job 1" in wodmail(site, "deliver", stdin=resent).stdout
    other = create.replace(b"CREATE 1 1001", b"CREATE 2 1002").replace(b"create-1@", b"create-2@")
    assert wodmail(site, "deliver", stdin=other).stdout.startswith(b"250 queued as job 2")

    listed = wodmail(site, "jobs").stdout.decode().splitlines()
    assert listed[0] == "jobs: 2 queued, 0 running, 0 done, 0 failed, 0 held, 0 cancelled"
    assert listed[1].startswith("copies: 2 command(s) dropped as copies of a job already taken, not run")
    table = listed_rows(site)
    rows = [line.split()[:4] for line in table]
    assert rows == [
        ["2", "queued", "CREATE", "student2"],
        ["c2", "copy", "CREATE", "student1"],
        ["c1", "copy", "CREATE", "student1"],
        ["1", "queued", "CREATE", "student1"],
    ]
    assert table[2].endswith("copy of job 1 (the same Message-ID: a redelivered mail): not run")
    assert table[1].endswith("copy of job 1 (the same command as the student's latest job (queued)): not run")
    assert [line.split()[0] for line in listed_rows(site, "--state", "copy")] == ["c2", "c1"]
    assert [line.split()[0] for line in listed_rows(site, "--state", "queued")] == ["2", "1"]

    shown = wodmail(site, "jobs", "show", "1").stdout.decode()
    assert 'copies (not run; each was answered "already have this command as job 1"):' in shown
    assert "    c1      " in shown and "by deliver from local pipe, sender <>: the same Message-ID" in shown
    copy = wodmail(site, "jobs", "show", "c2")
    assert copy.returncode == 0
    assert copy.stdout.decode().splitlines()[:2] == [
        "copy c2: CREATE 1 1001 student.one@example.com / WKSHP-Sample",
        "  state     not run: a copy of job 1 (the same command as the student's latest job (queued));"
        " `wodmail jobs show 1`",
    ]
    missing = wodmail(site, "jobs", "show", "c9")
    assert missing.returncode == 65 and missing.stderr == b"wodmail: no copy c9\n"
    assert wodmail(site, "jobs", "show", "x1").returncode == 2


def embedded_default(site: Site) -> Site:
    """locations/local.yaml and its workshops as shipped, with the ports and the folders moved
    to the test's own, and WKSHP-Sample's students to 8401..8410 (no account has them)."""
    local = REPO / "locations" / "local.yaml"
    values = yaml.safe_load(local.read_text())
    workshops = yaml.safe_load((local.parent / values["WORKSHOPS"]).read_text())
    values.update(
        SMTPPORT=site.smtp_port,
        LEGACYPORT=site.legacy_port,
        STATEDIR=str(site.state_dir),
        STUDENTDIR=str(site.student_dir),
        WORKSHOPDIR=str(SAMPLES),
        STUDENTMAX=8420,
    )
    workshops["WKSHP-Sample"]["range"] = [8401, 8410]
    site.values, site.workshops = values, workshops
    return site


def test_send_works_on_the_embedded_default_without_a_key(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    """No SIGNINGKEYS: `--print` prints the command unsigned; root's `send` goes through the
    admin socket; and where root's location names another STATEDIR than the daemon's (as
    `sudo wodmail send` does beside a daemon run by someone else), over loopback SMTP,
    unsigned, which the embedded default takes from root."""
    embedded_default(site)
    assert "SIGNINGKEYS" not in site.values and "127.0.0.0/8" in site.values["TRUSTEDPEERS"]
    site.write()
    printed = wodmail(site, "send", "CREATE", "8401", "c1", "--workshop", "WKSHP-Sample", "--print")
    assert printed.returncode == 0, printed.stderr
    assert b"Subject: CREATE 8401 c1\n" in printed.stdout and b"X-Wodmail-Signature" not in printed.stdout
    assert b"not signed (the location has no SIGNINGKEYS)" in printed.stderr

    daemon_factory()
    through_admin = wodmail(site, "send", "CREATE", "8401", "c1", "--workshop", "WKSHP-Sample")
    assert through_admin.stdout.decode().strip() == "250 queued as job 1", through_admin.stderr
    elsewhere = site.root / "elsewhere.yaml"
    elsewhere.write_text(yaml.safe_dump({**site.values, "STATEDIR": str(site.root / "roots-state")}))
    over_smtp = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(elsewhere), "send", "PURGE", "8402", "c2"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert over_smtp.stdout.decode().strip() == "250 queued as job 2", over_smtp.stderr
    jobs = site.wait_jobs(2)
    assert [job[1:4] for job in jobs] == [("CREATE", 8401, "done"), ("PURGE", 8402, "done")]
    shown = wodmail(site, "jobs", "show", "2").stdout.decode()
    assert "by smtp from 127.0.0.1" in shown and "user root (uid 0)" in shown, shown


def test_the_readmes_first_command_runs_in_any_shell(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    """The README's first command, as written, run by dash (not bash: no /dev/tcp), sends
    the sample CREATE to the legacy door; it is taken and run (here on the test's port)."""
    readme = (REPO / "README.md").read_text()
    first = readme.split("## Your first command", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0].strip()
    assert first == "scripts/legacy-send tests/data/mails/legacy-create.txt" and "/dev/tcp" not in readme
    daemon_factory()
    sent = subprocess.run(
        ["/bin/dash", "-c", f"{first} 127.0.0.1 {site.legacy_port}"],
        cwd=REPO,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.decode().splitlines()[-1] == "250 queued as job 1"
    (job,) = site.wait_jobs(1)
    assert job[1:4] == ("CREATE", 1, "done"), job


#: A stand-in for the virtual environment's pip (not ours): it notes that it was called.
PIP_STANDIN = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../pip-calls"
"""


def start_and_stop(serve: Path, site: Site) -> None:
    """Run `scripts/serve --location SITE` until the daemon listens, then stop it."""
    with open(site.root / "serve.log", "ab") as log:
        process = subprocess.Popen([str(serve), "--location", str(site.file)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", site.smtp_port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        assert process.poll() is None, (site.root / "serve.log").read_text()[-2000:]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_scripts_serve_installs_only_when_pyproject_changed(site: Site, tmp_path: Path) -> None:
    """`scripts/serve` runs pip only when the virtual environment was not made from this
    pyproject.toml (the install is editable: sources need none); otherwise it starts the
    daemon at once. Run on a copy of the checkout's scripts whose .venv has a pip stand-in."""
    site.write()
    project = tmp_path / "checkout"
    (project / "scripts").mkdir(parents=True)
    for name in ("serve", "venv.sh"):
        shutil.copy2(REPO / "scripts" / name, project / "scripts" / name)
    shutil.copy2(REPO / "pyproject.toml", project / "pyproject.toml")
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "wodmail"):
        (bin_dir / name).symlink_to(Path(sys.executable).parent / name)
    (bin_dir / "pip").write_text(PIP_STANDIN)
    (bin_dir / "pip").chmod(0o755)
    calls = project / ".venv" / "pip-calls"

    def pip_calls() -> list[str]:
        return calls.read_text().splitlines() if calls.exists() else []

    start_and_stop(project / "scripts" / "serve", site)
    assert pip_calls() == ["install -q --disable-pip-version-check -e ."]
    start_and_stop(project / "scripts" / "serve", site)
    assert len(pip_calls()) == 1, "nothing changed: no install"
    with open(project / "pyproject.toml", "a") as pyproject:
        pyproject.write("# a new dependency, say\n")
    start_and_stop(project / "scripts" / "serve", site)
    assert len(pip_calls()) == 2, "pyproject.toml changed: installed again"
