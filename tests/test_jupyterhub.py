"""Students' servers on a real JupyterHub: CREATE starts them, CLEANUP and PURGE stop them.

Two real hubs serve this module (tests/jupyterhub.py): `real_hub`, configured as a site
would be (slow spawns answered 202 after 10 s, up to 100 concurrent spawns), and
`throttled_hub`, which answers every start and stop 202 at once (slow_spawn_timeout and
slow_stop_timeout 0), allows only
2 spawns at a time (429 with Retry-After 1 s beyond) and gives a server 4 s to answer
(http_timeout). Each test uses students of its own, so the hubs are shared by the tests of
the module.

The JupyterHub stand-in is used for one thing only, what no current hub does any more:
the answers of older hubs (DELETE of a server that is not running answered 400, DELETE
during a pending spawn refused with 400 "pending spawn").
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Daemon, Site
from tests.jupyterhub import RealJupyterHub
from tests.ports import free_port
from tests.standins import JupyterHubStandin
from wodmail.errors import ConfigError, TransientError
from wodmail.hub import Hub
from wodmail.location import load_location
from wodmail.transport import HttpClient

START = "start JupyterHub server"
STOP = "stop JupyterHub server"
BURST = range(101, 201)


def students(*numbers: int | range) -> list[str]:
    names = []
    for number in numbers:
        names += [f"student{n}" for n in (number if isinstance(number, range) else [number])]
    return names


@pytest.fixture(scope="module")
def hubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealJupyterHub, RealJupyterHub]]:
    """The module's two hubs, launched side by side (each takes seconds to start)."""
    real = RealJupyterHub(tmp_path_factory.mktemp("real-hub"), users=students(11, 12, 13, BURST))
    throttled = RealJupyterHub(
        tmp_path_factory.mktemp("throttled-hub"),
        users=students(range(31, 36), range(41, 46), range(51, 54)),
        concurrent_spawn_limit=2,
        spawn_throttle_retry_range=(1, 2),
        slow_spawn_timeout=0,
        slow_stop_timeout=0,
        http_timeout=4,
    )
    try:
        real.launch()
        throttled.launch()
        yield real.wait_ready(), throttled.wait_ready()
    finally:
        real.stop()
        throttled.stop()


@pytest.fixture
def real_hub(hubs: tuple[RealJupyterHub, RealJupyterHub]) -> RealJupyterHub:
    return hubs[0]


@pytest.fixture
def throttled_hub(hubs: tuple[RealJupyterHub, RealJupyterHub]) -> RealJupyterHub:
    return hubs[1]


def use_hub(site: Site, hub: RealJupyterHub, **keys: object) -> None:
    site.values.update(JPHUBAPISRV=hub.url, JPHUBTOKEN=hub.token, **keys)


def step(site: Site, job_id: int, name: str) -> tuple[str, str | None, str | None, float]:
    """(state, result, error, seconds) of one step of one job."""
    with site.db() as conn:
        row = conn.execute(
            "SELECT state, result, error, finished - started FROM steps WHERE job_id = ? AND name = ?",
            (job_id, name),
        ).fetchone()
    assert row is not None, f"job {job_id} has no step {name!r}"
    result = json.loads(row[1]) if row[1] is not None else None
    return row[0], result, row[2], row[3] or 0.0


def send(daemon: Daemon, subject: str, body: str = "WKSHP-Sample") -> None:
    code, reply = daemon.send(subject, body)
    assert code == 250, reply


# -- the story on a real hub --------------------------------------------------------------


def test_create_starts_the_server_and_cleanup_stops_it(
    site: Site, real_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]
) -> None:
    use_hub(site, real_hub)
    daemon = daemon_factory()

    send(daemon, "CREATE 11 c11 eleven@example.com")
    (create,) = site.wait_jobs(1)
    assert create[1:4] == ("CREATE", 11, "done"), create
    assert step(site, create[0], START)[:2] == ("done", "started")
    assert real_hub.ready("student11")
    answer = real_hub.answers("student11")  # the proxy routes to the student's own server
    assert answer is not None and answer["user"] == "student11"
    pid = real_hub.pid_of("student11")
    assert pid is not None

    # A second CREATE of the same student (for another customer): "already running" is fine.
    send(daemon, "CREATE 11 c11b other@example.com")
    again = site.wait_jobs(2)[1]
    assert again[3] == "done", again
    assert step(site, again[0], START)[:2] == ("done", "already running")
    assert real_hub.pid_of("student11") == pid

    send(daemon, "CLEANUP 11 c11b")
    cleanup = site.wait_jobs(3)[2]
    assert cleanup[1:4] == ("CLEANUP", 11, "done"), cleanup
    assert step(site, cleanup[0], STOP)[0] == "done"
    assert real_hub.server("student11") is None
    assert real_hub.answers("student11") is None
    assert real_hub.wait_for(lambda: real_hub.pid_of("student11") is None, 5), "the student's server still runs"

    # CLEANUP of a student whose server is not running (the hub answers 204 today) is fine.
    send(daemon, "CLEANUP 11 c11")
    assert site.wait_jobs(4)[3][3] == "done"


