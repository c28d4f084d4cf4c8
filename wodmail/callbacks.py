"""The callbacks to the registration app, as plain data: what a verb asks to be sent.

    PUT /student/{dbid}       {"password": ...} | {"assigned": "true"/"false"}
    PUT /customer/{customer}  {"active": ...} | {"cleaned": "true"} | {"completionPercentage": "NN"}
    PUT /workshop/{id}        {"capacity": "N"}

Each function returns a `Callback` record; a verb hands them to its `JobRun`, which queues
them in the step's own transaction, and the outbox (wodmail.outbox) delivers them. Nothing
here does I/O: verbs import this, never the HTTP client (wodmail.regapp).
"""

from __future__ import annotations

import urllib.parse

from wodmail.errors import StepFailed
from wodmail.queue.records import Callback


def path_part(what: str, value: object) -> str:
    """`value` as one segment of a URL path: percent-encoded (a "/" or "?" stays inside it);
    a value with a control character (CR, LF, ...) is refused (StepFailed) and never sent."""
    text = str(value)
    if not text or any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise StepFailed(f"{what} {text[:40]!r} is empty or holds a control character: no callback can carry it")
    return urllib.parse.quote(text, safe="")


def student(dbid: int, **fields: str) -> Callback:
    """PUT /student/{dbid} with `fields`."""
    return Callback("PUT", f"/student/{path_part('student id', dbid)}", dict(fields))


def student_password(dbid: int, password_name: str, **fields: str) -> Callback:
    """PUT /student/{dbid} {"password": <the job's password `password_name`>, ...}: the
    password itself is never stored, the outbox fills it in when it sends."""
    path = f"/student/{path_part('student id', dbid)}"
    return Callback("PUT", path, dict(fields), secret_field="password", secret_name=password_name)


def customer(customer_id: str, **fields: str) -> Callback:
    """PUT /customer/{customer_id} with `fields`."""
    return Callback("PUT", f"/customer/{path_part('customer id', customer_id)}", dict(fields))


def workshop(workshop_id: int, **fields: str) -> Callback:
    """PUT /workshop/{workshop_id} with `fields`."""
    return Callback("PUT", f"/workshop/{path_part('workshop id', workshop_id)}", dict(fields))
