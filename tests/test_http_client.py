"""wodmail's HTTP client against servers that misbehave, and the outbox's answer to them.

Every answer a broken or hostile server can give is either read correctly or turned into a
clear transport error (wodmail.httpanswer), which the adapters make a TransientError: the outbox keeps the
callback and tries again later with backoff. Nothing escapes, nothing unsafe is sent.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.conftest import Site
from tests.misbehaving_http import MisbehavingServer, Script, drip, ok_json
from tests.standins import RegistrationApp as AppStandin
from wodmail import callbacks, queue
from wodmail.command import parse_command
from wodmail.errors import ConfigError, StepFailed, TransientError
from wodmail.httpanswer import ConnectError, ReadTimeout, RedirectRefused, RemoteProtocolError, TransportError
from wodmail.hub import Hub
from wodmail.inbound import InboundMail
from wodmail.location import load_location
from wodmail.outbox import Outbox
from wodmail.passwords import PasswordMint
from wodmail.queue import Callback
from wodmail.regapp import RegistrationApp
from wodmail.transport import HttpClient, UnsafeRequest

BODY = b'{"ok": true}'

# -- answers read correctly --------------------------------------------------------------------

CORRECT: dict[str, tuple[Script, Literal["keep", "close"]]] = {
    "1xx before the final answer": (
        [
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
            0.05,
            b"HTTP/1.1 102 Processing\r\n\r\n",
            ok_json(),
        ],
        "keep",
    ),
    "close-delimited body in pieces": (
        [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", b'{"ok"', 0.1, b": tr", 0.1, b"ue}"],
        "close",
    ),
    "chunks with extensions, upper-case hex and trailers": (
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5;name=value\r\n" + BODY[:5] + b"\r\n",
            0.05,
            b"7\r\n" + BODY[5:] + b"\r\n0;last\r\nX-Trailer: t\r\n\r\n",
        ],
        "keep",
    ),
    "chunks one byte each": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
        + [b"1\r\n" + bytes([byte]) + b"\r\n" for byte in BODY]
        + [b"0\r\n\r\n"],
        "keep",
    ),
    "a 4 KB header": (
        [b"HTTP/1.1 200 OK\r\nX-Small: " + b"a" * 4000 + b"\r\n" + ok_json().split(b"\r\n", 1)[1]],
        "keep",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRECT))
async def test_odd_but_valid_answers_are_read_correctly(case: str) -> None:
    script, then = CORRECT[case]
    with MisbehavingServer(script, then=then) as server:
        client = HttpClient(timeout=5.0)
        try:
            for _ in range(3):  # the next answer on the same client is the right one too
                answer = await client.request("PUT", f"{server.url}/api/customer/1", json={"active": "true"})
                assert (answer.status_code, answer.json()) == (200, {"ok": True})
        finally:
            await client.aclose()
        assert len(server.requests) == 3
        assert all(request.startswith(b"PUT /api/customer/1 HTTP/1.1\r\n") for request in server.requests)
        if then == "keep":
            assert server.connections == 1  # 1xx and chunks did not cost the kept connection


async def test_an_answer_gives_its_fields_without_regard_to_case_and_its_text_in_its_charset() -> None:
    text = "Grüße, 5 € to pay".encode("iso-8859-15")
    head = (
        b'HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset="ISO-8859-15"\r\n'
        b"Retry-After: 3\r\nX-Seen: one\r\nx-seen: two\r\nContent-Length: %d\r\n\r\n" % len(text)
    )
    plain_utf8 = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\n\xc3\xa9\xff!"
    routes = {b"GET /hub ": [head + text], b"GET /again ": [plain_utf8], b"GET /third ": [ok_json(b"not json")]}
    with MisbehavingServer([], routes=routes) as server:
        client = HttpClient(timeout=5.0)
        try:
            answer = await client.get(f"{server.url}/hub")
            second = await client.get(f"{server.url}/again")
            third = await client.get(f"{server.url}/third")
        finally:
            await client.aclose()
    assert (answer.status_code, answer.content) == (429, text)
    assert answer.headers.get("retry-after") == answer.headers["RETRY-AFTER"] == "3"
    assert answer.headers.get("X-SEEN") == "one, two" and answer.headers.get_list("x-seen") == ["one", "two"]
    assert "content-length" not in answer.headers and answer.headers.get("Nope", "") == ""  # wire framing left out
    assert sorted(answer.headers) == ["content-type", "retry-after", "x-seen"]
    assert answer.text == "Grüße, 5 € to pay"
    with pytest.raises(ValueError):
        answer.json()
    assert second.text == "é\ufffd!"  # no charset: UTF-8, an undecodable byte replaced
    with pytest.raises(ValueError):
        third.json()


# -- answers that are errors -------------------------------------------------------------------

HEAD = b"HTTP/1.1 200 OK\r\n"
BROKEN = {
    "giant status code": ([b"HTTP/1.1 20000000000000000000 OK\r\nContent-Length: 12\r\n\r\n" + BODY], "status"),
    "four-digit status code": ([b"HTTP/1.1 2000 OK\r\nContent-Length: 12\r\n\r\n" + BODY], "status"),
    "conflicting Content-Length": (
        [HEAD + b"Content-Length: 5\r\nContent-Length: 12\r\n\r\n" + BODY],
        "Content-Length",
    ),
    "Content-Length with chunked": (
        [HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nC\r\n" + BODY + b"\r\n0\r\n\r\n"],
        "Content-Length",
    ),
    "header over 64 KiB": ([HEAD + b"X-Big: " + b"a" * (65 * 1024) + b"\r\n\r\n"], "8190 bytes"),
    "header block over 64 KiB in small lines": (
        [HEAD + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 500) for i in range(140)) + b"\r\n"],
        "malformed answer",
    ),
    "bad chunk size": ([HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"], "chunk size"),
    "chunk without its CRLF": ([HEAD + b"Transfer-Encoding: chunked\r\n\r\nC\r\n" + BODY + b"XX0\r\n\r\n"], "chunk"),
    "chunked body cut short": ([HEAD + b"Transfer-Encoding: chunked\r\n\r\n50\r\n" + BODY], "malformed body"),
    "body shorter than Content-Length": ([HEAD + b"Content-Length: 50\r\n\r\n" + BODY], "malformed body"),
    "no status line at all": ([BODY], "status line"),
    "closed before answering": ([], "closed the connection"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_malformed_answers_are_clear_transport_errors(case: str) -> None:
    script, says = BROKEN[case]
    with MisbehavingServer(script) as server:
        client = HttpClient(timeout=5.0)
        try:
            began = time.monotonic()
            with pytest.raises(TransportError) as caught:
                await client.request("PUT", f"{server.url}/api/customer/1", json={"active": "true"})
            assert time.monotonic() - began < 4  # an error at once, not a time-out
        finally:
            await client.aclose()
    message = str(caught.value)
    assert says in message and server.url.removeprefix("http://") in message
    assert "\n" not in message and len(message) < 400


async def test_a_dripping_server_cannot_hold_a_call_past_its_deadline() -> None:
    # One byte every 0.1 s: every read succeeds; only a deadline for the whole call ends it.
    with MisbehavingServer(drip(ok_json(), 0.1)) as server:
        client = HttpClient(timeout=1.0)
        try:
            began = time.monotonic()
            with pytest.raises(ReadTimeout) as caught:
                await client.request("PUT", f"{server.url}/api/customer/1", json={"active": "true"})
            assert 0.9 < time.monotonic() - began < 3
            assert "no complete answer to PUT" in str(caught.value)
        finally:
            await client.aclose()


async def test_a_huge_body_is_not_read_past_the_limit() -> None:
    big = b"[" + b"0," * 2000 + b"0]"
    with MisbehavingServer([HEAD + b"Content-Length: %d\r\n\r\n" % len(big) + big]) as server:
        with MisbehavingServer([HEAD + b"\r\n" + big]) as undeclared:
            client = HttpClient(timeout=5.0, max_body=1000)
            try:
                for url in (server.url, undeclared.url):
                    with pytest.raises(RemoteProtocolError, match="byte limit"):
                        await client.get(url + "/api/workshops")
            finally:
                await client.aclose()


# -- the outbox backs off ----------------------------------------------------------------------

LOGIN = {b"POST /api/login ": [ok_json(b'{"accessToken": "tok-123"}')]}
OUTBOX_CASES: dict[str, tuple[Script, str]] = {
    "giant status code": ([b"HTTP/1.1 20000000000000000000 OK\r\nContent-Length: 12\r\n\r\n" + BODY], "status"),
    "conflicting Content-Length": (
        [HEAD + b"Content-Length: 5\r\nContent-Length: 12\r\n\r\n" + BODY],
        "Content-Length",
    ),
    "header over 64 KiB": ([HEAD + b"X-Big: " + b"a" * (65 * 1024) + b"\r\n\r\n"], "malformed answer"),
    "chunked body cut short": ([HEAD + b"Transfer-Encoding: chunked\r\n\r\n50\r\n" + BODY], "malformed body"),
    "slow drip": (drip(ok_json(), 0.2), "no complete answer"),
}


def queued_callback(tmp_path: Path, callback: Callback) -> tuple[Path, queue.Writer]:
    """A queue with one job whose step left `callback` in the outbox."""
    db_path = queue.open_database(tmp_path / "state")
    writer = queue.Writer(db_path)
    raw = b"Subject: CLEANUP 12 4242\n\nWKSHP-Sample\n"
    command = parse_command(raw)
    job = writer.run_sync(queue.enqueue(command, InboundMail("smtp", "127.0.0.1", "app@example.com", raw)))
    writer.run_sync(queue.step_done(job.job_id, 12, "report", time.time(), callbacks=[callback]))
    return db_path, writer


async def run_outbox_until(outbox: Outbox, db_path: Path, done: Any, timeout: float = 10.0) -> queue.OutboxEntry:
    """Run `outbox` until the one entry satisfies `done`; the task must not have failed."""
    task = asyncio.create_task(outbox.run())
    reader = queue.connect(db_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            (entry,) = [
                queue.outbox_from_row(row) for row in reader.execute(f"SELECT {queue.OUTBOX_COLUMNS} FROM outbox")
            ]
            if done(entry) or time.monotonic() > deadline:
                break
            assert not task.done(), "the outbox stopped"
            await asyncio.sleep(0.02)
        await outbox.wait_idle()
        assert not task.done(), "the outbox stopped"
        return entry
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        reader.close()
        outbox.close()


@pytest.mark.parametrize("case", sorted(OUTBOX_CASES))
async def test_the_outbox_backs_off_from_a_misbehaving_app(tmp_path: Path, case: str) -> None:
    script, says = OUTBOX_CASES[case]
    db_path, writer = queued_callback(tmp_path, callbacks.customer("4242", cleaned="true"))
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    with MisbehavingServer(script, routes=LOGIN) as server:
        client = HttpClient(timeout=1.0)
        app = RegistrationApp(server.url + "/api", "wod", "secret-api-pw", client)
        outbox = Outbox(db_path, writer, app, PasswordMint.for_state_dir(tmp_path / "state"), backoff_cap=60)
        began = time.time()
        try:
            entry = await run_outbox_until(outbox, db_path, lambda entry: entry.attempts >= 1)
        finally:
            await client.aclose()
            writer.close()
    assert entry.state == "pending" and entry.attempts == 1
    assert entry.next_attempt >= began + 0.5  # backoff: not again at once
    assert entry.last_error is not None and says in entry.last_error
    assert "tok-123" not in entry.last_error and "secret-api-pw" not in entry.last_error
    assert [request.split(b" ", 2)[:2] for request in server.requests] == [
        [b"POST", b"/api/login"],
        [b"PUT", b"/api/customer/4242"],
    ]
    assert errors == []


async def test_a_callback_that_cannot_be_sent_safely_is_set_aside_unsent(tmp_path: Path) -> None:
    # A row written before paths were checked: its path holds CR LF and a second request.
    smuggled = Callback("PUT", "/customer/1 HTTP/1.1\r\nHost: x\r\n\r\nPUT /student/9", {"active": "false"})
    db_path, writer = queued_callback(tmp_path, smuggled)
    with MisbehavingServer([ok_json()], then="keep", routes=LOGIN) as server:
        client = HttpClient(timeout=2.0)
        app = RegistrationApp(server.url + "/api", "wod", "secret-api-pw", client)
        outbox = Outbox(db_path, writer, app, PasswordMint.for_state_dir(tmp_path / "state"))
        try:
            entry = await run_outbox_until(outbox, db_path, lambda entry: entry.state != "pending")
        finally:
            await client.aclose()
            writer.close()
    assert entry.state == "failed" and entry.last_error is not None and "control character" in entry.last_error
    assert not any(request.startswith(b"PUT") for request in server.requests)


# -- what is refused before sending -------------------------------------------------------------


async def test_control_characters_are_refused_before_anything_is_sent() -> None:
    with MisbehavingServer([ok_json()], then="keep") as server:
        client = HttpClient()
        try:
            for method, url, headers in [
                ("PUT", f"{server.url}/api/customer/1\r\nX-Injected: 1", {}),
                ("PUT", f"{server.url}/api/customer/1", {"x-access-token": "s3cr3t\r\nX-Injected: 1"}),
                ("PUT", f"{server.url}/api/customer/1", {"x-access-token": "s3cr3t\nX-Injected: 1"}),
                ("PUT", f"{server.url}/api/customer/1", {"X-Bad\r\nName": "v"}),
                ("PUT", f"{server.url}/api/customer/1", {"x-access-token": "s3cr3t\x00"}),
                ("PUT /x HTTP/1.1\r\n", f"{server.url}/api/customer/1", {}),
            ]:
                with pytest.raises(UnsafeRequest) as caught:
                    await client.request(method, url, json={"a": "b"}, headers=headers)
                assert isinstance(caught.value, StepFailed)  # permanent: not retried as it is
                assert "s3cr3t" not in str(caught.value)  # a header's value is never shown
        finally:
            await client.aclose()
        assert server.connections == 0


def test_callback_paths_are_single_segments_and_refuse_control_characters() -> None:
    assert callbacks.customer("4242", active="true").path == "/customer/4242"
    assert callbacks.customer("a/../workshop/3?x=1", active="true").path == "/customer/a%2F..%2Fworkshop%2F3%3Fx%3D1"
    for bad in ("12\r\nPURGE 3 4", "12\n", "", "\x7f"):
        with pytest.raises(StepFailed, match="customer id"):
            callbacks.customer(bad, active="true")


async def test_a_login_token_with_a_line_break_is_never_sent() -> None:
    routes = {b"POST /api/login ": [ok_json(b'{"accessToken": "tok\\r\\nX-Injected: 1"}')]}
    with MisbehavingServer([ok_json()], then="keep", routes=routes) as server:
        client = HttpClient(timeout=2.0)
        try:
            app = RegistrationApp(server.url + "/api", "wod", "pw", client)
            with pytest.raises(TransientError, match="control character"):
                await app.request("PUT", "/customer/1", {"active": "true"})
        finally:
            await client.aclose()
    assert [request.split(b" ", 1)[0] for request in server.requests] == [b"POST"]


async def test_a_hub_token_with_a_line_break_is_a_configuration_error(site: Site) -> None:
    site.values.update(JPHUBAPISRV="http://127.0.0.1:1", JPHUBTOKEN="abc\r\nX-Injected: 1")
    client = HttpClient()
    with pytest.raises(ConfigError) as caught:
        Hub.from_location(load_location(site.write()), client)
    assert caught.value.key == "JPHUBTOKEN" and "abc" not in str(caught.value)


# -- redirects, TLS, connection reuse ---------------------------------------------------------


async def test_redirects_are_followed_on_the_same_host_only() -> None:
    with MisbehavingServer([ok_json(b'{"at": "elsewhere"}')], then="keep") as elsewhere:
        other = elsewhere.url.replace("127.0.0.1", "localhost")
        routes = {
            b"PUT /old ": [b"HTTP/1.1 308 Permanent Redirect\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n"],
            b"PUT /away ": [
                b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + other.encode() + b"/x\r\nContent-Length: 0\r\n\r\n"
            ],
            b"PUT /port ": [
                b"HTTP/1.1 302 Found\r\nLocation: " + elsewhere.url.encode() + b"/x\r\nContent-Length: 0\r\n\r\n"
            ],
            b"PUT /loop ": [b"HTTP/1.1 307 Again\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n"],
        }
        with MisbehavingServer([ok_json(b'{"at": "new"}')], then="keep", routes=routes) as server:
            client = HttpClient(timeout=5.0)
            try:
                answer = await client.request(
                    "PUT", f"{server.url}/old", json={"v": 1}, headers={"x-access-token": "t"}
                )
                assert answer.json() == {"at": "new"}
                new = server.requests[1]
                assert new.startswith(b"PUT /new ") and new.endswith(b'{"v":1}') and b"x-access-token: t" in new
                for path, says in [("/away", "another host"), ("/port", "another host"), ("/loop", "more than")]:
                    with pytest.raises(RedirectRefused, match=says):
                        await client.request(
                            "PUT", f"{server.url}{path}", json={"v": 1}, headers={"x-access-token": "t"}
                        )
            finally:
                await client.aclose()
        assert elsewhere.requests == []  # the token never went to the other host


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_certificates_are_verified_by_default(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ok_json())
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    try:
        client = HttpClient(timeout=5.0)
        try:
            with pytest.raises(ConnectError, match="not trusted"):
                await client.get(url)
        finally:
            await client.aclose()
        trusting = HttpClient(timeout=5.0, ssl_context=ssl.create_default_context(cafile=str(cert)))
        try:
            assert (await trusting.get(url)).json() == {"ok": True}
        finally:
            await trusting.aclose()
    finally:
        server.close()
        await server.wait_closed()


async def test_connections_are_reused_for_a_burst_of_callbacks() -> None:
    with AppStandin() as standin:
        client = HttpClient()
        try:
            app = RegistrationApp(standin.url, standin.username, standin.password, client)
            for _ in range(3):
                await asyncio.gather(*(app.request("PUT", f"/customer/{i}", {"active": "true"}) for i in range(8)))
                await asyncio.gather(*(app.request("PUT", f"/student/{i}", {"assigned": "true"}) for i in range(8)))
        finally:
            await client.aclose()
        assert len(standin.puts()) == 48
        assert standin.connections_accepted <= 9  # one login, then at most 8 at once, kept alive
        assert standin.state()["customer"]["3"] == {"active": "true"}