def test_purge_stops_the_server(site: Site, real_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]) -> None:
    use_hub(site, real_hub)
    daemon = daemon_factory()
    send(daemon, "CREATE 12 c12")
    site.wait_jobs(1)
    assert real_hub.ready("student12")

    send(daemon, "PURGE 12 c12")
    purge = site.wait_jobs(2)[1]
    assert purge[1:4] == ("PURGE", 12, "done"), purge
    assert step(site, purge[0], STOP)[:2] == ("done", "stopped")
    assert step(site, purge[0], "end JupyterHub logins")[:2] == ("done", "signed out (hub user deleted and made again)")
    assert real_hub.server("student12") is None and real_hub.user("student12") is not None


async def test_ending_logins_makes_a_new_user_row_and_keeps_what_the_api_cannot_give_back(
    real_hub: RealJupyterHub,
) -> None:
    """The user is made again (a new row: the hub's login cookies are keyed to it); a user
    the hub does not have has no login to end; an admin user (the stand-in's: wodmail's
    token may not make one on the real hub) is kept as it was, and the outcome says so."""
    name = "student18"
    assert real_hub.api("POST", f"/users/{name}").status_code == 201
    try:
        created = (real_hub.user(name) or {})["created"]
        async with HttpClient() as client:
            hub = Hub(real_hub.url, real_hub.token, client)
            assert (await hub.sign_out(name)).startswith("signed out")
            assert (real_hub.user(name) or {})["created"] != created
            assert await hub.sign_out("student19") == "no such hub user: no login to end"
            with JupyterHubStandin(users=[name]) as standin:
                standin.admins.add(name)
                kept = await Hub(standin.url, standin.token, client).sign_out(name)
                assert kept == "not signed out: the hub user has admin rights, which the API cannot give back", kept
                assert standin.deleted == [] and standin.users == [name]
    finally:
        real_hub.api("DELETE", f"/users/{name}")


def test_missing_hub_user_is_created_when_the_location_says_so(
    site: Site, real_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]
) -> None:
    assert real_hub.user("student901") is None
    use_hub(site, real_hub, HUBCREATEUSERS=True)
    daemon = daemon_factory()
    send(daemon, "CREATE 901 c901")
    (job,) = site.wait_jobs(1)
    assert job[3] == "done", job
    assert step(site, job[0], START)[:2] == ("done", "started (user created)")
    assert real_hub.ready("student901")


def test_missing_hub_user_fails_the_job_naming_the_user(
    site: Site, real_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]
) -> None:
    use_hub(site, real_hub)
    daemon = daemon_factory()
    send(daemon, "CREATE 902 c902")
    (job,) = site.wait_jobs(1)
    assert job[3] == "failed"
    assert "JupyterHub has no user student902" in job[4] and "HUBCREATEUSERS" in job[4]
    assert real_hub.user("student902") is None
    # The rest of CREATE was done: the home is there for when the hub knows the student.
    assert (site.home(902) / "WKSHP-Sample").is_dir()


def test_wrong_token_fails_clearly_and_never_shows(
    site: Site, real_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]
) -> None:
    wrong = "not-the-hub-token-" + real_hub.token[:6][::-1]
    site.values.update(JPHUBAPISRV=real_hub.url, JPHUBTOKEN=wrong)
    daemon = daemon_factory()
    send(daemon, "CREATE 13 c13")
    (job,) = site.wait_jobs(1)
    assert job[3] == "failed"
    assert "answered 403" in job[4] and "JPHUBTOKEN" in job[4]
    assert wrong not in job[4] and wrong not in daemon.logs()
    assert real_hub.server("student13") is None


