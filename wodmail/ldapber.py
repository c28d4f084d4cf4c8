"""LDAPv3 messages on the wire (RFC 4511, BER with definite lengths): the five requests
wodmail sends, encoded; the LDAPResult of their answers, decoded; and the errors of an LDAP
connection (wodmail.ldapwire, the client, describes them). Every encoding is compared byte
for byte with ldap3's in tests/test_ldapwire.py, and the decoder is fuzzed there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_MESSAGE_SIZE = 1 << 20
"""The largest answer taken (bytes of content); a larger one is a protocol error."""

STARTTLS_OID = "1.3.6.1.4.1.1466.20037"
NOTICE_OF_DISCONNECTION_OID = "1.3.6.1.4.1.1466.20036"

SUCCESS = 0

# BER tags: universal, then the protocolOps (RFC 4511 section 4.2 onwards), then context tags.
_INTEGER = 0x02
_OCTET_STRING = 0x04
_ENUMERATED = 0x0A
_SEQUENCE = 0x30
_SET = 0x31
BIND_REQUEST = 0x60  # [APPLICATION 0], constructed
BIND_RESPONSE = 0x61  # [APPLICATION 1]
UNBIND_REQUEST = 0x42  # [APPLICATION 2], primitive (NULL)
MODIFY_REQUEST = 0x66  # [APPLICATION 6]
MODIFY_RESPONSE = 0x67  # [APPLICATION 7]
ADD_REQUEST = 0x68  # [APPLICATION 8]
ADD_RESPONSE = 0x69  # [APPLICATION 9]
EXTENDED_REQUEST = 0x77  # [APPLICATION 23]
EXTENDED_RESPONSE = 0x78  # [APPLICATION 24]
_SIMPLE = 0x80  # BindRequest authentication: simple [0]
_REQUEST_NAME = 0x80  # ExtendedRequest requestName [0]
_REQUEST_VALUE = 0x81  # ExtendedRequest requestValue [1]
_RESPONSE_NAME = 0x8A  # ExtendedResponse responseName [10]
_REPLACE = 2  # ModifyRequest operation

_RESULT_ANSWERS = frozenset({BIND_RESPONSE, MODIFY_RESPONSE, ADD_RESPONSE, EXTENDED_RESPONSE})

RESULT_NAMES = {
    0: "success",
    1: "operationsError",
    2: "protocolError",
    3: "timeLimitExceeded",
    4: "sizeLimitExceeded",
    5: "compareFalse",
    6: "compareTrue",
    7: "authMethodNotSupported",
    8: "strongerAuthRequired",
    10: "referral",
    11: "adminLimitExceeded",
    12: "unavailableCriticalExtension",
    13: "confidentialityRequired",
    14: "saslBindInProgress",
    16: "noSuchAttribute",
    17: "undefinedAttributeType",
    18: "inappropriateMatching",
    19: "constraintViolation",
    20: "attributeOrValueExists",
    21: "invalidAttributeSyntax",
    32: "noSuchObject",
    33: "aliasProblem",
    34: "invalidDNSyntax",
    36: "aliasDereferencingProblem",
    48: "inappropriateAuthentication",
    49: "invalidCredentials",
    50: "insufficientAccessRights",
    51: "busy",
    52: "unavailable",
    53: "unwillingToPerform",
    54: "loopDetect",
    64: "namingViolation",
    65: "objectClassViolation",
    66: "notAllowedOnNonLeaf",
    67: "notAllowedOnRDN",
    68: "entryAlreadyExists",
    69: "objectClassModsProhibited",
    71: "affectsMultipleDSAs",
    80: "other",
}
"""The result codes of RFC 4511 (appendix A), by the names the RFC (and ldap3) give them."""


# --- errors ---------------------------------------------------------------------------------


class LdapError(Exception):
    """Base of the errors of this module."""


class LdapConnectionError(LdapError):
    """The connection could not be made, or it ended; the operations in flight on it failed."""


class LdapProtocolError(LdapConnectionError):
    """The server sent something that is not LDAP; the connection was dropped."""


class CertificateNotTrusted(LdapConnectionError):
    """TLS: the server's certificate did not verify against the CAs, or not for its name."""


