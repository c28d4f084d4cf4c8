"""`wodmail send`: compose a command mail and submit it, so no admin writes one by hand.

    wodmail send CREATE 5 --customer c5 --workshop WKSHP-Ansible101 [--email a@example.com]
    wodmail send RESET 1,20 c7 --workshop WKSHP-Reset
    wodmail send PURGE 5 c5 --print | wodmail deliver
    wodmail send CREATE --range 1,20 --workshop WKSHP-Ansible101      (customer 0, as below)

The Subject is the verb and its arguments (positional, or `--customer` / `--email` added
after them); the body is the workshop. What a verb takes is what it declares in the
registry (wodmail.verbspec): the mail is checked against that, then parsed back with the
daemon's own parser before it is signed, so a mistake is reported here, and signed with
the first of the location's SIGNINGKEYS (or `--key ID`) for this location's name.

Where it goes: to the daemon's admin socket (STATEDIR/admin.sock, wodmail.admin) when this
user can open it (root, or wodmail's own user, on the daemon's host): no key is needed
there, the daemon knows who is asking (a key is still used when the location has one).
Otherwise over SMTP to SMTPHOST:SMTPPORT (STARTTLS when the door offers it), signed; or
printed (`--print`, signed) for `wodmail deliver` or any other pipe. `--smtp` skips the
admin socket. Without SIGNINGKEYS, a command goes over SMTP unsigned where the door takes
it from this user (`smtp_takes_unsigned`: the embedded default's loopback, for root or
wodmail's user, e.g. `sudo wodmail send` while the daemon runs as another user, in a STATEDIR
root's location does not name), and `--print` prints it unsigned. The key never appears on a
command line: it is read from the location (env: / file:).

`--range MIN,MAX` sends what the original backend's test script (wod-test-action.sh) sent:
one command per student MIN..MAX, each submitted and answered before the next, except for a
verb that takes a range itself (RESET: one command for the range); the arguments are then
the customer (default "0", the script's) and the e-mail. A range that is not MIN,MAX (or
one number), is reversed, or leaves STUDENTMIN..STUDENTMAX is refused before anything is
sent (`range_students`).
"""

from __future__ import annotations

import email.policy
import getpass
import os
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from wodmail.command import Command, parse_command
from wodmail.errors import BadCommand, ConfigError
from wodmail.inbound import Reply
from wodmail.location import Location
from wodmail.signing import HEADER, Signatures, SigningKey, sign
from wodmail.verbspec import VerbRegistry, shipped_verbs

DEFAULT_RECIPIENT = "wodmail@localhost"
SUBMIT_TIMEOUT = 30.0
RANGE_CUSTOMER = "0"
"""The customer of `--range` commands when none is given: what wod-test-action.sh sent."""
_RANGE = re.compile(r"([0-9]{1,9})(?:,([0-9]{1,9}))?")


@dataclass(frozen=True)
class ComposedMail:
    """A command mail, signed or not, ready to submit or print."""

    command: Command
    message: EmailMessage
    key_id: str | None
    """The key it is signed with; None: not signed (only the admin socket takes it)."""

    def as_bytes(self, *, crlf: bool) -> bytes:
        """The mail's bytes: CRLF line endings for SMTP, LF for a pipe."""
        policy = email.policy.SMTP if crlf else email.policy.default
        return self.message.as_bytes(policy=policy)


def default_sender() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "wodmail"
    return f"{user}@{socket.gethostname() or 'localhost'}"


def smtp_takes_unsigned(location: Location, sender: str | None = None) -> bool:
    """Whether the standard door would take this user's unsigned command: `submit` connects
    from an address of TRUSTEDPEERS (loopback in the embedded default), as one of the users
    a connection from this host counts for (LOCALPEERUSERS), with a trusted sender. The door
    decides in the end; this only spares a signature it does not need."""
    return (
        location.peer_is_trusted(submit_address(location))
        and os.geteuid() in location.local_peer_uids
        and location.sender_is_trusted(sender or default_sender())
    )


def submit_address(location: Location, host: str | None = None) -> str:
    """The address `submit` connects to: `host`, else SMTPHOST; loopback for "every address"."""
    where = host or location.smtp_host
    if where in ("", "0.0.0.0"):
        return "127.0.0.1"
    return "::1" if where == "::" else where


def signing_key(location: Location, wanted: str | None = None) -> SigningKey:
    """The key to sign with: `wanted` (a key id), else the first of SIGNINGKEYS."""
    keys = Signatures.from_location(location).keys
    if not keys:
        raise ConfigError(location.file, "SIGNINGKEYS", "no signing key: `wodmail send` needs one to sign with")
    if wanted is None:
        return keys[0]
    for key in keys:
        if key.id == wanted:
            return key
    known = ", ".join(key.id for key in keys)
    raise ConfigError(location.file, "SIGNINGKEYS", f"no key with id {wanted[:20]!r} (known: {known})")


