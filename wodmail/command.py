"""The one record that flows from the mail to the callbacks: a parsed command.

A command mail (the mail is the API) looks like this, as the registration app
sends it today:

    Subject: CREATE <stdid> <customer-id> [<customer-email>]
    Subject: CLEANUP <stdid> <customer-id>            (DELETE is the same verb)
    Subject: RESET <stdid>|<min>,<max> <customer-id>
    Subject: PURGE <stdid> <customer-id>
    body: first non-empty line is the workshop, e.g. WKSHP-Ansible101

and, from an admin (signed, or the admin socket), the verbs about the host, which name no
student and whose body is not read (`Command.operands` holds their words):

    Subject: HELP
    Subject: STATUS [job <id> | student <stdid> | workshop <name>]
    Subject: DRAIN [workshop <name> | all]            (RESUME likewise)

Which verbs there are, and which of those arguments each takes, is what the verbs declare
(wodmail.verbspec, the registry of verbs/): the lines above are the shipped verbs'.
`parse_command` turns the bytes of such a mail into a `Command`, or raises
`BadCommand` naming what was wrong. Nothing downstream parses a mail again.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from email.message import EmailMessage
from typing import Any

from wodmail.errors import BadCommand
from wodmail.verbspec import REST, REST_WORDS, VerbRegistry, VerbSpec, shipped_verbs

#: A workshop name: WKSHP- or CHLG- and then letters, digits, '-', '_' and '.' (no "..").
WORKSHOP_RE = re.compile(r"(WKSHP|CHLG)-[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
CUSTOMER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STDID_RE = re.compile(r"[0-9]{1,9}")
#: What each placeholder of a verb's operand forms takes (wodmail.verbspec.OPERAND_PLACEHOLDERS).
OPERAND_VALUES = {"ID": re.compile(r"[0-9]{1,12}"), "N": STDID_RE, "NAME": WORKSHOP_RE}
NO_STUDENT = -1
"""`stdid` of a command that names no student (HELP, STATUS, DRAIN): no student has it, and
its line (wodmail.worker) holds only such commands."""
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
    """The verb's name in the registry: CREATE, CLEANUP, RESET or PURGE (DELETE arrives as CLEANUP)."""
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
    operands: tuple[str, ...] | None = None
    """The words of a verb without a student (`VerbSpec.student` False), e.g. ('job', '12'),
    and then `stdid` is NO_STUDENT; None for a command about students."""

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
    def student_ends(self) -> tuple[int, ...]:
        """The first and last student (the same twice for one); none without a student."""
        return () if self.operands is not None else (self.stdid, self.last_stdid)

    @property
    def label(self) -> str:
        """The command in a few words, for logs, listings and replies: `CREATE student5
        WKSHP-Name`, `STATUS job 12`."""
        if self.operands is not None:
            return " ".join([self.verb, *self.operands])
        return f"{self.verb} {self.student_name}" + (f" {self.workshop}" if self.workshop else "")

    @property
    def mode(self) -> str:
        """WKSHP, or CHLG for a challenge (its content lives under the WKSHP- name)."""
        return "CHLG" if self.workshop and self.workshop.startswith("CHLG-") else "WKSHP"

    def canonical(self) -> str:
        """The command in one line, the same for every copy of the same command."""
        if self.operands is not None:
            return " ".join([self.verb, *self.operands]) + f" / {self.workshop or '-'}"
        student = f"{self.stdid},{self.last_stdid}" if self.is_range else str(self.stdid)
        words = [self.verb, student, self.customer]
        if self.email:
            words.append(self.email)
        return " ".join(words) + f" / {self.workshop or '-'}"

    def to_json(self) -> str:
        data = asdict(self)
        if self.operands is None:
            del data["operands"]  # a command about students is stored as it always was
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Command:
        data: dict[str, Any] = json.loads(text)
        if data.get("operands") is not None:
            data["operands"] = tuple(data["operands"])
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


@dataclass(frozen=True)
class MailFields:
    """What a command is made of, read from a mail: nothing else of it is ever looked at."""

    subjects: int
    """How many Subject headers (a command mail has one)."""
    subject: str | None
    message_id: str | None
    signatures: tuple[str, ...]
    """The X-Wodmail-Signature values, whitespace folded."""
    first_line: str | None
    """The first non-empty line of the first text part, stripped."""
    body_error: str | None = None
    """Why the body could not be read, if it could not (said after any Subject error)."""


