"""The one path every mail takes, whichever door it came in by: check, parse, commit, answer.

No real work happens here: a command is accepted (250 / exit 0) once it is committed to
the queue, refused (5xx / 65 / 77) with the exact reason and a record the operator can
read, or answered 451 / 75 when the commit itself failed.

A mail that is not a command (`is_command_mail`: its Subject's first word is no verb, it is
not signed, its body does not start with a workshop name) is a mail for a person that the
registration app sends through the same port. With RELAYHOST set, such a mail from a peer
allowed to send commands on that door is committed to the relay table and answered 250;
the jobs process passes it on (wodmail.relay). Otherwise it is refused as any bad command.
A CREATE is queued with the app's deadline, and a CLEANUP or PURGE cancels the student's
CREATE still queued, in the same transaction (wodmail.appdeadline); a CREATE for a drained
workshop (DRAIN) is refused there, 451, and recorded (wodmail.queue.drains).

A signed command, and one from the admin socket, gets a reply (wodmail.replies): where it
goes is decided here, once the sender is authenticated, and kept with the job; a refusal
after that point is answered with the refusal's record.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from wodmail import queue
from wodmail.admission import Summary
from wodmail.appdeadline import SUPERSEDES, deadline_for
from wodmail.command import WORKSHOP_RE, Command, MailFields, command_from_fields, parse_operands, read_fields
from wodmail.errors import BadCommand, NotPermitted, Refusal, TryLater
from wodmail.figures import DoorFigures
from wodmail.inbound import InboundMail, Reply
from wodmail.location import Location
from wodmail.peers import HostPeers, describe_uid, parse_address
from wodmail.received import relay_address
from wodmail.replies import Origin, refusal_reply, reply_address
from wodmail.signing import Signatures, Verified, signature_of
from wodmail.verbspec import REST, VerbRegistry, shipped_verbs

log = logging.getLogger(__name__)
refusals = Summary(log)

#: The doors a mail for a person may come in by (not `deliver`: the MTA's own pipe, nor the
#: admin socket: `wodmail send` composes commands only).
RELAY_DOORS = frozenset({"smtp", "legacy"})


def is_command_mail(fields: MailFields, verbs: VerbRegistry) -> bool:
    """Whether a mail is meant as a command (and is never relayed): it is signed, has no or
    several Subjects, its Subject's first word is a verb (for a verb without a student, its
    Subject is one of the verb's forms: "Status of your session" is a mail for a person; for
    PLAN, whose Subject is a command of its own, that command's first word is a verb: "Plan
    for your workshop" is a mail for a person too), or its body's first line names a
    workshop (a command whose Subject the app garbled, e.g. `[object Promise]`)."""
    if fields.signatures or fields.subjects != 1 or not fields.subject:
        return True
    words = fields.subject.split()
    spec = verbs.lookup(words[0])
    if spec is not None:
        if spec.student:
            return True
        try:
            parse_operands(spec, words[1:])
        except BadCommand:
            pass
        else:
            return spec.operands != (REST,) or len(words) == 1 or verbs.lookup(words[1]) is not None
    return fields.first_line is not None and WORKSHOP_RE.match(fields.first_line) is not None


def _plain_address(address: str) -> bool:
    """An envelope address that can go to the MTA as it is (no space, control, <>)."""
    return len(address) <= 320 and all(ch.isprintable() and not ch.isspace() and ch not in "<>" for ch in address)


class CommandIntake:
    """Accepts command mails into the queue for one location, and (with RELAYHOST) the
    app's mails for people into the relay table.

    `verbs`: the verbs it knows (default: the shipped ones, wodmail.verbs); each command is
    parsed and checked as its verb declares (wodmail.verbspec)."""

    def __init__(
        self,
        location: Location,
        writer: queue.Writer,
        on_enqueued: Callable[[int], None] | None = None,
        peers: HostPeers | None = None,
        verbs: VerbRegistry | None = None,
    ) -> None:
        self.location = location
        self.verbs = verbs if verbs is not None else shipped_verbs()
        self.writer = writer
        self.on_enqueued = on_enqueued
        self.signatures = Signatures.from_location(location)  # ConfigError at start-up
        self.peers = peers or HostPeers()
        self.admin_uids = frozenset({0, os.geteuid()})
        """Who may use the admin socket: root and the user wodmail runs as."""
        self.figures = DoorFigures()
        """Commands received and mails refused, counted for the metrics (wodmail.metrics)."""

    async def submit(self, mail: InboundMail) -> Reply:
        answer: tuple[Origin, str | None, str] | None = None  # once the sender is authenticated
        try:
            auth, fields = self.read(mail)
            if mail.door in RELAY_DOORS and self.location.relay.host and not is_command_mail(fields, self.verbs):
                return await self._relay(mail, auth)
            if mail.door == "admin":
                answer = self._answer(mail)  # the admin is known before the command is read
            command, verified = self.authenticated_command(mail, fields, auth)
            if verified is not None and answer is None:
                answer = self._answer(mail)
            self.validate(command)
        except Refusal as refusal:
            return await self._refuse(mail, refusal.smtp_code, refusal.reason, answer)
        reply_to = answer[1] if answer is not None else None
        store = queue.enqueue(
            command,
            mail,
            deadline_after=deadline_for(command.verb, self.location.jobs.app_deadline),
            supersedes=SUPERSEDES.get(command.verb, frozenset()),
            reply_to=reply_to,
            drainable=self.verbs.spec(command.verb).refused_while_drained,
        )
        if verified is not None:
            # The nonce is recorded in the job's own transaction: a replay is refused there.
            store = self.signatures.enqueue_once(verified, store)
        try:
            enqueued = await self.writer.run(store)
        except Refusal as refusal:
            return await self._refuse(mail, refusal.smtp_code, refusal.reason)
        except TryLater as exc:
            log.warning("could not commit a %s command from %s: %s", command.verb, mail.peer or "local", exc)
            return Reply(451, "the command could not be stored: try again later")
        if enqueued.refused is not None:  # recorded as refused in the same transaction
            refusals.note(
                logging.INFO,
                f"{mail.door} {mail.peer}",
                "refused a mail from %s on %s: 451 %s",
                mail.peer or "this host",
                mail.door,
                enqueued.refused,
            )
            self.figures.mail_refused(mail.door, 451)
            return Reply(451, enqueued.refused)
        self.figures.command_received(command.verb, mail.door, enqueued.duplicate)
        if enqueued.duplicate:
            log.info("job %d: %s from %s is a copy, not queued again", enqueued.job_id, command.verb, mail.peer)
            return Reply(250, f"already have this command as job {enqueued.job_id}")
        if answer is not None and reply_to is None:
            log.info("job %d: %s gets no reply: %s", enqueued.job_id, command.label, answer[2])
        for cancelled in enqueued.cancelled:
            log.info("job %d: cancelled, superseded by job %d (%s)", cancelled, enqueued.job_id, command.verb)
        if self.on_enqueued is not None:
            self.on_enqueued(enqueued.job_id)
        return Reply(250, f"queued as job {enqueued.job_id}")

    async def _relay(self, mail: InboundMail, auth: str | None) -> Reply:
        """Commit a mail for a person to the relay table (wodmail.relay); 250 once committed.
        Only from a peer allowed to send commands on this door; nothing of it is logged but
        its size, its peer and its id."""
        try:
            if auth is None:
                try:
                    auth = self.authorise(mail)
                except NotPermitted as exc:
                    raise NotPermitted(f"relaying denied: {exc.reason}") from None
            if not mail.rcpt_tos:
                raise BadCommand("a mail to relay needs a recipient")
            if not all(_plain_address(address) for address in (mail.mail_from, *mail.rcpt_tos)):
                raise BadCommand("not relayed: the sender or a recipient is not a plain address")
        except Refusal as refusal:
            return await self._refuse(mail, refusal.smtp_code, refusal.reason)
        try:
            relay_id = await self.writer.run(queue.relay_mail(mail, auth))
        except TryLater as exc:
            log.warning("could not commit a mail to relay from %s: %s", mail.peer or "local", exc)
            return Reply(451, "the mail could not be stored: try again later")
        log.info(
            "relay %d: accepted from %s on %s: %d bytes, %d recipient(s)",
            relay_id,
            mail.peer or "this host",
            mail.door,
            len(mail.data),
            len(mail.rcpt_tos),
        )
        if self.on_enqueued is not None:
            self.on_enqueued(relay_id)  # wakes the jobs process, which relays too
        return Reply(250, f"accepted for relay as mail {relay_id}")

    async def record_incomplete(self, mail: InboundMail, reason: str) -> None:
        """A mail cut off before its end (legacy door): not a command, but kept for the operator."""
        await self._refuse(mail, 451, reason)

    async def record_refused(self, mail: InboundMail, code: int, reason: str) -> None:
        """A mail the door refused by itself (legacy door: what followed the first command)."""
        await self._refuse(mail, code, reason)

    def _answer(self, mail: InboundMail) -> tuple[Origin, str | None, str]:
        """For an authenticated sender: the mail's header fields, where the reply goes (None:
        nowhere), and why not (wodmail.replies)."""
        origin = Origin.of(mail.data)
        address, why = reply_address(mail, origin, self.location)
        return origin, address, why

    async def _refuse(
        self, mail: InboundMail, code: int, reason: str, answer: tuple[Origin, str | None, str] | None = None
    ) -> Reply:
        self.figures.mail_refused(mail.door, code)
        # Once per peer and interval, with a count: a flood of refusals must not flood the log.
        refusals.note(
            logging.INFO,
            f"{mail.door} {mail.peer}",
            "refused a mail from %s on %s: %d %s",
            mail.peer or "this host",
            mail.door,
            code,
            reason,
        )
        record = queue.record_refusal(mail, code, reason)
        replied = answer is not None and answer[1] is not None and code >= 500  # a 4xx is tried again
        if replied and answer is not None and answer[1] is not None:
            record = queue.refusal_replied(record, refusal_reply(self.location, answer[1], answer[0], code, reason))
        try:
            refused_id = await self.writer.run(record)
        except TryLater:
            # Refusing without a record would lose the mail: let the sender keep it instead.
            return Reply(451, "the refusal could not be recorded: try again later")
        if replied and self.on_enqueued is not None:
            self.on_enqueued(refused_id)  # wakes the jobs process, which relays the reply
        return Reply(code, reason)

    def check(self, mail: InboundMail) -> Command:
        """Authorise, parse and validate; raise a `Refusal` that says what was wrong."""
        return self.check_signed(mail)[0]

    def check_signed(self, mail: InboundMail) -> tuple[Command, Verified | None]:
        """`check`, and the verified signature whose nonce the commit must record (if signed).

        A signed command (X-Wodmail-Signature, see wodmail/signing.py) is accepted from any
        peer and sender on the standard door and `deliver`; an unsigned one only as
        LEGACYPEERS / TRUSTEDPEERS / TRUSTEDSENDERS allow. The legacy door stays open only
        to LEGACYPEERS, and the admin socket to root and wodmail's user, signed or not. A
        signature that is present but wrong is refused, whoever sent it.
        """
        auth, fields = self.read(mail)
        return self.command_of(mail, fields, auth)

    def read(self, mail: InboundMail) -> tuple[str | None, MailFields]:
        """The door's own check (legacy, admin: who may send at all), the size cap, and the
        fields of the mail; how the sender was trusted, if the door said."""
        auth = self.authorise(mail) if mail.door in ("legacy", "admin") else None
        if len(mail.data) > self.location.max_message_size:
            raise BadCommand(
                f"the mail is {len(mail.data)} bytes, more than the {self.location.max_message_size} a command may have"
            )
        return auth, read_fields(mail.data)

    def command_of(self, mail: InboundMail, fields: MailFields, auth: str | None) -> tuple[Command, Verified | None]:
        """The command of a mail's fields, authorised and validated (see `check_signed`)."""
        command, verified = self.authenticated_command(mail, fields, auth)
        self.validate(command)
        return command, verified

    def authenticated_command(
        self, mail: InboundMail, fields: MailFields, auth: str | None
    ) -> tuple[Command, Verified | None]:
        """The command of a mail's fields, its sender authorised (not yet `validate`d)."""
        signature = signature_of(fields)
        verified = None
        if signature is None:
            if auth is None:
                auth = self.authorise(mail)
            command = command_from_fields(fields, self.verbs)
        else:
            command = command_from_fields(fields, self.verbs)
            verified = self.signatures.verify(signature, command, time.time())
            auth = verified.auth if auth is None else f"{verified.auth} ({auth})"
        return command.with_auth(auth), verified

    def authorise(self, mail: InboundMail) -> str:
        """Who may send unsigned commands, per door; returns how the sender was trusted.

        A peer on this host (loopback, or one of the host's own addresses) is trusted only
        when the kernel says root or another of LOCALPEERUSERS opened the connection: on a
        Jupyter host every student can connect from 127.x. `deliver` trusts what this host's
        MTA wrote in the topmost Received header, never the pipe itself (wodmail.received).
        """
        location = self.location
        if mail.door == "admin":
            client = mail.local_client
            if client is None or client.uid is None or client.uid not in self.admin_uids:
                who = client.describe() if client is not None else "an unknown user"
                raise NotPermitted(f"the admin socket is for root and wodmail's own user, not {who}")
            return f"admin socket, {describe_uid(client.uid)} ({client.via})"
        if mail.door == "legacy":
            if mail.peer is None or not location.peer_is_legacy(mail.peer):
                raise NotPermitted(f"{mail.peer} may not send commands on the legacy port (not in LEGACYPEERS)")
            return f"legacy peer {mail.peer}{self._local_user(mail, 'LEGACYPEERS')}"
        if mail.door == "deliver":
            if not location.trust_local:
                raise NotPermitted("unsigned commands from the local pipe are not allowed (TRUSTEDPEERS lacks 'local')")
            where = self._relayed_by_mta(mail)
        else:
            login = getattr(mail, "login", "")  # smtp.AuthenticatedMail: SMTP AUTH over TLS
            if login:
                return f"SMTP AUTH user {login[:64]}"
            if mail.peer is None or not location.peer_is_trusted(mail.peer):
                raise NotPermitted(f"{mail.peer} may not send unsigned commands (not in TRUSTEDPEERS)")
            where = f"trusted peer {mail.peer}{self._local_user(mail, 'TRUSTEDPEERS')}"
        if not location.sender_is_trusted(mail.mail_from):
            shown = "".join(ch if ch.isprintable() else "?" for ch in mail.mail_from[:80]) or "<>"
            raise NotPermitted(f"sender {shown} may not send unsigned commands (not in TRUSTEDSENDERS)")
        return where

    def _local_user(self, mail: InboundMail, key: str) -> str:
        """Nothing for a remote peer; ", user NAME (uid N)" when a trusted user opened a local
        connection; `NotPermitted` when anyone else did (a student), or nobody can say."""
        client = mail.local_client
        if client is None:
            address = parse_address(mail.peer or "")
            if address is None or not address.is_loopback:
                return ""
            who = "a user nobody asked the kernel about"  # no door made this mail
        elif client.uid is not None and client.uid in self.location.local_peer_uids:
            return f", {describe_uid(client.uid)}"
        else:
            who = client.describe()
        raise NotPermitted(
            f"{mail.peer} is on this host and the connection was opened by {who}: local users are not "
            f"trusted peers whatever {key} says (only root and wodmail's user are; sign the command, "
            "or use `wodmail send` as root)"
        )

    def _relayed_by_mta(self, mail: InboundMail) -> str:
        """`deliver`: the address this host's MTA received the mail from, if trusted."""
        relay = relay_address(mail.data)
        if self.peers.is_host_address(relay):
            raise NotPermitted(
                f"the topmost Received header names [{relay}], an address on this host: the mail was "
                "submitted on this host, and local users are not trusted (sign the command, or use "
                "`wodmail send` as root)"
            )
        if not self.location.peer_is_trusted(relay):
            raise NotPermitted(
                f"the topmost Received header names [{relay}], which may not send unsigned commands "
                "(not in TRUSTEDPEERS)"
            )
        return f"local pipe, relayed by the MTA from {relay}"

    def validate(self, command: Command) -> None:
        """The command against this location (`validate_command`)."""
        validate_command(self.location, self.verbs, command)


def validate_command(location: Location, verbs: VerbRegistry | None, command: Command) -> None:
    """`command` against `location`: its workshop, its students' ranges, and its verb's own
    checks (`VerbSpec.refusal`: a reset-only verb, the verb's `checks`); BadCommand saying
    what is wrong. The door's check, and PLAN's (wodmail.plan); `verbs`: default the shipped ones."""
    registry = verbs if verbs is not None else shipped_verbs()
    for stdid in set(command.student_ends):
        if not location.student_min <= stdid <= location.student_max:
            raise BadCommand(
                f"student {stdid} is outside this location's range {location.student_min}..{location.student_max}"
            )
    if command.workshop is None:
        return
    workshop = location.workshop(command.workshop)
    if workshop is None:
        raise BadCommand(f"unknown workshop {command.workshop!r} on location {location.name}")
    for stdid in set(command.student_ends):
        if not workshop.holds(stdid):
            raise BadCommand(
                f"student {stdid} is outside {workshop.name}'s booked range {workshop.first}..{workshop.last}"
            )
    refusal = registry.spec(command.verb).refusal(command, workshop)
    if refusal is not None:
        raise BadCommand(refusal)
