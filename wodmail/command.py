"""The one record that flows from the mail to the callbacks: a parsed command.

A command mail (the mail is the API) looks like this, as the registration app
sends it today:

    Subject: CREATE <stdid> <customer-id> [<customer-email>]
    Subject: CLEANUP <stdid> <customer-id>            (DELETE is the same verb)
    Subject: RESET <stdid>|<min>,<max> <customer-id>
    Subject: PURGE <stdid> <customer-id>
    body: first non-empty line is the workshop, e.g. WKSHP-Ansible101

`parse_command` turns the bytes of such a mail into a `Command`, or raises
`BadCommand` naming what was wrong. Nothing downstream parses a mail again.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from dataclasses import asdict, dataclass, replace
from email.message import EmailMessage
from typing import Any

from wodmail.errors import BadCommand

VERBS = ("CREATE", "CLEANUP", "RESET", "PURGE")
ALIASES = {"DELETE": "CLEANUP"}

#: A workshop name: WKSHP- or CHLG- and then letters, digits, '-', '_' and '.' (no "..").
WORKSHOP_RE = re.compile(r"(WKSHP|CHLG)-[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
CUSTOMER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STDID_RE = re.compile(r"[0-9]{1,9}")
MAX_SUBJECT = 998

#: Bytes (unfolded) of one header field the parser reads. Python's header parser is slow
#: (worse than linear) on long structured fields: a 64 KiB Content-Type takes seconds.
MAX_READ_FIELD = 2048
#: Header fields the parser decodes, at the top or in a MIME part.
READ_FIELDS = (
    b"subject",
    b"message-id",
    b"content-type",
    b"content-transfer-encoding",
    b"content-disposition",
    b"x-wodmail-signature",
)
#: MIME parts (Content-Type fields) a command mail may have; nesting is bounded by it too.
MAX_MIME_PARTS = 50
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


@dataclass(frozen=True)
class Command:
    """One command, as the queue stores it and the verbs receive it."""

    verb: str
    """CREATE, CLEANUP, RESET or PURGE (DELETE arrives as CLEANUP)."""
    stdid: int
    """The (first) student: student{stdid} on this host."""
    last_stdid: int
    """The last student of a RESET range; equal to `stdid` otherwise."""
    customer: str
    """The registration app's customer id."""
    workshop: str | None
    """The workshop as the mail names it (WKSHP-Name or CHLG-Name); PURGE may omit it."""
    email: str | None = None
    """The customer's address (CREATE only, optional)."""
    message_id: str | None = None
    """The mail's Message-ID, used to recognise a redelivered mail."""
    auth: str = ""
    """How the command was authenticated, e.g. 'legacy peer 127.0.0.1'."""

    @property
    def is_range(self) -> bool:
        return self.last_stdid != self.stdid

    @property
    def students(self) -> range:
        return range(self.stdid, self.last_stdid + 1)

    @property
    def student_name(self) -> str:
        return f"student{self.stdid}"

    @property
    def mode(self) -> str:
        """WKSHP, or CHLG for a challenge (its content lives under the WKSHP- name)."""
        return "CHLG" if self.workshop and self.workshop.startswith("CHLG-") else "WKSHP"

    def canonical(self) -> str:
        """The command in one line, the same for every copy of the same command."""
        student = f"{self.stdid},{self.last_stdid}" if self.is_range else str(self.stdid)
        words = [self.verb, student, self.customer]
        if self.email:
            words.append(self.email)
        return " ".join(words) + f" / {self.workshop or '-'}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Command:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)

    def with_auth(self, auth: str) -> Command:
        return replace(self, auth=auth)


def check_fields(raw: bytes) -> None:
    """Refuse, before parsing, what would make the parser slow: an over-long field that it
    reads (READ_FIELDS) anywhere in the mail, or more than MAX_MIME_PARTS MIME parts.

    One linear pass over the lines; a line that looks like a header field anywhere (a MIME
    part's headers are in the body) counts, which only errs on the side of refusing."""
    name = ""  # the READ_FIELDS field being measured, as written; "" for any other line
    length = 0
    parts = 0
    for line in raw.splitlines():
        if line[:1] in (b" ", b"\t") and name:
            length += len(line)
            continue
        _check_length(name, length)
        match = _FIELD_NAME.match(line)
        field_name = match.group(1) if match else b""
        name = field_name.decode("ascii") if field_name.lower() in READ_FIELDS else ""
        length = len(line)
        if field_name.lower() == b"content-type":
            parts += 1
            if parts > MAX_MIME_PARTS:
                raise BadCommand(f"the mail has more than {MAX_MIME_PARTS} MIME parts")
    _check_length(name, length)


def _check_length(name: str, length: int) -> None:
    if name and length > MAX_READ_FIELD:
        raise BadCommand(f"the {name} header is {length} bytes long, more than {MAX_READ_FIELD}")


