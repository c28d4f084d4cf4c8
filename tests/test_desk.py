"""An operator's desk on the command line: `wodmail help`, `drain`, `resume` and `status`
say what the verbs HELP, DRAIN, RESUME and STATUS answer by mail, and act on the same queue
the running daemon's doors read (wodmail.cli.desk).

One daemon for the story; each command is the real `wodmail` process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from tests.conftest import Daemon, Site, wodmail

EX_DATAERR = 65


def out(run: subprocess.CompletedProcess[bytes]) -> str:
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return run.stdout.decode()


def test_an_operator_drains_a_workshop_and_resumes_it_while_the_daemon_runs(
    site: Site, daemon_factory: Callable[..., Daemon]
) -> None:
    daemon = daemon_factory()
    assert out(wodmail(site, "drain", "workshop", "WKSHP-Sample")) == (
        "WKSHP-Sample drained: a CREATE for it is refused (451, try again later) until RESUME workshop"
        " WKSHP-Sample; every other verb runs\n"
    )
    again = out(wodmail(site, "drain", "workshop", "WKSHP-Sample"))
    assert again.startswith("WKSHP-Sample was already drained since ")
    assert "(wodmail drain, user root (uid 0))" in again
    shown = out(wodmail(site, "help"))
    assert "Verbs:" in shown
    [sample] = [line for line in shown.splitlines() if line.startswith("  WKSHP-Sample ")]
    assert "drained" in sample
    code, text = daemon.send("CREATE 5 c5")
    assert code == 451, text
    assert daemon.send("CREATE 1101 c1101", "WKSHP-SampleReset")[0] == 250  # only the one drained

    assert out(wodmail(site, "resume", "workshop", "WKSHP-Sample")) == (
        "WKSHP-Sample resumed: CREATEs are taken again\n"
    )
    assert out(wodmail(site, "resume", "workshop", "WKSHP-Sample")) == "WKSHP-Sample was not drained\n"
    assert daemon.send("CREATE 5 c5")[0] == 250

    # Every workshop at once, and `python -m wodmail.cli` is the same command.
    assert out(wodmail(site, "drain", "all")).startswith("every workshop drained: ")
    by_module = subprocess.run(
        [sys.executable, "-m", "wodmail.cli", "--location", str(site.file), "resume", "all"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert out(by_module) == "every drain lifted (1): CREATEs are taken again\n"
    jobs = site.wait_jobs(2)
    assert sorted(job[1] for job in jobs) == ["CREATE", "CREATE"]


def test_the_desk_refuses_words_the_verbs_would_refuse(site: Site) -> None:
    site.write()
    for args, said in (
        (("drain", "workshop", "WKSHP-Nowhere"), "wodmail drain: unknown workshop 'WKSHP-Nowhere'"),
        (("resume", "workshop", "../etc"), "wodmail resume: "),
        (("status", "student", "many"), "wodmail status: "),
    ):
        run = wodmail(site, *args)
        assert run.returncode == EX_DATAERR, (args, run.stdout, run.stderr)
        assert run.stderr.decode().startswith(said), (args, run.stderr)
        assert run.stdout == b""
    # Nothing was drained by the refused words.
    assert "drained" not in out(wodmail(site, "help"))
