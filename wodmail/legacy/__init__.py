"""The legacy door: a small SMTP listener for the registration app's crude client.

The registration app in use today opens a TCP connection and writes its whole dialogue at
once, before the server's greeting::

    HELO <apidb>\\nMAIL FROM: <addr>\\nRCPT TO: <addr>\\nDATA\\nSubject: <command>\\n<body>\\n.\\n

with bare LF line endings, no angle brackets, no blank line before the body and no QUIT. It
never reads the replies: it destroys the socket as soon as anything arrives, which resets the
connection while its bytes may still be in flight. A stream-based SMTP server loses every such
mail (the reader raises the connection error before handing over what it had buffered). This
door never loses one:

* It is a plain `asyncio.Protocol`: every byte the kernel hands over is kept in our own buffer
  before anything else happens, and a reset (`connection_lost` with an exception) only marks
  the end of input; everything buffered is still processed.
* **Talk before the greeting** (bytes within `LegacyLimits.greeting_delay` of connecting) marks
  the legacy client. The door then says *nothing* until the transaction is read to its ``.``
  line (or the input ends) and the intake has committed it; then it writes every reply at once
  (220, the 250s, 354, the intake's reply, 221 if QUIT was sent) and closes. Answering any
  earlier would make the client read, reset, and lose its unsent bytes. In this "batch" mode the
  connection ends once everything received has been processed, at least one DATA has ended and
  no new transaction has begun; a client that talks before the greeting and then waits for a
  reply gets none until the idle timeout.
* **Silence** for `greeting_delay` means a standard client: the door greets and answers one
  reply per command, so smtplib (CRLF, ``<>``, QUIT) works on it too.
* Lines are split on LF, one trailing CR is stripped; verbs are case-insensitive; ``MAIL FROM:``
  and ``RCPT TO:`` take the address with or without ``<>`` and with or without a space after
  the colon (ESMTP parameters after it are ignored). HELO/EHLO are optional. DATA ends at a line
  that is exactly ``.``; ``..x`` is unstuffed to ``.x``. The message handed on has LF line
  endings: every line, the last included, ends with ``\\n``.
* At each end of DATA the door builds one `InboundMail` (door ``"legacy"``) and awaits
  `Intake.submit`; the reply line is the intake's. Whether this peer may send at all is the
  intake's decision (it answers 550), not the door's. For a client on this host the door
  asks the kernel, when the connection is accepted, who opened it (`wodmail.peers`): on a
  host with students, 127.x says nothing about who is sending. The submit runs in its own
  task, shielded from the connection: it runs to completion whether or not the client is
  still there, and writes to a closed transport are skipped.
* **Input that ends inside DATA** (EOF, reset, or a timeout before the ``.`` line) is never
  submitted: the mail may be truncated, and a truncated command (a cut-off student id, say)
  must not run. It is recorded instead: ``intake.record_incomplete(mail, reason)`` is called if
  the intake has that method (it may be sync or async), else a warning names the peer and the
  byte count. A final line without its LF at EOF still counts as a line, so a ``.`` whose LF
  got lost still ends the DATA.
* **One command per connection.** The app never sends two; a second one is an injection
  (a ``.`` line inside a body ends the mail there, and what follows would read as a new
  transaction). So nothing after the first end of DATA is run: QUIT, NOOP and RSET are
  answered, anything else (up to `max_message` bytes of it, all of what is buffered) is
  recorded as refused, ``intake.record_refused(mail, 554, reason)`` if the intake has that
  method, and answered once with 554; a standard client is then disconnected.
* Limits (`LegacyLimits`): message size (552, the rest of that DATA discarded, nothing
  submitted), command line length (500), idle and total time (the connection is closed
  after whatever complete input it holds is processed; 421 in conversation mode). A client
  sending one byte a second is cut by the total timeout.
* Nothing from a message (it may hold secrets) is logged: only the peer, sizes and reply codes.
* **Admission before reading** (`LegacyPolicy`, from the location): a peer outside LEGACYPEERS
  is answered 554 and closed when the connection is accepted, before a byte is read, and
  holds no slot. A listed address may hold `LegacyLimits.peer_connections` connections at
  once (421 beyond); every connection takes a slot of the `ConnectionBudget` the doors share
  (wodmail.admission): a trusted one, or a stranger's for a local user outside
  LOCALPEERUSERS (a student on loopback). Refusals are logged once per interval, with counts.

Shutdown: `drain(server)` (or `LegacyDoor.drain`) closes the listener, lets open connections
finish for `grace` seconds (default 1), ends the rest (processing what they already sent), and
returns once every connection has closed and every submit and record has returned::

    server = await start_legacy_server(intake, host, port)
    ...
    await drain(server, grace=2.0)

The package, one concern a module:

    door       the listener: limits, policy, the shared state, admission, the drain
    framing    reading the dialogue: bytes to lines, the addresses of MAIL FROM:/RCPT TO:
    handoff    the submit to the intake that outlives the connection, and the records
    session    one connection: callbacks, timers, replies, the SMTP dialogue
"""

from __future__ import annotations

from wodmail.admission import ConnectionBudget, Listener
from wodmail.inbound import Intake
from wodmail.legacy.door import LegacyDoor, LegacyLimits, LegacyPolicy, drain, summary
from wodmail.legacy.session import MAX_RECIPIENTS, ONE_COMMAND, LegacySession
from wodmail.peers import HostPeers

__all__ = [
    "MAX_RECIPIENTS",
    "ONE_COMMAND",
    "LegacyDoor",
    "LegacyLimits",
    "LegacyPolicy",
    "drain",
    "start_legacy_server",
]

_DEFAULT_LIMITS = LegacyLimits()


async def start_legacy_server(
    intake: Intake,
    host: str,
    port: int,
    limits: LegacyLimits = _DEFAULT_LIMITS,
    host_peers: HostPeers | None = None,
    policy: LegacyPolicy | None = None,
    budget: ConnectionBudget | None = None,
) -> Listener:
    """Start the legacy door on host:port. Shut it down with `drain(server)`. Without a
    `policy` every peer is admitted (the intake still decides who may send commands)."""
    door = LegacyDoor(intake, limits, host_peers, policy, budget)
    server = await Listener.start(lambda: LegacySession(door), host, port, summary, "legacy")
    door.listening(server)
    return server
