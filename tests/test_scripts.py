"""The operator's scripts in bench/, in their short forms (the full runs are for the notes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def run_script(name: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / name), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.exists(), result.stdout + result.stderr
    report: dict = json.loads(out.read_text())
    report["_exit"] = result.returncode
    report["_stdout"] = result.stdout
    return report


def test_kill_test_short_form(tmp_path: Path) -> None:
    report = run_script("killtest.py", "--students", "60", "--kills", "3", "--seed", "7", tmp_path=tmp_path)
    assert report["kills"] == 3
    assert report["answered_250"] == 120
    assert report["lost"] == 0 and report["duplicates"] == 0
    assert report["refused_that_ran"] == 0 and report["stuck"] == 0
    assert report["final_state_ok"] is True
    assert report["_exit"] == 0, report["_stdout"]


def test_soak_short_form(tmp_path: Path) -> None:
    report = run_script("soak.py", "--seconds", "10", "--rate", "20", "--every", "1", tmp_path=tmp_path)
    assert report["sent"] >= 150
    assert len(report["samples"]) >= 10
    assert all(rss > 10_000 for _t, rss in report["samples"])  # a real process's RSS, in KiB
