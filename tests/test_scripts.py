"""The operator's scripts in bench/, in their short forms (the full runs are for the notes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO


def run_script(name: str, *args: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / name), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.exists(), result.stdout + result.stderr
    report: dict[str, Any] = json.loads(out.read_text())
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


def test_benchmark_short_form(tmp_path: Path) -> None:
    """The benchmark end to end with 20 commands: every figure there, no time asserted."""
    report = run_script(
        "bench.py",
        "--count",
        "20",
        "--connections",
        "4",
        "--ansible-students",
        "1",
        "--workdir",
        str(tmp_path / "work"),
        tmp_path=tmp_path,
    )
    assert report["_exit"] == 0, report["_stdout"]
    assert report["count"] == 20 and report["ldap"] is True
    for phase in ("create", "cleanup"):
        figures = report[phase]
        assert figures["intake_per_s"] > 0 and figures["end_to_end_per_s"] > 0
        assert 0 <= figures["p50_s"] <= figures["p95_s"] <= figures["p99_s"] <= figures["max_s"]
        assert figures["cpu_ms_per_command"] > 0
        # the whole machine's CPU holds the daemon's (within the clock ticks' rounding)
        assert figures["machine_cpu_ms_per_command"] >= 0.9 * figures["cpu_ms_per_command"]
        assert 0 <= figures["steal_share"] < 1  # the hypervisor's share is apart, never all of it
        assert figures["cpu_ms_per_command"] == pytest.approx(
            figures["doors_cpu_ms_per_command"] + figures["jobs_cpu_ms_per_command"]
        )
        if "ACCOUNTS: unix" in report["accounts"]:  # as root: every password went through chpasswd, batched
            runs = figures["password_runs"]
            assert runs["lines"] == 20 and 1 <= runs["runs"] <= 20, runs
    assert report["bare_aiosmtpd_per_s"] > 0
    assert 20 < report["peak_rss_mib"] < 1024
    assert 1 <= report["ldap_connections_opened"] <= 4
    assert report["http_connections_opened"] >= 1
    assert report["ansible_cpu_s_per_student"] > 0
    assert report["daemon_files_on"]
    assert "CREATE end to end" in report["_stdout"] and report["daemon_files_on"] in report["_stdout"]