def test_a_burst_of_100_creates_starts_100_servers(
    site: Site, real_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon], record_property: Callable[..., None]
) -> None:
    use_hub(site, real_hub)
    daemon = daemon_factory()
    began = time.monotonic()
    with daemon.smtp() as client:
        for stdid in BURST:
            message = f"Subject: CREATE {stdid} c{stdid}\r\n\r\nWKSHP-Sample\r\n"
            client.sendmail("wod@example.com", ["jupyter@example.com"], message.encode())
    jobs = site.wait_jobs(len(BURST), timeout=240)
    wall = time.monotonic() - began
    assert [job[3] for job in jobs] == ["done"] * len(BURST), [job for job in jobs if job[3] != "done"][:5]
    assert all(real_hub.ready(name) for name in students(BURST))

    with site.db() as conn:
        starts = [row[0] for row in conn.execute("SELECT finished - started FROM steps WHERE name = ?", (START,))]
    assert len(starts) == len(BURST)
    starts.sort()
    median, p95 = statistics.median(starts), starts[int(0.95 * len(starts)) - 1]
    figures = f"hub start (POST until ready) in a burst of {len(starts)}: median {median:.3f} s, p95 {p95:.3f} s"
    figures += f", max {starts[-1]:.3f} s; burst done in {wall:.1f} s"
    record_property("hub_start_median_s", round(median, 4))
    record_property("hub_start_p95_s", round(p95, 4))
    print(figures)


# -- pending spawns and the concurrent spawn limit -----------------------------------------


def test_a_pending_spawn_is_followed_until_ready(
    site: Site, throttled_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]
) -> None:
    throttled_hub.set_spawn_delay(1.0, "student31")
    use_hub(site, throttled_hub)
    daemon = daemon_factory()
    send(daemon, "CREATE 31 c31")
    (job,) = site.wait_jobs(1)
    assert job[3] == "done", job
    state, result, _error, seconds = step(site, job[0], START)
    assert state == "done" and result is not None and result.startswith("ready after pending"), result
    assert seconds >= 0.9
    assert throttled_hub.ready("student31")


def test_a_pending_stop_is_followed_until_stopped(
    site: Site, throttled_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]
) -> None:
    throttled_hub.set_stop_delay(1.0, "student34")
    use_hub(site, throttled_hub)
    daemon = daemon_factory()
    send(daemon, "CREATE 34 c34")
    site.wait_jobs(1)  # a PURGE arriving while the CREATE still waits would supersede it
    send(daemon, "PURGE 34 c34")
    _create, purge = site.wait_jobs(2)
    assert purge[3] == "done", purge
    state, result, _error, seconds = step(site, purge[0], STOP)
    assert state == "done" and result is not None and result.startswith("stopped after pending"), result
    assert seconds >= 0.9
    assert throttled_hub.server("student34") is None and throttled_hub.pid_of("student34") is None


async def test_a_start_during_a_pending_stop_waits_for_the_stop(throttled_hub: RealJupyterHub) -> None:
    name = "student35"
    async with HttpClient() as client:
        hub = Hub(throttled_hub.url, throttled_hub.token, client)
        assert (await hub.start(name)).startswith("ready after pending")
        throttled_hub.set_stop_delay(1.0, name)
        assert throttled_hub.api("DELETE", f"/users/{name}/server").status_code == 202
        result = await hub.start(name)  # the hub answers 400 "student35 is pending stop" first
    assert result.startswith("ready after pending") and result.endswith("(waited for pending stop)"), result
    assert throttled_hub.ready(name)


def test_a_spawn_slower_than_hubspawntimeout_fails_the_job(
    site: Site, throttled_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]
) -> None:
    throttled_hub.set_spawn_delay(30.0, "student32")
    use_hub(site, throttled_hub, HUBSPAWNTIMEOUT=1)
    daemon = daemon_factory()
    try:
        send(daemon, "CREATE 32 c32")
        (job,) = site.wait_jobs(1)
        assert job[3] == "failed"
        assert "student32's server was still starting" in job[4] and "HUBSPAWNTIMEOUT is 1 s" in job[4], job[4]
        assert (throttled_hub.server("student32") or {}).get("pending") == "spawn"
    finally:
        throttled_hub.stop_server("student32")  # cancels the spawn; frees the hub's spawn slot


def test_a_failed_spawn_is_retried_then_fails_with_the_hubs_reason(
    site: Site, throttled_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]
) -> None:
    # The student's server dies at start: the hub answers 202, waits its http_timeout for
    # the server, gives up; wodmail, following the spawn, reads why from the hub's progress.
    throttled_hub.set_spawn_failure("student33")
    site.values.update(RETRYFOR=1, RETRYBACKOFFMAX=0.5)
    use_hub(site, throttled_hub)
    daemon = daemon_factory()
    send(daemon, "CREATE 33 c33")
    (job,) = site.wait_jobs(1)
    assert job[3] == "failed"
    assert job[4].startswith("gave up after 1 s: JupyterHub could not start student33's server: Spawn failed:"), job[4]
    assert "didn't respond in 4 seconds" in job[4], job[4]
    assert throttled_hub.server("student33") is None


