"""Metrics and the status page (METRICSPORT): a real daemon, real commands over SMTP, the
scrape read with prometheus-client's own parser, the page in a real headless Chromium.

One daemon for the module: a story of nine mails (created, cleaned, refused, a copy, a job
the hub fails, a callback the app refuses until it is set aside), then what the port says
about it, compared with what the queue holds.
"""

from __future__ import annotations

import html.parser
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon, Site, same_secret, with_app, with_hub
from tests.ports import free_port
from tests.standins import JupyterHubStandin, RegistrationApp
from tests.students import make_accounts, remove_accounts, require_root
from wodmail.errors import ConfigError
from wodmail.location import load_location

TOKEN = "status-token-" + os.urandom(12).hex()
TOKEN_ENV = "WODMAIL_TEST_METRICSTOKEN"


class Story:
    def __init__(self, site: Site, daemon: Daemon, app: RegistrationApp, hub: JupyterHubStandin) -> None:
        self.site, self.daemon, self.app, self.hub = site, daemon, app, hub
        self.port = site.values["METRICSPORT"]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.site.db() as conn:
            return conn.execute(sql, args).fetchall()


def start_with_metrics(site: Site) -> Daemon:
    """The daemon, once its metrics port listens (a port free_port() gave may be taken by
    someone else before the daemon binds it: then again on another)."""
    for _ in range(3):
        daemon = Daemon(site)
        seen = daemon.log.stat().st_size if daemon.log.exists() else 0  # this start's lines only
        daemon.start(env={TOKEN_ENV: TOKEN})
        deadline = time.monotonic() + 10
        while "metrics and status page on" not in daemon.logs()[seen:] and "cannot serve" not in daemon.logs()[seen:]:
            assert time.monotonic() < deadline, daemon.logs()[-2000:]
            time.sleep(0.05)
        if "cannot serve the metrics" not in daemon.logs()[seen:]:
            return daemon
        daemon.stop()
        site.values["METRICSPORT"] = free_port()
    raise AssertionError(daemon.logs()[-2000:])


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    site = Site(tmp_path_factory.mktemp("status"))
    with RegistrationApp() as app, JupyterHubStandin(auto_create_users=True) as hub:
        with_app(site, app)
        with_hub(site, hub)
        site.values.update(
            METRICSPORT=free_port(), METRICSHOST="0.0.0.0", METRICSTOKEN=f"env:{TOKEN_ENV}", CALLBACKBACKOFFMAX=0.2
        )
        daemon = start_with_metrics(site)
        try:
            hub.fail_next(100, 403, path_prefix="/hub/api/users/student5/")
            app.fail_next(5, 422, path_prefix="/customer/c7")
            for subject, body in [
                ("CREATE 1 c1 one@example.com", "WKSHP-Sample"),
                ("CREATE 2 c2", "WKSHP-Sample"),
                ("CREATE 3 c3", "WKSHP-Sample"),
                ("CREATE 1001 c1001", "CHLG-Sample"),
                ("CREATE 5 c5", "WKSHP-Sample"),  # the hub refuses: the job fails
                ("CREATE 7 c7", "WKSHP-Sample"),  # the app refuses its customer callback: set aside
            ]:
                assert daemon.send(subject, body)[0] == 250
            site.wait_jobs(6)
            assert daemon.send("CLEANUP 2 c2", "WKSHP-Sample")[0] == 250
            assert daemon.send("CLEANUP 2 c2", "WKSHP-Sample")[0] == 250  # a copy: not queued again
            assert daemon.send("CREATE 5000 c5000", "WKSHP-Sample")[0] == 554  # outside the range
            site.wait_jobs(7)
            story = Story(site, daemon, app, hub)
            deadline = time.monotonic() + 20
            while story.query("SELECT count(*) FROM outbox WHERE state = 'pending'")[0][0]:
                assert time.monotonic() < deadline, story.query("SELECT id, path, state FROM outbox")
                time.sleep(0.05)
            yield story
        finally:
            daemon.stop()


