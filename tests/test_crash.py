"""A committed command survives `kill -9` of the daemon and runs exactly once after restart."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.conftest import Daemon, Site, same_secret, with_app, with_hub
from tests.standins import JupyterHubStandin, RegistrationApp


def test_kill_9_between_accepting_and_finishing(
    site: Site, app: RegistrationApp, hub: JupyterHubStandin, daemon_factory: Callable[..., Daemon]
) -> None:
    with_app(site, app)
    with_hub(site, hub)
    app.set_delay(0.05)  # callbacks still in flight when the daemon dies
    hub.set_delay(0.2)  # and jobs: each waits 0.2 s for its server, 8 at once
    daemon: Daemon = daemon_factory()
    accepted = []
    with daemon.smtp() as client:
        client.ehlo()
        for stdid in range(1, 61):
            code, text = client.docmd("RSET")
            client.mail("wod@example.com")
            client.rcpt("jupyter@example.com")
            code, text = client.data(f"Subject: CREATE {stdid} c{stdid}\r\n\r\nWKSHP-Sample\r\n".encode())
            assert code == 250, text
            accepted.append(stdid)
    daemon.kill()
    states = {job[3] for job in site.jobs()}
    assert len(site.jobs()) == 60 and states - {"done"}, "the kill should land before every job finished"

    daemon_factory()
    jobs = site.wait_jobs(60, timeout=60)
    assert [job[2] for job in jobs] == accepted
    assert {job[3] for job in jobs} == {"done"}
    with site.db() as conn:
        outbox = conn.execute("SELECT job_id, count(*) FROM outbox GROUP BY job_id").fetchall()
        assert sorted(count for _job, count in outbox) == [2] * 60, "each job queued its callbacks exactly once"
    assert app.wait_for(
        lambda a: all(a.state()["customer"].get(f"c{i}", {}).get("active") == "true" for i in accepted), timeout=60
    )
    state = app.state()
    for stdid in accepted:
        notebook = (site.home(stdid) / "WKSHP-Sample" / "1-Python101.ipynb").read_text()
        reported = state["student"][str(stdid + 1000)]["password"]
        assert same_secret(_password(notebook), reported), f"student{stdid}: notebook and app disagree"


def _password(text: str) -> str | None:
    import re

    found = re.search(r"password[^`]*`([A-Za-z0-9]{16})`", json.dumps(json.loads(text)))
    return found.group(1) if found else None
