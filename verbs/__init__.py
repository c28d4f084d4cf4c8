"""The verbs, one module each, and the registry that maps a command's verb to its module.

Every module has the same shape: `spec`, a `wodmail.verbspec.VerbSpec` (name, aliases,
arguments, checks, hook, description), and `async def run(job, services) -> str` returning
a one-line outcome. A verb module imports no I/O: its callbacks are plain data
(wodmail.callbacks), its services and step journal come as arguments.

Adding a verb: a new module here, and its name in the list below. The parser, the doors'
checks, `wodmail send`, the CLI's help, the hook names and the README's table follow.
"""

from __future__ import annotations

from wodmail.verbspec import VerbRegistry

from . import cleanup, create, drain, help, plan, purge, reset, resume, status

REGISTRY = VerbRegistry([create, cleanup, reset, purge, help, plan, status, drain, resume])