def fetch(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def scrape(story: Story) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    status, body = fetch(story.url("/metrics"))
    assert status == 200, body
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by(samples: dict[tuple[tuple[str, str], ...], float], *names: str) -> dict[Any, float]:
    """A metric's samples keyed by the values of its labels `names` (one name: the value)."""
    keyed: dict[Any, float] = {}
    for labels, value in samples.items():
        found = dict(labels)
        key = tuple(found[name] for name in names)
        keyed[key[0] if len(names) == 1 else key] = value
    return keyed


def test_the_metrics_are_the_queues_figures(story: Story) -> None:
    # The jobs process publishes its counts once a second: wait for the last job's end.
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(story)
        done = by(samples.get("wodmail_commands_done_total", {}), "verb", "state")
        if sum(done.values()) >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    states = dict(story.query("SELECT state, count(*) FROM jobs GROUP BY state"))
    assert states == {"done": 6, "failed": 1}
    assert {state: count for state, count in by(samples["wodmail_jobs"], "state").items() if count} == states
    by_verb = {
        (verb, state): count
        for verb, state, count in story.query("SELECT verb, state, count(*) FROM jobs GROUP BY verb, state")
    }
    assert by(samples["wodmail_jobs_by_verb"], "verb", "state") == by_verb
    assert done == {key: count for key, count in by_verb.items() if key[1] in ("done", "failed")}

    received = by(samples["wodmail_commands_received_total"], "verb", "door", "outcome")
    assert received == {
        ("CREATE", "smtp", "queued"): 6,
        ("CLEANUP", "smtp", "queued"): 1,
        ("CLEANUP", "smtp", "duplicate"): 1,
    }
    refused = story.query("SELECT door, code FROM refused")
    assert refused == [("smtp", 554)]
    assert by(samples["wodmail_commands_refused_total"], "door", "reason") == {("smtp", "bad_command"): 1}

    outbox = dict(story.query("SELECT state, count(*) FROM outbox GROUP BY state"))
    assert outbox.get("failed") == 1 and "pending" not in outbox
    callbacks = by(samples["wodmail_callbacks"], "state")
    assert callbacks == {state: outbox.get(state, 0) for state in callbacks}
    assert samples["wodmail_callbacks_waiting"][()] == 0
    assert samples["wodmail_needing_operator"][()] == 2  # the failed job, the callback set aside

    assert by(samples["wodmail_students_active"], "workshop") == {
        "WKSHP-Sample": 3,  # students 1, 3 and 7 (2 was cleaned up, 5 failed)
        "CHLG-Sample": 1,
        "WKSHP-SampleReset": 0,
    }

    # Every step the jobs ran through the journal, once per job, in the histogram.
    steps = {
        (verb, step): count
        for verb, step, count in story.query(
            "SELECT verb, name, count(*) FROM steps JOIN jobs ON jobs.id = steps.job_id WHERE steps.state = 'done'"
            " GROUP BY verb, name"
        )
    }
    counts = by(samples["wodmail_step_duration_seconds_count"], "verb", "step")
    assert ("CREATE", "deploy workshop") in counts and ("CLEANUP", "erase home") in counts
    assert {key: steps.get(key) for key in counts} == counts
    infinite = by(samples["wodmail_step_duration_seconds_bucket"], "verb", "step", "le")
    assert all(infinite[(*key, "+Inf")] == count for key, count in counts.items())

    connections = by(samples["wodmail_door_connections_total"], "door")
    assert connections["smtp"] >= 9 and "legacy" in connections
    assert samples["wodmail_queue_up"][()] == 1

    # The jobs process's own figures, beside the doors' (process_*): it ran seven jobs.
    jobs_pid = story.daemon.jobs_pid()
    assert samples["wodmail_jobs_process_cpu_seconds_total"][()] > 0
    assert samples["wodmail_jobs_process_resident_memory_bytes"][()] > 10 * 2**20
    started_ticks = int(Path(f"/proc/{jobs_pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot_line = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    boot = float(boot_line.split()[1])
    started = boot + started_ticks / os.sysconf("SC_CLK_TCK")
    assert abs(samples["wodmail_jobs_process_start_time_seconds"][()] - started) < 1


class _Ids(html.parser.HTMLParser):
    """The text of every element with an id, and all the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self._open: list[str | None] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("meta", "br", "line", "rect", "link"):
            self._open.append(dict(attrs).get("id"))

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("meta", "br", "line", "rect", "link") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._open and self._open[-1]:
            self.ids[self._open[-1]] = self.ids.get(self._open[-1], "") + data


def chromium(*args: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    """Headless Chromium (the Debian package), as root without its sandbox, loading only
    what the page names (it names nothing: no network is needed)."""
    binary = shutil.which("chromium")
    assert binary is not None, "the Debian package chromium is needed (scripts/test installs it)"
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-component-update",
            f"--user-data-dir={home}",
            *args,
        ],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": str(home)},
    )


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the rows of RGB(A) bytes of an 8-bit PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    size = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * size, [], bytearray(width * size)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - size] if x >= size else 0
            up, corner = previous[x], previous[x - size] if x >= size else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def test_the_status_page_in_chromium_shows_the_queues_figures_and_no_secret(story: Story, tmp_path: Path) -> None:
    screenshot = tmp_path / "status.png"
    shot = chromium(
        "--hide-scrollbars",
        "--window-size=1100,1400",
        f"--screenshot={screenshot}",
        story.url("/"),
        home=tmp_path / "browser",
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    width, height, rows = png_pixels(screenshot.read_bytes())
    assert (width, height) == (1100, 1400)
    step = 3 if len(rows[0]) == width * 3 else 4
    colours = {row[x : x + 3] for row in rows[::7] for x in range(0, len(row), step * 5)}
    white = sum(1 for row in rows[::7] for x in range(0, len(row), step * 5) if row[x : x + 3] == b"\xff\xff\xff")
    assert len(colours) > 20, "the screenshot is (nearly) blank"
    assert white < 0.97 * (len(rows[::7]) * ((width + 4) // 5)), "the screenshot is (nearly) blank"
    green = sum(1 for row in rows for x in range(0, len(row), step) if row[x : x + 3] == bytes.fromhex("01a982"))
    assert green > 500, "no bar of the charts was drawn"

    dump = chromium("--dump-dom", story.url("/"), home=tmp_path / "browser")
    assert dump.returncode == 0, dump.stderr[-2000:]
    page = _Ids()
    page.feed(dump.stdout.decode())
    ids = {key: value.strip() for key, value in page.ids.items()}

    creates = story.query(
        "SELECT count(*), count(DISTINCT json_extract(command, '$.customer')) FROM jobs WHERE verb = 'CREATE'"
    )[0]
    assert (int(ids["registrations"]), int(ids["customers"])) == creates == (6, 6)
    assert int(ids["active-workshops"]) == 4
    assert (int(ids["active-WKSHP-Sample"]), int(ids["active-CHLG-Sample"])) == (3, 1)
    for state, count in story.query("SELECT state, count(*) FROM jobs GROUP BY state"):
        assert int(ids[f"jobs-{state}"]) == count
    assert int(ids["jobs-queued"]) == int(ids["jobs-running"]) == 0
    outbox = dict(story.query("SELECT state, count(*) FROM outbox GROUP BY state"))
    assert {state: int(ids[f"callbacks-{state}"]) for state in outbox} == outbox
    assert int(ids["refused-smtp"]) == 1 and int(ids["needing-operator"]) == 2
    (failed,) = story.query("SELECT id, error FROM jobs WHERE state = 'failed'")
    text = " ".join(page.text)
    assert "student5" in text and str(failed[1])[:40] in text
    assert "/customer/c7" in text  # the callback set aside

    raw = fetch(story.url("/"))[1].decode()
    passwords = [entry["password"] for entry in story.app.state()["student"].values() if entry.get("password")]
    assert len(passwords) >= 5
    shown = raw + dump.stdout.decode()
    leaked = [
        index
        for index, secret in enumerate([TOKEN, story.app.password, story.hub.token, *passwords])
        if secret in shown
    ]  # which ones, never the values in the test's output
    assert leaked == [], "secrets in the page (0: the token, 1: APIPWD, 2: JPHUBTOKEN, then passwords)"
    assert "one@example.com" not in raw  # nor a customer's address
    assert "<script" not in raw.lower()


def host_address() -> str:
    """An address of this host that is not loopback (the one its default route leaves by)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))  # no packet is sent
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), address
    return address


