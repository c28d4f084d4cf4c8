"""The one path every mail takes, whichever door it came in by: check, parse, commit, answer.

No real work happens here: a command is accepted (250 / exit 0) once it is committed to
the queue, refused (5xx / 65 / 77) with the exact reason and a record the operator can
read, or answered 451 / 75 when the commit itself failed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from wodmail import queue
from wodmail.admission import Summary
from wodmail.command import Command, command_from_fields, read_fields
from wodmail.errors import BadCommand, NotPermitted, Refusal, TryLater
from wodmail.inbound import InboundMail, Reply
from wodmail.location import Location
from wodmail.peers import HostPeers, describe_uid, parse_address
from wodmail.received import relay_address
from wodmail.signing import Signatures, Verified, signature_of
from wodmail.verbspec import VerbRegistry, shipped_verbs

log = logging.getLogger(__name__)
refusals = Summary(log)


class CommandIntake:
    """Accepts command mails into the queue for one location.

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

    async def submit(self, mail: InboundMail) -> Reply:
        try:
            command, verified = self.check_signed(mail)
        except Refusal as refusal:
            return await self._refuse(mail, refusal.smtp_code, refusal.reason)
        store = queue.enqueue(command, mail)
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
        if enqueued.duplicate:
            log.info("job %d: %s from %s is a copy, not queued again", enqueued.job_id, command.verb, mail.peer)
            return Reply(250, f"already have this command as job {enqueued.job_id}")
        if self.on_enqueued is not None:
            self.on_enqueued(enqueued.job_id)
        return Reply(250, f"queued as job {enqueued.job_id}")

    async def record_incomplete(self, mail: InboundMail, reason: str) -> None:
        """A mail cut off before its end (legacy door): not a command, but kept for the operator."""
        await self._refuse(mail, 451, reason)

    async def record_refused(self, mail: InboundMail, code: int, reason: str) -> None:
        """A mail the door refused by itself (legacy door: what followed the first command)."""
        await self._refuse(mail, code, reason)

    async def _refuse(self, mail: InboundMail, code: int, reason: str) -> Reply:
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
        try:
            await self.writer.run(queue.record_refusal(mail, code, reason))
        except TryLater:
            # Refusing without a record would lose the mail: let the sender keep it instead.
            return Reply(451, "the refusal could not be recorded: try again later")
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
        auth = self.authorise(mail) if mail.door in ("legacy", "admin") else None
        if len(mail.data) > self.location.max_message_size:
            raise BadCommand(
                f"the mail is {len(mail.data)} bytes, more than the {self.location.max_message_size} a command may have"
            )
        fields = read_fields(mail.data)
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
        command = command.with_auth(auth)
        self.validate(command)
        return command, verified

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
        """The command against this location: its workshop, its students' ranges, and its
        verb's own checks (`VerbSpec.refusal`: a reset-only verb, the verb's `checks`)."""
        location = self.location
        for stdid in {command.stdid, command.last_stdid}:
            if not location.student_min <= stdid <= location.student_max:
                raise BadCommand(
                    f"student {stdid} is outside this location's range {location.student_min}..{location.student_max}"
                )
        if command.workshop is None:
            return
        workshop = location.workshop(command.workshop)
        if workshop is None:
            raise BadCommand(f"unknown workshop {command.workshop!r} on location {location.name}")
        for stdid in {command.stdid, command.last_stdid}:
            if not workshop.holds(stdid):
                raise BadCommand(
                    f"student {stdid} is outside {workshop.name}'s booked range {workshop.first}..{workshop.last}"
                )
        refusal = self.verbs.spec(command.verb).refusal(command, workshop)
        if refusal is not None:
            raise BadCommand(refusal)
