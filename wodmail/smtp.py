"""The standard door: a strict aiosmtpd listener on SMTPHOST:SMTPPORT.

aiosmtpd does the protocol (CRLF framing, only CRLF.CRLF ends DATA, bare-LF smuggling
refused as of 1.4.6); our handler only hands the message to the intake and returns its
answer, which comes after the durable commit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from wodmail.inbound import InboundMail, Intake

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 10


class CommandHandler:
    """aiosmtpd handler: every message goes through the intake; its reply is ours."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 too many recipients (at most {MAX_RECIPIENTS})"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        content = envelope.original_content or b""
        mail = InboundMail(
            door="smtp",
            peer=peer,
            mail_from=envelope.mail_from or "",
            data=content if isinstance(content, bytes) else content.encode(),
            rcpt_tos=tuple(envelope.rcpt_tos),
        )
        reply = await self.intake.submit(mail)
        return reply.line


async def start_smtp_server(
    intake: Intake, host: str, port: int, *, max_message_size: int, hostname: str = "wodmail"
) -> asyncio.Server:
    """Listen on host:port; each connection gets its own aiosmtpd protocol instance."""
    loop = asyncio.get_running_loop()
    handler = CommandHandler(intake)

    def factory() -> Any:
        return SMTP(
            handler,
            # The intake refuses (and records) a mail over MAXMESSAGESIZE; aiosmtpd's own cap,
            # further out, only stops a flood before it is buffered whole.
            data_size_limit=max(4 * max_message_size, 1 << 20),
            hostname=hostname,
            ident="wodmail",
            timeout=60,
            loop=loop,
        )

    return await loop.create_server(factory, host=host, port=port, reuse_address=True)