def test_a_peer_off_loopback_needs_the_token(story: Story) -> None:
    address = host_address()
    for path in ("/metrics", "/"):
        status, body = fetch(story.url(path, address))
        shown = TOKEN.encode() in body
        assert status == 403 and b"METRICSTOKEN" in body and not shown
        assert fetch(story.url(path, address), token="not-" + TOKEN)[0] == 403
        assert fetch(story.url(path, address), token=TOKEN)[0] == 200
    assert fetch(story.url("/metrics"))[0] == 200  # loopback needs none
    logs = story.daemon.logs()
    logged = TOKEN in logs
    assert not logged, "the token is in the daemon's log"


ASK_AS_STUDENT = """
import sys, urllib.error, urllib.request
token = sys.stdin.read()
request = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + token} if token else {})
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


def test_a_student_on_loopback_needs_the_token(story: Story) -> None:
    """Every student has a shell on a Jupyter host and can connect from 127.0.0.1: loopback
    counts only for root and wodmail's user (LOCALPEERUSERS), as at the doors."""
    require_root()
    python = shutil.which("python3", path="/usr/bin:/bin")  # a student may not read the venv's
    assert python is not None
    try:
        student = make_accounts([8301])[8301]

        def ask(path: str, token: str) -> str:
            asked = subprocess.run(
                [
                    "setpriv",
                    f"--reuid={student.uid}",
                    f"--regid={student.gid}",
                    "--clear-groups",
                    python,
                    "-I",
                    "-c",
                    ASK_AS_STUDENT,
                    story.url(path),
                ],
                input=token,
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
                check=False,
            )  # the token on stdin, never in a process's arguments
            return asked.stdout.strip() or asked.stderr[-500:]

        assert ask("/metrics", "") == "403" and ask("/", "") == "403"
        assert ask("/metrics", TOKEN) == "200" and ask("/", TOKEN) == "200"
        assert fetch(story.url("/metrics"))[0] == 200  # root, on the same loopback
    finally:
        remove_accounts([8301])


def test_the_metrics_keys_are_checked_and_the_token_is_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site(tmp_path)
    site.values.update(METRICSPORT=site.smtp_port)
    with pytest.raises(ConfigError, match="METRICSPORT: the metrics port cannot share a door's port"):
        load_location(site.write())
    short = "tooshort-" + os.urandom(2).hex()
    site.values.update(METRICSPORT=free_port(), METRICSTOKEN=short)
    with pytest.raises(ConfigError, match="METRICSTOKEN: 13 characters: a token needs at least 16") as error:
        load_location(site.write())
    shown = short in str(error.value)
    assert not shown, "the token is in the error"
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    site.values.update(METRICSTOKEN=f"env:{TOKEN_ENV}")
    location = load_location(site.write())
    assert (location.metrics.port, location.metrics.host) == (site.values["METRICSPORT"], "127.0.0.1")
    assert same_secret(location.metrics.token, TOKEN)
    shown, withheld = TOKEN in repr(location), TOKEN in location.withheld
    assert not shown and withheld and "METRICSTOKEN" not in location.template_variables()
    del site.values["METRICSPORT"], site.values["METRICSTOKEN"]
    assert load_location(site.write()).metrics.port is None  # off unless asked