def read_mail(raw: bytes) -> EmailMessage:
    """Parse mail bytes leniently: the legacy client writes no blank line before its body."""
    check_fields(raw)
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception as exc:  # noqa: BLE001 - hostile input: any parser failure is a refusal
        raise BadCommand(f"unreadable mail: {type(exc).__name__}") from None
    assert isinstance(message, EmailMessage)
    return message


def header(message: EmailMessage, name: str) -> str | None:
    """A header's decoded value, or None; refuses a header the parser cannot decode."""
    try:
        value = message.get(name)
    except Exception:  # noqa: BLE001 - hostile input: any decoding failure is a refusal
        raise BadCommand(f"unreadable {name} header") from None
    if value is None:
        return None
    text = str(value)
    if "\x00" in text:
        raise BadCommand(f"{name} header holds a NUL byte")
    return " ".join(text.split())


def parse_command(raw: bytes) -> Command:
    """Turn a command mail into a `Command`, or raise `BadCommand` saying what is wrong."""
    message = read_mail(raw)
    return command_from_message(message)


def command_from_message(message: EmailMessage) -> Command:
    subjects = sum(1 for name in message if name.lower() == "subject")  # names only: no value parsed
    if subjects > 1:
        raise BadCommand(f"the mail has {subjects} Subject headers: a command mail has one")
    subject = header(message, "Subject")
    if not subject:
        raise BadCommand("no Subject: a command mail's Subject is 'VERB <stdid> <customer-id>'")
    if len(subject) > MAX_SUBJECT:
        raise BadCommand(f"Subject is {len(subject)} characters long, more than {MAX_SUBJECT}")
    words = subject.split()
    verb = ALIASES.get(words[0].upper(), words[0].upper())
    if verb not in VERBS:
        shown = words[0][:40]
        raise BadCommand(f"unknown verb {shown!r}: expected one of CREATE, CLEANUP, DELETE, RESET, PURGE")
    args = words[1:]
    most = 3 if verb == "CREATE" else 2
    if len(args) < 2:
        raise BadCommand(f"{verb} needs a student id and a customer id, got {len(args)} argument(s)")
    if len(args) > most:
        raise BadCommand(f"{verb} takes at most {most} arguments, got {len(args)}")
    stdid, last = parse_students(verb, args[0])
    customer = args[1]
    if not CUSTOMER_RE.fullmatch(customer):
        raise BadCommand(f"customer id {customer[:40]!r} is not a plain identifier")
    address = parse_address(args[2]) if len(args) == 3 else None
    workshop = parse_workshop(message, required=verb != "PURGE")
    message_id = header(message, "Message-ID")
    return Command(
        verb=verb,
        stdid=stdid,
        last_stdid=last,
        customer=customer,
        workshop=workshop,
        email=address,
        message_id=message_id[:250] if message_id else None,
    )


def parse_students(verb: str, text: str) -> tuple[int, int]:
    first, sep, last = text.partition(",")
    if sep and verb != "RESET":
        raise BadCommand(f"only RESET takes a student range, {verb} got {text[:40]!r}")
    if not STDID_RE.fullmatch(first) or (sep and not STDID_RE.fullmatch(last)):
        raise BadCommand(f"student id {text[:40]!r} is not a number" + (" or min,max range" if verb == "RESET" else ""))
    low, high = int(first), int(last) if sep else int(first)
    if high < low:
        raise BadCommand(f"student range {low},{high} ends before it starts")
    return low, high


def parse_address(text: str) -> str:
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise BadCommand(f"customer e-mail {text[:80]!r} is not valid: {exc}") from None
    return str(checked.normalized)


def parse_workshop(message: EmailMessage, *, required: bool) -> str | None:
    line = first_body_line(message)
    if line is None:
        if required:
            raise BadCommand("the body is empty: its first line must name the workshop, e.g. WKSHP-Ansible101")
        return None
    if not WORKSHOP_RE.fullmatch(line) or ".." in line:
        raise BadCommand(
            f"workshop name {line[:60]!r} is not valid: expected WKSHP- or CHLG- followed by letters, "
            "digits, '-', '_' or '.'"
        )
    return line


def first_body_line(message: EmailMessage) -> str | None:
    """The first non-empty line of the first text part, stripped."""
    try:
        part = message.get_body(preferencelist=("plain",)) if message.is_multipart() else message
        if part is None:
            return None
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - hostile input: any decoding failure is a refusal
        raise BadCommand("the body cannot be decoded") from None
    if not isinstance(payload, bytes):
        return None
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:  # noqa: BLE001 - hostile input: any decoding failure is a refusal
        raise BadCommand("the body's charset cannot be read") from None
    try:
        text = payload.decode(charset)
    except Exception:  # noqa: BLE001 - hostile charset names: LookupError, ValueError (NUL), ...
        shown = "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in charset[:30])
        raise BadCommand(f"the body is not valid {shown} text") from None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None
