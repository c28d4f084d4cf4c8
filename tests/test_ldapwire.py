"""wodmail's own LDAP client (wodmail.ldapwire): the bytes it writes, what it reads, and how it
copes with a real slapd and with servers that misbehave.

The story: wodmail writes the same bytes ldap3 (pyasn1) writes for the same request; it reads
slapd's answers, however their lengths are written; it sends many password changes at once on
a couple of connections and each gets its own answer; and a server that answers garbage, too
much, half a message or nothing at all costs a job a retry (TransientError), soon, never a
crash or a hang, and never shows the bind password.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.slapd import SERVICE_DN, Slapd, new_password, old_password, student_dn
from wodmail import ldapwire
from wodmail.directory import LdapDirectory
from wodmail.errors import StepFailed, TransientError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # ldap3 with pyasn1 >= 0.6
    import ldap3
    from ldap3.operation.add import add_operation
    from ldap3.operation.bind import bind_operation
    from ldap3.operation.extended import extended_operation
    from ldap3.operation.modify import modify_operation
    from ldap3.operation.unbind import unbind_operation
    from ldap3.protocol.rfc4511 import (
        LDAPDN,
        AddResponse,
        BindResponse,
        ExtendedResponse,
        LDAPMessage,
        LDAPString,
        MessageID,
        ModifyResponse,
        ProtocolOp,
        Referral,
        ResponseName,
        ResponseValue,
        ResultCode,
    )
    from pyasn1.codec.ber import encoder

BIND_SECRET = "the-bind-secret-9c1e"


def pyasn1_message(message_id: int, kind: str, operation: Any) -> bytes:
    """An LDAPMessage as ldap3 encodes it (pyasn1's BER encoder): the reference bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        message = LDAPMessage()
        message["messageID"] = MessageID(message_id)
        message["protocolOp"] = ProtocolOp().setComponentByName(kind, operation)
        return bytes(encoder.encode(message))


def pyasn1_answer(
    message_id: int,
    kind: str,
    code: int,
    message: str = "",
    matched: str = "",
    referral: list[str] | None = None,
    name: str | None = None,
    value: bytes | None = None,
) -> bytes:
    """A server's answer carrying an LDAPResult, encoded by pyasn1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        kinds = {
            "bindResponse": BindResponse,
            "modifyResponse": ModifyResponse,
            "addResponse": AddResponse,
            "extendedResp": ExtendedResponse,
        }
        answer = kinds[kind]()
        answer["resultCode"] = ResultCode(code)
        answer["matchedDN"] = LDAPDN(matched)
        answer["diagnosticMessage"] = LDAPString(message)
        if referral:
            # types-pyasn1 leaves setComponents unannotated
            answer["referral"] = Referral().setComponents(*referral)  # type: ignore[no-untyped-call]
        if name is not None:
            answer["responseName"] = ResponseName(name)
        if value is not None:
            answer["responseValue"] = ResponseValue(value)
        return pyasn1_message(message_id, kind, answer)


def decode_one(data: bytes) -> ldapwire.Answer:
    """What the connection does with bytes that hold exactly one message."""
    size = ldapwire.message_size(data)
    assert size == len(data), f"the message says it is {size} bytes long, {len(data)} given"
    return ldapwire.decode_message(data)


# --- the bytes written --------------------------------------------------------------------


ODD_DN = "uid=student7,ou=Étudiants\\2C Paris,dc=example,dc=com"
LONG_VALUE = "x" * 300  # a length in two bytes
HUGE_VALUE = "y" * 70_000  # a length in three bytes


@pytest.mark.parametrize("message_id", [1, 127, 128, 255, 256, 65_536, 2**31 - 1])
@pytest.mark.parametrize("values", [["{SSHA}abcdefgh"], [LONG_VALUE], [HUGE_VALUE], ["a", "b", "ä"]])
def test_a_modify_request_is_byte_for_byte_what_ldap3_writes(message_id: int, values: list[str]) -> None:
    reference = modify_operation(ODD_DN, {"userPassword": [(ldap3.MODIFY_REPLACE, values)]}, False)
    ours = ldapwire.encode_message(message_id, ldapwire.modify_replace_request(ODD_DN, "userPassword", values))
    assert ours == pyasn1_message(message_id, "modifyRequest", reference)


def test_bind_add_starttls_and_unbind_requests_are_what_ldap3_writes() -> None:
    bind = bind_operation(3, ldap3.SIMPLE, SERVICE_DN, BIND_SECRET)
    assert ldapwire.encode_message(1, ldapwire.bind_request(SERVICE_DN, BIND_SECRET)) == pyasn1_message(
        1, "bindRequest", bind
    )

    attributes = {
        "objectClass": ["inetOrgPerson", "posixAccount"],
        "uid": ["student78"],
        "description": [LONG_VALUE],
        "userPassword": ["{SSHA}abcdefgh"],
    }
    add = add_operation(ODD_DN, attributes, False)
    ours = ldapwire.encode_message(300, ldapwire.add_request(ODD_DN, list(attributes.items())))
    assert ours == pyasn1_message(300, "addRequest", add)

    starttls = extended_operation(ldapwire.STARTTLS_OID)
    assert ldapwire.encode_message(2, ldapwire.extended_request(ldapwire.STARTTLS_OID)) == pyasn1_message(
        2, "extendedReq", starttls
    )
    # types-ldap3 leaves unbind_operation unannotated
    assert ldapwire.encode_message(9, ldapwire.unbind_request()) == pyasn1_message(
        9,
        "unbindRequest",
        unbind_operation(),  # type: ignore[no-untyped-call]
    )


# --- the bytes read -----------------------------------------------------------------------


def test_answers_encoded_by_pyasn1_are_read() -> None:
    bind = decode_one(pyasn1_answer(1, "bindResponse", 49, "bad password"))
    assert bind == ldapwire.Answer(1, ldapwire.BIND_RESPONSE, ldapwire.LdapResult(49, "", "bad password"))
    assert str(bind.result) == "invalidCredentials (bad password)" and not bind.result.ok

    modify = decode_one(
        pyasn1_answer(
            70_000,
            "modifyResponse",
            10,
            "go elsewhere",
            matched="dc=example,dc=com",
            referral=["ldap://a/", "ldap://b/"],
        )
    )
    assert modify.message_id == 70_000 and modify.operation == ldapwire.MODIFY_RESPONSE
    assert modify.result == ldapwire.LdapResult(10, "dc=example,dc=com", "go elsewhere")  # the referral is skipped

    add = decode_one(pyasn1_answer(2**31 - 1, "addResponse", 0, "é" * 200))
    assert add.result.ok and add.result.message == "é" * 200 and str(add.result) == "success (" + "é" * 200 + ")"

    extended = decode_one(pyasn1_answer(3, "extendedResp", 0, name=ldapwire.STARTTLS_OID, value=b"\x00\x01"))
    assert extended.operation == ldapwire.EXTENDED_RESPONSE
    assert extended.result == ldapwire.LdapResult(0, "", "", ldapwire.STARTTLS_OID)
    assert str(ldapwire.LdapResult(4242)) == "result 4242"


def test_lengths_written_in_more_bytes_than_needed_are_read() -> None:
    """OpenLDAP writes every SEQUENCE length in four bytes (0x84 ...)."""
    data = bytes.fromhex("30 84 00 00 00 10  02 01 05  67 84 00 00 00 07  0a 01 20  04 00  04 00")
    assert decode_one(data) == ldapwire.Answer(5, ldapwire.MODIFY_RESPONSE, ldapwire.LdapResult(32))
    # A header not all there yet: wait for more bytes.
    for cut in range(6):
        assert ldapwire.message_size(data[:cut]) is None
    assert ldapwire.message_size(b"\x30\x0c") == 14


MALFORMED = [
    (bytes.fromhex("30 80 02 01 01 61 07 0a 01 00 04 00 04 00 00 00"), "indefinite length"),
    (bytes.fromhex("31 0c 02 01 01 61 07 0a 01 00 04 00 04 00"), "not an LDAP message"),
    (bytes.fromhex("30 85 00 00 00 00 0c"), "a length written in 5 bytes"),
    (bytes.fromhex("30 84 00 10 00 01") + bytes(100), "over the 1048576 allowed"),
    (bytes.fromhex("30 0c 02 01 ff 61 07 0a 01 00 04 00 04 00"), "messageID is negative"),
    (bytes.fromhex("30 0e 02 05 00 00 00 00 01 61 07 0a 01 00 04 00 04 00"), "messageID: 5 bytes long"),
    (bytes.fromhex("30 0c 02 01 01 64 07 0a 01 00 04 00 04 00"), "an answer 0x64, not one this client asks for"),
    (bytes.fromhex("30 0c 02 01 01 61 07 04 01 00 04 00 04 00"), "resultCode: tag 0x04"),
    (bytes.fromhex("30 0c 02 01 01 61 07 0a 01 00 04 00 1f 00"), "a multi-byte tag"),
    (bytes.fromhex("30 0c 02 01 01 61 09 0a 01 00 04 00 04 00"), "longer than what holds it"),
    (bytes.fromhex("30 0a 02 01 01 61 05 0a 01 00 04 00"), "a truncated element"),
    (bytes.fromhex("30 0c 02 01 01 61 07 0a 01 00 04 00 04 05"), "longer than what holds it"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED, ids=[reason for _, reason in MALFORMED])
def test_a_malformed_answer_is_a_protocol_error_saying_what(data: bytes, reason: str) -> None:
    with pytest.raises(ldapwire.LdapProtocolError) as failure:
        size = ldapwire.message_size(data)
        ldapwire.decode_message(data if size is None else data[:size])
    assert reason in str(failure.value)


VALID_ANSWERS = [
    pyasn1_answer(1, "bindResponse", 0),
    pyasn1_answer(300, "modifyResponse", 32, "no such entry", matched="ou=People,dc=example,dc=com"),
    pyasn1_answer(2, "extendedResp", 52, "bye", name=ldapwire.NOTICE_OF_DISCONNECTION_OID),
    bytes.fromhex("30 84 00 00 00 10  02 01 05  67 84 00 00 00 07  0a 01 20  04 00  04 00"),
]


@settings(derandomize=True, database=None, max_examples=3000, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(VALID_ANSWERS),
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 255), st.sampled_from(["flip", "cut", "insert"])), max_size=4
    ),
    st.binary(max_size=40),
)
def test_no_damaged_answer_crashes_the_reader(answer: bytes, damage: list[tuple[int, int, str]], junk: bytes) -> None:
    data = bytearray(answer)
    for offset, byte, how in damage:
        where = min(offset, len(data))
        if how == "flip" and where < len(data):
            data[where] = byte
        elif how == "cut":
            del data[where:]
        else:
            data.insert(where, byte)
    for candidate in (bytes(data), junk, bytes(data) + junk):
        try:
            size = ldapwire.message_size(candidate)
            if size is not None and size <= len(candidate):
                ldapwire.decode_message(candidate[:size])
        except ldapwire.LdapProtocolError:
            pass


# --- servers that misbehave ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_server(answer: Callable[[list[bytes]], bytes | None], *, then_close: bool = False) -> AsyncIterator[int]:
    """An LDAP server of sorts on 127.0.0.1 (a port chosen now): after each batch of requests
    it reads, it writes `answer(requests so far)` (None: nothing yet); then it holds the
    connection open, or with `then_close` closes it. Yields the port."""
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        requests: list[bytes] = []
        pending = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                pending += data
                while (size := ldapwire.message_size(pending)) is not None and size <= len(pending):
                    requests.append(pending[:size])
                    pending = pending[size:]
                reply = answer(requests)
                if reply is None:
                    continue
                writer.write(reply)
                await writer.drain()
                if then_close:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        for task in handlers:
            task.cancel()
        await server.wait_closed()


def fake_keys(port: int) -> dict[str, Any]:
    return {
        "LDAPURI": f"ldap://127.0.0.1:{port}",
        "LDAPBINDDN": SERVICE_DN,
        "LDAPBINDPW": BIND_SECRET,
        "LDAPTIMEOUT": 1,
    }


GOOD_BIND = pyasn1_answer(1, "bindResponse", 0)

HOSTILE = [
    # (name, what the server answers the bind with, then close?, reason, at once?)
    ("half an answer, then silence", GOOD_BIND[:-3], False, "the server gave no answer within 1 s", False),
    ("silence", b"", False, "the server gave no answer within 1 s", False),
    ("an answer of 2 MiB", bytes.fromhex("30 84 00 20 00 00") + bytes(1000), False, "2097152 bytes, over the", True),
    ("not LDAP", b"HTTP/1.0 400 Bad Request\r\n\r\n", False, "not an LDAP message: it starts with 0x48", True),
    (
        "an indefinite length",
        bytes.fromhex("30 80 02 01 01 61 80 0a 01 00 04 00 04 00 00 00 00 00"),
        False,
        "indefin",
        True,
    ),
    ("half an answer, then closed", GOOD_BIND[:5], True, "the server closed the connection", True),
    ("an answer to nothing asked", pyasn1_answer(9, "bindResponse", 0), False, "message 9, which awaits none", True),
    ("the wrong answer", pyasn1_answer(1, "modifyResponse", 0), False, "an answer 0x67 where 0x61 was due", True),
    (
        "a notice of disconnection",
        pyasn1_answer(0, "extendedResp", 52, "shutting down", name=ldapwire.NOTICE_OF_DISCONNECTION_OID),
        False,
        "the server ended the connection: unavailable (shutting down)",
        True,
    ),
]


@pytest.mark.parametrize(
    ("answer", "then_close", "reason", "at_once"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
async def test_a_misbehaving_server_is_a_transient_failure_soon_and_says_why(
    open_directory: Callable[..., LdapDirectory], answer: bytes, then_close: bool, reason: str, at_once: bool
) -> None:
    async with fake_server(lambda requests: answer or None, then_close=then_close) as port:
        directory = open_directory(**fake_keys(port))
        started = time.monotonic()
        with pytest.raises(TransientError) as failure:
            await directory.set_student_password(1, "the-students-new-password")
        elapsed = time.monotonic() - started
    message = str(failure.value)
    assert message.startswith(f"LDAP ldap://127.0.0.1:{port} unreachable, could not bind as {SERVICE_DN}: ")
    assert reason in message
    assert elapsed < (0.8 if at_once else 3.0), f"{elapsed:.2f} s"
    assert BIND_SECRET not in message and "the-students-new-password" not in message


async def test_starttls_refused_by_the_server_fails_the_job_saying_so(
    tmp_path: Path, open_directory: Callable[..., LdapDirectory]
) -> None:
    with Slapd(tmp_path / "slapd") as server:  # no TLS configured: slapd refuses StartTLS
        directory = open_directory(**server.location_keys(LDAPSTARTTLS=True))
        with pytest.raises(StepFailed) as failure:
            await directory.set_student_password(1, "whatever")
        assert str(failure.value) == (
            f"LDAP {server.url} refused StartTLS: protocolError (unsupported extended operation)"
        )


async def test_answers_in_any_order_reach_their_own_requests() -> None:
    """The server answers three modifies last first; each caller gets its own answer."""

    def reversed_answers(requests: list[bytes]) -> bytes | None:
        if len(requests) < 3:
            return None
        return b"".join(pyasn1_answer(n, "modifyResponse", 0, f"answer to {n}") for n in (3, 2, 1))

    async with fake_server(reversed_answers) as port:
        connection = await ldapwire.connect("127.0.0.1", port, timeout=5)
        try:
            results = await asyncio.gather(
                *(connection.modify_replace(f"uid=student{n}", "userPassword", ["secret"]) for n in (1, 2, 3))
            )
            assert [result.message for result in results] == ["answer to 1", "answer to 2", "answer to 3"]
            assert connection.in_flight == 0 and connection.usable
        finally:
            await connection.aclose()
        assert not connection.usable


async def test_a_lost_connection_fails_every_operation_in_flight_at_once() -> None:
    async with fake_server(lambda requests: b"" if len(requests) >= 3 else None, then_close=True) as port:
        connection = await ldapwire.connect("127.0.0.1", port, timeout=30)
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(connection.modify_replace(f"uid=student{n}", "userPassword", [BIND_SECRET]) for n in (1, 2, 3)),
            return_exceptions=True,
        )
        assert time.monotonic() - started < 5, "no waiting for the 30 s timeout"
        assert all(isinstance(outcome, ldapwire.LdapConnectionError) for outcome in outcomes), outcomes
        assert {str(outcome) for outcome in outcomes} == {"the server closed the connection"}
        assert not connection.usable and connection.in_flight == 0
        assert BIND_SECRET not in repr(connection)
        with pytest.raises(ldapwire.LdapConnectionError, match="the server closed the connection"):
            await connection.bind(SERVICE_DN, BIND_SECRET)
        await connection.aclose()


async def test_nobody_listening_is_a_connection_error() -> None:
    async with fake_server(lambda requests: None) as port:
        pass  # the port is free again
    with pytest.raises(ldapwire.LdapConnectionError, match="cannot connect: Connection refused"):
        await ldapwire.connect("127.0.0.1", port, timeout=5)


# --- many at once, against a real slapd -----------------------------------------------------


@pytest.fixture
def many_students(tmp_path: Path) -> Iterator[Slapd]:
    server = Slapd(tmp_path / "slapd")
    server.add_students({stdid: old_password(stdid) for stdid in range(1, 201)})
    with server:
        yield server


async def test_200_password_changes_at_once_share_two_connections(
    many_students: Slapd, open_directory: Callable[..., LdapDirectory]
) -> None:
    directory = open_directory(**many_students.location_keys(LDAPCONNECTIONS=2))
    before = many_students.connections_total()

    outcomes = await asyncio.gather(*(directory.set_student_password(s, new_password(s)) for s in range(1, 201)))

    assert outcomes == [f"userPassword of {student_dn(s)} replaced ({{SSHA}})" for s in range(1, 201)]
    assert directory.connections_opened == 2
    assert many_students.connections_total() - before == 2
    for stdid in range(1, 201):
        assert many_students.can_bind(student_dn(stdid), new_password(stdid)), stdid
    assert not many_students.can_bind(student_dn(200), old_password(200))


async def test_one_connection_carries_a_hundred_operations_at_once(many_students: Slapd) -> None:
    connection = await ldapwire.connect("127.0.0.1", many_students.port, timeout=10)
    try:
        assert (await connection.bind(SERVICE_DN, many_students.service_password)).ok
        changes = [
            asyncio.ensure_future(connection.modify_replace(student_dn(s), "userPassword", [new_password(s)]))
            for s in range(1, 101)
        ]
        await asyncio.sleep(0)  # every request is written before any answer is read
        assert connection.in_flight == 100
        results = await asyncio.gather(*changes)
        assert all(result.ok for result in results), {str(result) for result in results}
        missing = await connection.modify_replace(student_dn(999), "userPassword", ["x"])
        assert missing.code == 32 and str(missing).startswith("noSuchObject")
    finally:
        await connection.aclose()
    assert many_students.can_bind(student_dn(100), new_password(100))


def current_connections(server: Slapd) -> int:
    admin = server.admin()
    admin.search("cn=Current,cn=Connections,cn=Monitor", "(objectClass=*)", search_scope=ldap3.BASE, attributes=["+"])
    assert admin.response is not None
    return int(admin.response[0]["raw_attributes"]["monitorCounter"][0])


async def test_aclose_unbinds_the_connections_and_refuses_more_work(
    tmp_path: Path, open_directory: Callable[..., LdapDirectory]
) -> None:
    """At shutdown: the unbinds go out, the server sees the connection end, and a job that
    still asks gets a transient error (it runs again after the restart)."""
    server = Slapd(tmp_path / "slapd")
    server.add_students({1: old_password(1)})
    with server:
        directory = open_directory(server)
        await directory.set_student_password(1, new_password(1))
        idle = current_connections(server)  # the admin's and the directory's
        await directory.aclose()
        deadline = time.monotonic() + 5
        while current_connections(server) != idle - 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert current_connections(server) == idle - 1
        gc.collect()  # an unclosed transport would warn now (and the warning fail the test)
        with pytest.raises(TransientError, match="the LDAP directory is closed"):
            await directory.set_student_password(1, new_password(1))
