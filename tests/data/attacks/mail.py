"""Send one unsigned command to the daemon through its doors, from each source address
given, and print what each attempt got (one JSON object a line).

The standard door is spoken with smtplib; the legacy door the way the registration app's
crude client speaks it (everything at once, bare LF). `--freebind ADDRESS` also tries to
speak as ADDRESS without owning it (IP_FREEBIND, which needs no privilege).

usage: mail.py HOST SMTPPORT LEGACYPORT SUBJECT BODY SENDER [--source ADDRESS]...
               [--freebind ADDRESS] [--door smtp|legacy]...
"""

from __future__ import annotations

import argparse
import json
import smtplib
import socket

IP_FREEBIND = 15
TIMEOUT = 5.0


def standard(args, source: str, freebind: bool = False) -> str:
    message = (
        f"From: {args.sender}\r\nTo: jupyter@example.com\r\nSubject: {args.subject}\r\n\r\n{args.body}\r\n"
    ).encode()
    if freebind:
        sock = bound_socket(source, True)
        sock.connect((args.host, args.smtp_port))
        client = smtplib.SMTP(timeout=TIMEOUT)
        client.sock = sock
        client.file = None
        code, text = client.getreply()
        if code != 220:
            return f"greeting {code} {text.decode(errors='replace')}"
    else:
        client = smtplib.SMTP(args.host, args.smtp_port, timeout=TIMEOUT, source_address=(source, 0))
    with client:
        client.ehlo("student.example.com")
        client.mail(args.sender)
        client.rcpt("jupyter@example.com")
        code, text = client.data(message)
        return f"{code} {text.decode(errors='replace')}"


def bound_socket(source: str, freebind: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    if freebind:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    sock.bind((source, 0))
    return sock


def legacy(args, source: str, freebind: bool = False) -> str:
    dialogue = (
        f"HELO api.example.com\nMAIL FROM: {args.sender}\nRCPT TO: jupyter@example.com\nDATA\n"
        f"Subject: {args.subject}\n{args.body}\n.\n"
    ).encode()
    with bound_socket(source, freebind) as sock:
        sock.connect((args.host, args.legacy_port))
        sock.sendall(dialogue)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    replies = [line for line in received.decode(errors="replace").split("\r\n") if line[:3].isdigit()]
    return replies[-1] if replies else "no reply"


def attempt(door: str, source: str, send, *extra) -> dict:
    try:
        outcome = send(*extra)
    except (OSError, smtplib.SMTPException) as exc:
        outcome = f"no exchange: {type(exc).__name__}: {exc}"
    return {"door": door, "source": source, "outcome": outcome}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("smtp_port", type=int)
    parser.add_argument("legacy_port", type=int)
    parser.add_argument("subject")
    parser.add_argument("body")
    parser.add_argument("sender")
    parser.add_argument("--source", action="append", default=[])
    parser.add_argument("--freebind")
    parser.add_argument("--door", action="append", choices=["smtp", "legacy"])
    args = parser.parse_args()
    doors = args.door or ["smtp", "legacy"]
    tries = [(source, False) for source in args.source]
    if args.freebind:
        tries.append((args.freebind, True))
    for source, freebind in tries:
        if "smtp" in doors:
            print(json.dumps(attempt("smtp", source, standard, args, source, freebind)), flush=True)
        if "legacy" in doors:
            print(json.dumps(attempt("legacy", source, legacy, args, source, freebind)), flush=True)


if __name__ == "__main__":
    main()
