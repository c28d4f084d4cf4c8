"""The code stays as STYLE.md asks: ruff clean and formatted, mypy --strict clean (the
package, the verbs, the host playbooks' helper script, the tests and the benchmark scripts)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, check=False)


def test_ruff() -> None:
    result = run("ruff", "check", "wodmail", "verbs", "tests", "bench", "playbooks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run("ruff", "format", "--check", "wodmail", "verbs", "tests", "bench", "playbooks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    # One run for all (the tests import the package, so it is analysed once). tests/data is
    # left out by pyproject's [tool.mypy] exclude: workshop samples and attack files, data
    # that runs as a student, not our code.
    result = run("mypy", "--strict", "wodmail", "playbooks/host/location_facts.py", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr
