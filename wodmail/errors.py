"""Every error wodmail raises on purpose, and what kind it is.

    WodmailError
    ├── ConfigError      the location or workshops file is wrong: start-up stops, one line says
    │                    which file, which key and why
    ├── Refusal          a command mail refused at the door; nothing is queued, the mail is
    │   │                recorded for the operator
    │   ├── BadCommand   not a valid command (syntax, unknown verb or workshop, id out of range):
    │   │                SMTP 554 / sysexits 65 (EX_DATAERR)
    │   └── NotPermitted the sender may not send commands: SMTP 550 / sysexits 77 (EX_NOPERM)
    ├── TryLater         the command could not be committed durably: SMTP 451 / sysexits 75
    │                    (EX_TEMPFAIL); the sender keeps the mail and tries again
    ├── TransientError   a step failed for a reason that may pass (a server down, busy or slow):
    │                    the job is retried with backoff until its deadline, then fails
    ├── AppRefused       the registration app answered a client error (4xx) to a callback that
    │                    retrying the same call will not change: the outbox tries it a few more
    │                    times, then sets it aside for an operator (`wodmail retry`)
    └── StepFailed       a step failed for good (a template error, a missing directory entry, a
                         refused bind): the job fails at once and stays visible; an operator
                         may retry it after fixing the cause

Every message names the thing that was wrong. None ever carries a secret.
"""

from __future__ import annotations


class WodmailError(Exception):
    """Base of every error wodmail raises on purpose."""


class ConfigError(WodmailError):
    """The location, its workshops file or a workshop's content is wrong."""

    def __init__(self, file: object, key: str | None, reason: str) -> None:
        self.file = str(file)
        self.key = key
        self.reason = reason
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + reason)


class Refusal(WodmailError):
    """A mail refused at the door; `smtp_code` and `exit_code` say how to answer."""

    smtp_code = 554
    exit_code = 65

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BadCommand(Refusal):
    """The mail is not a valid command."""

    smtp_code = 554
    exit_code = 65


class NotPermitted(Refusal):
    """The sender is not allowed to send this command."""

    smtp_code = 550
    exit_code = 77


class TryLater(WodmailError):
    """The command could not be committed; the sender should try again later."""

    smtp_code = 451
    exit_code = 75


class TransientError(WodmailError):
    """A step failed for a reason that may pass; the job is retried with backoff."""


class AppRefused(WodmailError):
    """The app answered a client error that retrying the same call will not change."""

    def __init__(self, status: int, what: str) -> None:
        self.status = status
        super().__init__(f"{what}: the registration app answered {status}")


class StepFailed(WodmailError):
    """A step failed for good; the job fails and waits for an operator."""


def exit_code_for(smtp_code: int) -> int:
    """The sysexits code for an SMTP reply (`deliver`, `send`): 0 taken, 77 not permitted,
    65 any other permanent refusal (bad data, too big), 75 try again later."""
    if 200 <= smtp_code < 300:
        return 0
    if smtp_code == NotPermitted.smtp_code:
        return NotPermitted.exit_code
    if smtp_code >= 500:
        return BadCommand.exit_code
    return TryLater.exit_code
