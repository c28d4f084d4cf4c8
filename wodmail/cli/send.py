"""`wodmail send`: compose a command mail and submit it (wodmail.send): through the admin
socket, else signed over SMTP; `--print` prints it; `--range MIN,MAX` sends one per student."""

from __future__ import annotations

import argparse
import smtplib
import sys

from wodmail.cli.common import EX_DATAERR, EX_TEMPFAIL, EX_USAGE, Subcommands
from wodmail.errors import ConfigError, exit_code_for
from wodmail.location import Location
from wodmail.verbspec import shipped_verbs


def register(commands: Subcommands) -> None:
    """Add `send` to `commands`; its help lists the verbs as they declare themselves."""
    verbs = shipped_verbs()  # the verbs' own declarations (verbs/)
    send = commands.add_parser(
        "send",
        help="compose a command mail and submit it: admin socket, else signed over SMTP (wodmail/send.py)",
        # Raw, so the list of verbs stays on one line however many there are.
        epilog=f"verbs: {verbs.choices}\n" + "\n".join(f"  {spec.usage}" for spec in verbs.specs),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("verb", help="one of the verbs listed below")
    send.add_argument("arguments", nargs="*", help="the Subject's arguments: STUDENT [CUSTOMER [EMAIL]] (see below)")
    send.add_argument("--workshop", help="the workshop (the mail's body), e.g. WKSHP-Ansible101")
    send.add_argument("--customer", help="the customer id, added after the positional arguments")
    emailed = " or ".join(spec.name for spec in verbs.specs if spec.customer_email)
    send.add_argument("--email", help=f"the customer's address ({emailed}), added last")
    send.add_argument("--key", help="the id of the key to sign with (default: the first of SIGNINGKEYS)")
    send.add_argument("--from", dest="sender", help="the envelope and From: sender (default: user@host)")
    send.add_argument("--to", dest="recipient", default="wodmail@localhost", help="the recipient")
    send.add_argument("--print", dest="print_only", action="store_true", help="print the mail instead of sending")
    send.add_argument(
        "--smtp",
        action="store_true",
        help="submit over SMTP even where the admin socket is (signed where the location has a key)",
    )
    send.add_argument(
        "--range",
        metavar="MIN,MAX",
        help="students MIN..MAX, as wod-test-action.sh: one command each (RESET: one for the range); the"
        " arguments are then CUSTOMER [EMAIL], before the options (default customer 0)",
    )
    send.set_defaults(handler=cmd_send)


def cmd_send(location: Location, args: argparse.Namespace) -> int:
    if args.range is not None:
        return send_range(location, args)
    return send_one(location, args, list(args.arguments))


def send_range(location: Location, args: argparse.Namespace) -> int:
    """`send VERB --range MIN,MAX`: each command submitted and answered in turn (wodmail.send)."""
    from wodmail.errors import BadCommand
    from wodmail.send import RANGE_CUSTOMER, range_students

    try:
        students = range_students(location, args.verb, args.range)
    except BadCommand as exc:
        print(f"wodmail send: {exc}", file=sys.stderr)
        return EX_DATAERR
    if args.print_only:
        print("wodmail send: --range submits each command itself: it takes no --print", file=sys.stderr)
        return EX_USAGE
    rest = list(args.arguments) if args.arguments or args.customer else [RANGE_CUSTOMER]
    accepted, result = 0, 0
    for student in students:
        code = send_one(location, args, [student, *rest], label=f"student{student}: ")
        accepted += code == 0
        result = result or code
        if code == EX_TEMPFAIL:
            break  # no daemon or no door: the next ones would fail the same way
    print(f"{accepted} of {len(students)} command(s) accepted")
    return result


def send_one(location: Location, args: argparse.Namespace, arguments: list[str], label: str = "") -> int:
    """Compose one command and submit it: the admin socket, else signed over SMTP (or print it)."""
    from wodmail import admin
    from wodmail.errors import BadCommand
    from wodmail.send import ComposedMail, compose, smtp_takes_unsigned, submit

    def composed(unsigned_ok: bool) -> ComposedMail:
        return compose(
            location,
            args.verb,
            arguments,
            workshop=args.workshop,
            customer=args.customer,
            address=args.email,
            sender=args.sender,
            recipient=args.recipient,
            key_id=args.key,
            unsigned_ok=unsigned_ok,
        )

    unavailable = "--print" if args.print_only else "--smtp"
    try:
        if not args.print_only and not args.smtp:
            mail = composed(unsigned_ok=True)
            try:
                reply = admin.submit(location.state_dir, mail.as_bytes(crlf=False), args.sender or "")
            except admin.AdminUnavailable as exc:
                unavailable = str(exc)  # not root, or no daemon here: SMTP, signed unless the door needs none
            except OSError as exc:
                print(f"wodmail send: the admin socket failed: {exc}", file=sys.stderr)
                return EX_TEMPFAIL
            else:
                print(label + reply.line, file=sys.stdout if reply.accepted else sys.stderr)
                return exit_code_for(reply.code)
        try:
            # Printed, it is the reader's to judge; over SMTP, unsigned only where the door takes it.
            mail = composed(unsigned_ok=args.print_only or smtp_takes_unsigned(location, args.sender))
        except ConfigError as exc:
            raise ConfigError(
                exc.file, exc.key, f"{exc.reason}; the admin socket, which needs none, is not usable ({unavailable})"
            ) from None
    except BadCommand as exc:
        print(f"wodmail send: {label}not a valid command: {exc}", file=sys.stderr)
        return EX_DATAERR
    if args.print_only:
        if mail.key_id is None:
            print(
                "wodmail send: not signed (the location has no SIGNINGKEYS): a door takes it only from a trusted peer",
                file=sys.stderr,
            )
        sys.stdout.buffer.write(mail.as_bytes(crlf=False))
        sys.stdout.flush()
        return 0
    try:
        reply = submit(location, mail, sender=args.sender, recipient=args.recipient)
    except OSError as exc:
        where = f"{location.smtp_host}:{location.smtp_port}"
        print(f"wodmail send: cannot submit to {where}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return EX_TEMPFAIL
    except smtplib.SMTPException as exc:
        print(f"wodmail send: SMTP dialogue failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    print(label + reply.line, file=sys.stdout if reply.accepted else sys.stderr)
    return exit_code_for(reply.code)
