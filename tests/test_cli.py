"""The command line as a new operator meets it: help, version, validated choices, totals,
and a warning about secrets others can read."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from tests.conftest import Site, wodmail
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