SIGNATURE_HEADER = "X-Wodmail-Signature"
_SIMPLE_HEADER = re.compile(r"([\x21-\x39\x3b-\x7e]+):(.*)")
_SIMPLE_MESSAGE_ID = re.compile(r"[ \t]*<[\x21-\x3d\x3f-\x7e]+>[ \t]*")
_SIMPLE_TYPE = re.compile(
    r'[ \t]*text/plain[ \t]*(;[ \t]*charset[ \t]*=[ \t]*"?(us-ascii|utf-8)"?[ \t]*)?', re.IGNORECASE
)
_SIMPLE_ENCODING = re.compile(r"[ \t]*(7bit|8bit)[ \t]*", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def simple_fields(raw: bytes) -> MailFields | None:
    """The fields of a plain command mail, read without the email package; None when the mail
    is anything but plain (MIME, encoded words, folded or odd headers, non-ASCII bytes), and
    the email package must read it. Both readings agree on every mail this one accepts
    (tests/test_command.py): this is the fast path a burst of registrations takes."""
    if not raw.isascii():
        return None
    text = raw.decode("ascii").replace("\r\n", "\n")
    if "\r" in text:
        return None
    lines = text.split("\n")
    fields: dict[str, list[str]] = {}
    body = len(lines)  # where the body starts
    for number, line in enumerate(lines):
        if line == "":
            body = number + 1
            break
        if line[0] in " \t:" or line.startswith("From "):
            return None  # folded or odd headers: the email package's rules apply
        match = _SIMPLE_HEADER.fullmatch(line)
        if match is None:
            body = number  # not a header: the body starts here (the legacy client writes no blank line)
            break
        name, value = match.group(1).lower(), match.group(2)
        if _CONTROL.search(value):
            return None
        fields.setdefault(name, []).append(value)
    for name in ("subject", "message-id", "x-wodmail-signature"):
        if any("=?" in value for value in fields.get(name, ())):
            return None  # encoded words
    if len(fields.get("content-type", ())) > 1 or len(fields.get("content-transfer-encoding", ())) > 1:
        return None
    if any(not _SIMPLE_TYPE.fullmatch(v) for v in fields.get("content-type", ())):
        return None
    if any(not _SIMPLE_ENCODING.fullmatch(v) for v in fields.get("content-transfer-encoding", ())):
        return None
    message_ids = fields.get("message-id", ())
    if any(not _SIMPLE_MESSAGE_ID.fullmatch(v) for v in message_ids):
        return None
    subjects = fields.get("subject", [])
    first_line = next((line.strip() for line in "\n".join(lines[body:]).splitlines() if line.strip()), None)
    return MailFields(
        subjects=len(subjects),
        subject=" ".join(subjects[0].split()) if subjects else None,
        message_id=" ".join(message_ids[0].split()) if message_ids else None,
        signatures=tuple(" ".join(v.split()) for v in fields.get("x-wodmail-signature", ())),
        first_line=first_line,
    )


def message_fields(message: EmailMessage) -> MailFields:
    """The fields of any mail, read by the email package."""
    names = [name.lower() for name in message]  # names only: no value parsed
    subjects = names.count("subject")
    signatures: tuple[str, ...] = ()
    if SIGNATURE_HEADER.lower() in names:
        try:
            values = message.get_all(SIGNATURE_HEADER) or []
            signatures = tuple(" ".join(str(value).split()) for value in values)
        except Exception:  # noqa: BLE001 - hostile input: any decoding failure is a refusal
            signatures = ("",) * names.count(SIGNATURE_HEADER.lower())
    subject = header(message, "Subject") if subjects == 1 else None
    message_id = header(message, "Message-ID")
    try:
        first_line, body_error = first_body_line(message), None
    except BadCommand as exc:
        first_line, body_error = None, exc.reason
    return MailFields(
        subjects=subjects,
        subject=subject,
        message_id=message_id,
        signatures=signatures,
        first_line=first_line,
        body_error=body_error,
    )


def read_fields(raw: bytes) -> MailFields:
    """The command fields of mail bytes, by the fast path when the mail is plain."""
    check_fields(raw)
    return simple_fields(raw) or message_fields(read_mail(raw))


def parse_command(raw: bytes, verbs: VerbRegistry | None = None) -> Command:
    """Turn a command mail into a `Command`, or raise `BadCommand` saying what is wrong.

    `verbs`: the verbs to know (default: the shipped ones, wodmail.verbs)."""
    return command_from_fields(read_fields(raw), verbs)


def command_from_fields(fields: MailFields, verbs: VerbRegistry | None = None) -> Command:
    """The command the fields of a mail give, by its verb's declaration in `verbs`."""
    registry = verbs if verbs is not None else shipped_verbs()
    subjects = fields.subjects
    if subjects > 1:
        raise BadCommand(f"the mail has {subjects} Subject headers: a command mail has one")
    subject = fields.subject
    if not subject:
        raise BadCommand("no Subject: a command mail's Subject is 'VERB <stdid> <customer-id>'")
    if len(subject) > MAX_SUBJECT:
        raise BadCommand(f"Subject is {len(subject)} characters long, more than {MAX_SUBJECT}")
    words = subject.split()
    spec = registry.lookup(words[0])
    if spec is None:
        shown = words[0][:40]
        raise BadCommand(f"unknown verb {shown!r}: expected one of {registry.words}")
    verb = spec.name
    args = words[1:]
    if not spec.student:
        operands, named = parse_operands(spec, args)
        if spec.reads_body:
            if fields.body_error is not None:
                raise BadCommand(fields.body_error)
            named = named or parse_workshop(fields.first_line, required=False)
        message_id = fields.message_id
        return Command(
            verb=verb,
            stdid=NO_STUDENT,
            last_stdid=NO_STUDENT,
            customer="",
            workshop=named,
            message_id=message_id[:250] if message_id else None,
            operands=operands,
        )
    most = spec.most_arguments
    if len(args) < 2:
        raise BadCommand(f"{verb} needs a student id and a customer id, got {len(args)} argument(s)")
    if len(args) > most:
        raise BadCommand(f"{verb} takes at most {most} arguments, got {len(args)}")
    stdid, last = parse_students(spec, args[0], registry)
    customer = args[1]
    if not CUSTOMER_RE.fullmatch(customer):
        raise BadCommand(f"customer id {customer[:40]!r} is not a plain identifier")
    address = parse_address(args[2]) if len(args) == 3 else None
    if fields.body_error is not None:
        raise BadCommand(fields.body_error)
    workshop = parse_workshop(fields.first_line, required=spec.workshop_required)
    message_id = fields.message_id
    return Command(
        verb=verb,
        stdid=stdid,
        last_stdid=last,
        customer=customer,
        workshop=workshop,
        email=address,
        message_id=message_id[:250] if message_id else None,
    )


def parse_operands(spec: VerbSpec, words: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    """The words after a verb without a student, by the first of its forms they fit
    (`VerbSpec.operands`): the words (a keyword in lower case) and the workshop a NAME gave;
    `BadCommand` when none fits."""
    if not words:
        if spec.operands_required:
            raise BadCommand(f"{spec.name} needs {spec.operand_choices}")
        return (), None
    for form in spec.operands:
        found = _fit_form(form.split(), words)
        if found is not None:
            return found
    takes = f"[{spec.operand_choices}]" if spec.operands else "no argument"
    raise BadCommand(f"{spec.name} takes {takes}, got {' '.join(words)[:60]!r}")


def _fit_form(shape: list[str], words: Sequence[str]) -> tuple[tuple[str, ...], str | None] | None:
    if shape and shape[-1] == REST:
        rest = len(words) - len(shape) + 1
        if not 1 <= rest <= REST_WORDS:
            return None
        found = _fit_form(shape[:-1], words[: len(shape) - 1])
        return None if found is None else ((*found[0], *words[len(shape) - 1 :]), found[1])
    if len(shape) != len(words):
        return None
    taken: list[str] = []
    named = None
    for part, word in zip(shape, words, strict=True):
        pattern = OPERAND_VALUES.get(part)
        if pattern is None:
            if not word.isascii() or word.lower() != part:
                return None
            taken.append(part)
        elif pattern.fullmatch(word) and ".." not in word:
            taken.append(word)
            named = word if part == "NAME" else named
        else:
            return None
    return tuple(taken), named


def parse_students(spec: VerbSpec, text: str, verbs: VerbRegistry) -> tuple[int, int]:
    """The first and last student of `text`: one id, or `min,max` for a verb that takes a range."""
    first, sep, last = text.partition(",")
    if sep and not spec.student_range:
        raise BadCommand(f"only {verbs.range_verbs} takes a student range, {spec.name} got {text[:40]!r}")
    if not STDID_RE.fullmatch(first) or (sep and not STDID_RE.fullmatch(last)):
        shown = f"student id {text[:40]!r} is not a number"
        raise BadCommand(shown + (" or min,max range" if spec.student_range else ""))
    low, high = int(first), int(last) if sep else int(first)
    if high < low:
        raise BadCommand(f"student range {low},{high} ends before it starts")
    return low, high


#: What a customer e-mail may not hold: the C0 and C1 control characters and DEL (whitespace
#: cannot reach here: the Subject is split on it).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def parse_address(text: str) -> str:
    """The customer's e-mail of a CREATE, kept as given.

    wodmail never uses the address (the registration app mails the person itself), and the
    platform this replaces took any word there: any value without whitespace or control
    characters is accepted as it is (an address at a `.local` or `.test` domain, or one a
    validator would rewrite), so that a CREATE is never refused for it.
    """
    if _CONTROL_CHARACTERS.search(text) or any(ch.isspace() for ch in text):
        raise BadCommand(f"customer e-mail {text[:80]!r} holds whitespace or control characters")
    return text


def parse_workshop(line: str | None, *, required: bool) -> str | None:
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