class StartTlsRefused(LdapError):
    """The server refused StartTLS; `result` is its answer."""

    def __init__(self, result: LdapResult) -> None:
        self.result = result
        super().__init__(f"StartTLS refused: {result}")


# --- encoding -------------------------------------------------------------------------------


def _length(size: int) -> bytes:
    """A BER definite length: one byte below 128, else 0x80 + the count of bytes that follow."""
    if size < 0x80:
        return bytes((size,))
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _element(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def _integer(tag: int, value: int) -> bytes:
    """A non-negative INTEGER or ENUMERATED, in the fewest bytes (two's complement)."""
    return _element(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _octets(text: str) -> bytes:
    return _element(_OCTET_STRING, text.encode())


def _attribute(name: str, values: Sequence[str]) -> bytes:
    """An Attribute / PartialAttribute: SEQUENCE { type, SET OF value }."""
    return _element(_SEQUENCE, _octets(name) + _element(_SET, b"".join(_octets(value) for value in values)))


def encode_message(message_id: int, operation: bytes) -> bytes:
    """An LDAPMessage: SEQUENCE { messageID, protocolOp } (no controls)."""
    return _element(_SEQUENCE, _integer(_INTEGER, message_id) + operation)


def bind_request(dn: str, password: str) -> bytes:
    """BindRequest: LDAP version 3, a simple bind as `dn`."""
    return _element(BIND_REQUEST, _integer(_INTEGER, 3) + _octets(dn) + _element(_SIMPLE, password.encode()))


def unbind_request() -> bytes:
    """UnbindRequest: the client is leaving (the server answers nothing)."""
    return bytes((UNBIND_REQUEST, 0))


def modify_replace_request(dn: str, attribute: str, values: Sequence[str]) -> bytes:
    """ModifyRequest: replace every value of `attribute` of `dn` with `values`."""
    change = _element(_SEQUENCE, _integer(_ENUMERATED, _REPLACE) + _attribute(attribute, values))
    return _element(MODIFY_REQUEST, _octets(dn) + _element(_SEQUENCE, change))


def add_request(dn: str, attributes: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    """AddRequest: a new entry `dn` with these (attribute, values)."""
    listed = b"".join(_attribute(name, values) for name, values in attributes)
    return _element(ADD_REQUEST, _octets(dn) + _element(_SEQUENCE, listed))


def extended_request(oid: str, value: bytes | None = None) -> bytes:
    """ExtendedRequest `oid` (e.g. STARTTLS_OID), with its value if it takes one."""
    content = _element(_REQUEST_NAME, oid.encode("ascii"))
    if value is not None:
        content += _element(_REQUEST_VALUE, value)
    return _element(EXTENDED_REQUEST, content)


# --- decoding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LdapResult:
    """The LDAPResult of an answer: its code, matchedDN and diagnosticMessage (a referral, if
    any, is not kept); `response_name` is an ExtendedResponse's responseName."""

    code: int
    matched_dn: str = ""
    message: str = ""
    response_name: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == SUCCESS

    @property
    def name(self) -> str:
        """The code's name in RFC 4511 (e.g. invalidCredentials), or `result N`."""
        return RESULT_NAMES.get(self.code, f"result {self.code}")

    def __str__(self) -> str:
        message = self.message.strip()
        return f"{self.name} ({message})" if message else self.name


@dataclass(frozen=True)
class Answer:
    """One LDAPMessage from the server: its message id, its protocolOp tag and its result."""

    message_id: int
    operation: int
    result: LdapResult


Buffer = bytes | bytearray


def message_size(buffer: Buffer, offset: int = 0) -> int | None:
    """The size (header and content) of the LDAPMessage that starts at `offset` of `buffer`;
    None while its header is not all there. LdapProtocolError when it cannot be one."""
    available = len(buffer) - offset
    if available < 2:
        return None
    tag = buffer[offset]
    if tag != _SEQUENCE:
        raise LdapProtocolError(f"not an LDAP message: it starts with 0x{tag:02x}, not a SEQUENCE")
    first = buffer[offset + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0:
        raise LdapProtocolError("an indefinite length (LDAP allows definite lengths only)")
    if count > 4:
        raise LdapProtocolError(f"a length written in {count} bytes (at most 4 make sense)")
    if available < 2 + count:
        return None
    size = int.from_bytes(buffer[offset + 2 : offset + 2 + count], "big")
    if size > MAX_MESSAGE_SIZE:
        raise LdapProtocolError(f"a message of {size} bytes, over the {MAX_MESSAGE_SIZE} allowed")
    return 2 + count + size


def _read(data: Buffer, offset: int, end: int) -> tuple[int, int, int]:
    """(tag, start, stop) of the BER element at `offset`, whose content is data[start:stop];
    the element must end by `end`."""
    if offset + 2 > end:
        raise LdapProtocolError("a truncated element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise LdapProtocolError(f"a multi-byte tag (0x{tag:02x}...), which LDAP does not use")
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count == 0:
            raise LdapProtocolError("an indefinite length (LDAP allows definite lengths only)")
        if count > 4 or start + count > end:
            raise LdapProtocolError("a truncated or oversized length")
        size = int.from_bytes(data[start : start + count], "big")
        start += count
    stop = start + size
    if stop > end:
        raise LdapProtocolError("an element longer than what holds it")
    return tag, start, stop


def _expect(tag: int, wanted: int, what: str) -> None:
    if tag != wanted:
        raise LdapProtocolError(f"{what}: tag 0x{tag:02x}, expected 0x{wanted:02x}")


def _number(data: Buffer, start: int, stop: int, what: str) -> int:
    """A non-negative INTEGER or ENUMERATED of at most 4 bytes."""
    if not 1 <= stop - start <= 4:
        raise LdapProtocolError(f"{what}: {stop - start} bytes long")
    value = int.from_bytes(data[start:stop], "big", signed=True)
    if value < 0:
        raise LdapProtocolError(f"{what} is negative")
    return value


def _text(data: Buffer, start: int, stop: int) -> str:
    return bytes(data[start:stop]).decode("utf-8", errors="replace")


def decode_result(data: Buffer, start: int, stop: int) -> LdapResult:
    """The LDAPResult in data[start:stop]: resultCode, matchedDN, diagnosticMessage, then
    elements that are skipped (referral [3], serverSaslCreds [7], responseValue [11]) but for
    an ExtendedResponse's responseName [10]."""
    tag, begin, end = _read(data, start, stop)
    _expect(tag, _ENUMERATED, "resultCode")
    code = _number(data, begin, end, "resultCode")
    tag, begin, end = _read(data, end, stop)
    _expect(tag, _OCTET_STRING, "matchedDN")
    matched_dn = _text(data, begin, end)
    tag, begin, end = _read(data, end, stop)
    _expect(tag, _OCTET_STRING, "diagnosticMessage")
    message = _text(data, begin, end)
    response_name = None
    while end < stop:
        tag, begin, end = _read(data, end, stop)
        if tag == _RESPONSE_NAME:
            response_name = _text(data, begin, end)
    return LdapResult(code, matched_dn, message, response_name)


def decode_message(data: Buffer) -> Answer:
    """One whole LDAPMessage (as `message_size` delimits it) carrying an LDAPResult: a bind,
    modify, add or extended response. Controls after the protocolOp are ignored."""
    tag, start, stop = _read(data, 0, len(data))
    _expect(tag, _SEQUENCE, "LDAPMessage")
    if stop != len(data):
        raise LdapProtocolError("bytes after the LDAPMessage")
    tag, begin, end = _read(data, start, stop)
    _expect(tag, _INTEGER, "messageID")
    message_id = _number(data, begin, end, "messageID")
    operation, begin, end = _read(data, end, stop)
    if operation not in _RESULT_ANSWERS:
        raise LdapProtocolError(f"message {message_id}: an answer 0x{operation:02x}, not one this client asks for")
    return Answer(message_id, operation, decode_result(data, begin, end))