def test_throttled_starts_are_retried_and_all_succeed(
    site: Site, throttled_hub: RealJupyterHub, daemon_factory: Callable[[], Daemon]
) -> None:
    throttled = range(41, 46)
    for name in students(throttled):
        throttled_hub.set_spawn_delay(0.5, name)
    use_hub(site, throttled_hub)
    daemon = daemon_factory()
    for stdid in throttled:
        send(daemon, f"CREATE {stdid} c{stdid}")
    jobs = site.wait_jobs(len(throttled), timeout=60)
    assert [job[3] for job in jobs] == ["done"] * len(throttled), jobs
    results = [step(site, job[0], START)[1] or "" for job in jobs]
    assert sum("throttled" in result for result in results) >= 2, results
    assert "pending spawns, throttling" in throttled_hub.log()
    assert all(throttled_hub.ready(name) for name in students(throttled))


async def test_throttling_longer_than_hubthrottlewait_is_transient(throttled_hub: RealJupyterHub) -> None:
    slow = ["student51", "student52"]  # two slow spawns fill the hub's 2 spawn slots
    for name in slow:
        throttled_hub.set_spawn_delay(30.0, name)
        assert throttled_hub.api("POST", f"/users/{name}/server").status_code == 202
    try:
        async with HttpClient() as client:
            hub = Hub(throttled_hub.url, throttled_hub.token, client, throttle_wait=1.5)
            began = time.monotonic()
            with pytest.raises(TransientError) as caught:
                await hub.start("student53")
        assert time.monotonic() - began < 5
        message = str(caught.value)
        assert "429" in message and "HUBTHROTTLEWAIT is 1.5 s" in message, message
        assert throttled_hub.token not in message
    finally:
        for name in slow:
            throttled_hub.stop_server(name)


# -- errors that say what they are ----------------------------------------------------------


async def test_a_hub_that_is_not_there_is_transient_and_the_token_never_shows() -> None:
    token = "a-secret-hub-token-1234"
    async with HttpClient() as client:
        hub = Hub(f"http://127.0.0.1:{free_port()}", token, client)
        for call in (hub.start, hub.stop):
            with pytest.raises(TransientError) as caught:
                await call("student1")
            assert "cannot reach JupyterHub" in str(caught.value) and token not in str(caught.value)


async def test_hub_keys_are_checked(site: Site) -> None:
    site.values.update(JPHUBAPISRV="http://127.0.0.1:1", JPHUBTOKEN="t")
    client = HttpClient()
    for key, value, reason in [
        ("HUBSPAWNTIMEOUT", "soon", "expected a number of seconds"),
        ("HUBSPAWNTIMEOUT", 0, "must be at least"),
        ("HUBCREATEUSERS", "yes", "expected true or false"),
        ("HUBTHROTTLEWAIT", -1, "must be at least"),
    ]:
        site.values[key] = value
        with pytest.raises(ConfigError) as caught:  # the location's loader checks every key
            Hub.from_location(load_location(site.write()), client)
        assert caught.value.key == key and reason in caught.value.reason
        del site.values[key]
    site.values.update(HUBSPAWNTIMEOUT=5, HUBCREATEUSERS=True, HUBTHROTTLEWAIT=0)
    hub = Hub.from_location(load_location(site.write()), client)
    await client.aclose()
    assert hub is not None and (hub.spawn_timeout, hub.create_users, hub.throttle_wait) == (5.0, True, 0.0)


# -- what only older hubs answered (the stand-in) -------------------------------------------


async def test_older_hub_answers_to_stop() -> None:
    with JupyterHubStandin(users=["student1", "student2"]) as standin:
        standin.stop_not_running_status = 400  # "student1 is not running" (JupyterHub < 1.0)
        standin.spawn_delay = 0.5
        async with HttpClient() as client:
            hub = Hub(standin.url, standin.token, client)
            assert await hub.stop("student1") == "not running"
            assert await hub.stop("nobody") == "not running (no such hub user)"
            # An older hub refuses to stop a pending spawn (400 "... is pending spawn"):
            # wodmail waits for the spawn to end, then stops the server.
            answer = await client.post(
                f"{standin.url}/hub/api/users/student2/server", headers={"Authorization": f"token {standin.token}"}
            )
            assert answer.status_code == 202
            assert await hub.stop("student2") == "stopped (waited for pending spawn)"
            assert standin.phase("student2") == "stopped"