def compose(
    location: Location,
    verb: str,
    arguments: list[str],
    *,
    workshop: str | None,
    customer: str | None = None,
    address: str | None = None,
    sender: str | None = None,
    recipient: str = DEFAULT_RECIPIENT,
    key_id: str | None = None,
    unsigned_ok: bool = False,
    verbs: VerbRegistry | None = None,
) -> ComposedMail:
    """Build and sign the mail; `BadCommand` if it is not a command, `ConfigError` without a key.

    With `unsigned_ok` (for the admin socket), a location without SIGNINGKEYS gives an
    unsigned mail instead of the error. `verbs`: the verbs to know (default: the shipped ones)."""
    registry = verbs if verbs is not None else shipped_verbs()
    check_arguments(registry, verb, arguments, workshop=workshop, customer=customer, address=address)
    words = [verb, *arguments]
    if customer is not None:
        words.append(customer)
    if address is not None:
        words.append(address)
    for word in words:
        if not word or any(ch.isspace() or ord(ch) < 32 for ch in word):
            raise BadCommand(f"argument {word[:40]!r} is empty or holds spaces or control characters")
    message = EmailMessage()
    message["From"] = sender or default_sender()
    message["To"] = recipient
    message["Subject"] = " ".join(words)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=socket.gethostname() or "localhost")
    message.set_content((workshop or "") + "\n")
    command = parse_command(message.as_bytes(policy=email.policy.default), registry)
    if unsigned_ok and key_id is None and not Signatures.from_location(location).keys:
        return ComposedMail(command, message, None)
    key = signing_key(location, key_id)
    signature = sign(command, location.name, key)
    message[HEADER] = signature.header_value
    return ComposedMail(command, message, key.id)


def check_arguments(
    verbs: VerbRegistry,
    verb: str,
    arguments: list[str],
    *,
    workshop: str | None,
    customer: str | None,
    address: str | None,
) -> None:
    """What `wodmail send` can say better than the parser: the options the verb's
    declaration does not take, or needs. The parser checks the rest."""
    spec = verbs.lookup(verb)
    if spec is None:
        raise BadCommand(f"unknown verb {verb[:40]!r}: expected one of {verbs.words}")
    if not spec.student and (customer is not None or (workshop is not None and not spec.reads_body)):
        raise BadCommand(f"{spec.name} takes no --workshop or --customer; it takes {spec.argument_description}")
    if address is not None and not spec.customer_email:
        raise BadCommand(f"{spec.name} takes no customer e-mail (--email); it takes {spec.argument_description}")
    if workshop is None and spec.workshop_required:
        raise BadCommand(f"{spec.name} needs --workshop NAME; it takes {spec.argument_description}")
    given = len(arguments) + (customer is not None) + (address is not None)
    if given > spec.most_arguments:
        raise BadCommand(
            f"{spec.name} takes at most {spec.most_arguments} arguments, got {given}; it takes"
            f" {spec.argument_description}"
        )


def range_students(location: Location, verb: str, text: str, verbs: VerbRegistry | None = None) -> list[str]:
    """The student argument of each command `send VERB --range MIN,MAX` sends, in order: the
    range itself, once, for a verb that takes one (RESET); else each student's number.

    `BadCommand`, with the reason, for an unknown verb or a bad range (`parse_range`)."""
    registry = verbs if verbs is not None else shipped_verbs()
    spec = registry.lookup(verb)
    if spec is None:
        raise BadCommand(f"unknown verb {verb[:40]!r}: expected one of {registry.words}")
    if not spec.student:
        raise BadCommand(f"{spec.name} acts on no student: --range is for the verbs that do")
    first, last = parse_range(location, text)
    if spec.student_range:
        return [f"{first},{last}" if first != last else str(first)]
    return [str(stdid) for stdid in range(first, last + 1)]


def parse_range(location: Location, text: str) -> tuple[int, int]:
    """`MIN,MAX` (or one number, MIN): the first and last student; `BadCommand` when it is not
    that, MIN is above MAX, or the range leaves this host's STUDENTMIN..STUDENTMAX."""
    match = _RANGE.fullmatch(text.strip())
    if match is None:
        raise BadCommand(f"--range {text[:40]!r}: expected MIN,MAX (two student numbers, e.g. 1,20) or one number")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if first > last:
        raise BadCommand(f"--range {first},{last}: MIN {first} is above MAX {last}")
    low, high = location.student_min, location.student_max
    if first < low or last > high:
        raise BadCommand(f"--range {first},{last}: outside this host's students {low}..{high} (STUDENTMIN..STUDENTMAX)")
    return first, last


def submit(
    location: Location,
    mail: ComposedMail,
    *,
    sender: str | None = None,
    recipient: str = DEFAULT_RECIPIENT,
    host: str | None = None,
    port: int | None = None,
    timeout: float = SUBMIT_TIMEOUT,
) -> Reply:
    """Submit over SMTP to the location's standard door; return the DATA reply.

    An SMTP refusal comes back as a `Reply` (5xx / 4xx); a door that cannot be reached
    raises `OSError`.
    """
    where = submit_address(location, host)
    with smtplib.SMTP(where, port or location.smtp_port, timeout=timeout) as client:
        client.ehlo()
        if client.has_extn("starttls"):
            # The door's certificate is the site's own: the signature, not TLS, authenticates.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            client.starttls(context=context)
            client.ehlo()
        data = mail.as_bytes(crlf=True)
        code, text = client.mail(sender or str(mail.message["From"]))
        if code != 250:
            return Reply(code, text.decode("utf-8", "replace"))
        code, text = client.rcpt(recipient)
        if code not in (250, 251):
            return Reply(code, text.decode("utf-8", "replace"))
        try:
            code, text = client.data(data)
        except smtplib.SMTPDataError as exc:
            code, error = exc.smtp_code, exc.smtp_error
            text = error if isinstance(error, bytes) else str(error).encode()
        return Reply(code, text.decode("utf-8", "replace"))
