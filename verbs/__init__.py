"""The verbs, one module each, and the registry that maps a command's verb to its module.

Every module has the same shape: `name`, `argument_description`, `description`, and
`async def run(job, services) -> str` returning a one-line outcome.
"""

from __future__ import annotations

from collections.abc import Iterable

from wodmail.services import Verb

from . import cleanup, create, purge, reset


def build_registry(verbs: Iterable[Verb]) -> dict[str, Verb]:
    """Map each verb's name to it; two verbs with one name are a programming error."""
    registry: dict[str, Verb] = {}
    for verb in verbs:
        if verb.name in registry:
            raise ValueError(f"two verbs are named {verb.name}")
        registry[verb.name] = verb
    return registry


REGISTRY: dict[str, Verb] = build_registry([create, cleanup, reset, purge])
