"""Deploying a workshop's content into a student's home: the `Renderer` and its cache.

A site's catalog (WORKSHOPDIR) holds one folder per workshop, `WKSHP-Name/`, with
notebooks, pictures, data files and sub-folders. A student gets a copy in
`STUDENTDIR/student{N}/WKSHP-Name/` (a challenge, CHLG-Name, deploys the content of
WKSHP-Name, under that name too): the files whose name matches
`wodmail.compiling.TEMPLATED` are rendered with the student's variables, every other file
is copied byte for byte.

`Renderer.workshop` compiles a workshop once and keeps it until its files change on disk
(with Jinja's bytecode cache, `wodmail.compiling.open_code_cache`, compiled templates are
also kept on disk across restarts); `CompiledWorkshop.render_into` then only renders and
writes, once per student. All errors are `StepFailed` (a workshop fixed by an operator can be deployed
again); no message ever carries a variable's value.

The pieces, each importing only those before it:

- wodmail.rendering: the sandboxed, strict Jinja environments, what a notebook's values
  are escaped with, the fast path for text-and-lookups templates, error messages;
- wodmail.safefs: the file-system layer for folders a student owns (a folder replaced whole);
- wodmail.copysteps: the original backend's extra files (workspace, checkpoint, PDF script);
- wodmail.compiled: `CompiledWorkshop`, rendering and deploying one student's copy;
- wodmail.compiling: scanning and compiling a content folder, Jinja's bytecode cache;
- this module: the `Renderer`, which keeps compiled workshops, and `content_name`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2.sandbox import ImmutableSandboxedEnvironment

from wodmail.compiled import CompiledWorkshop
from wodmail.compiling import PRIVATE_TEMPLATED, TEMPLATED, compile_workshop, open_code_cache
from wodmail.copysteps import NO_COPY_STEPS, CopySteps
from wodmail.rendering import template_environments

if TYPE_CHECKING:
    from wodmail.location import Location

__all__ = ["Renderer", "content_name"]

log = logging.getLogger(__name__)


def content_name(workshop: str) -> str:
    """The catalog folder holding `workshop`'s content: a challenge CHLG-X lives in WKSHP-X."""
    if workshop.startswith("CHLG-"):
        return "WKSHP-" + workshop[len("CHLG-") :]
    return workshop


@dataclass
class _CacheEntry:
    workshop: CompiledWorkshop
    checked_at: float


class Renderer:
    """Compiled templates for every workshop: compiled once, reused for every student.

    `workshop(content)` returns the compiled workshop for a content folder, from a cache.
    At most once every `recheck_seconds` per workshop it stats the files and folders the
    workshop was built from, and compiles it again if one of them changed (modification
    or change time, size, inode, mode), was removed, or a folder gained an entry. It is
    safe to share between threads.
    """

    def __init__(
        self,
        *,
        optional_variables: Iterable[str] = (),
        code_cache: Path | None = None,
        recheck_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        copy_steps: CopySteps = NO_COPY_STEPS,
        private_dir: Path | None = None,
    ) -> None:
        """`optional_variables`: names a template may use undefined (they render as "");
        every other undefined name is an error. `code_cache`: a folder of wodmail's own
        where compiled templates are kept across restarts (`open_code_cache`; None: none).
        `recheck_seconds` and `clock` set how often the catalog is checked for changes
        (tests set them). `copy_steps`: what every deployment adds (wodmail.copysteps).
        `private_dir`: the private catalog (WORKSHOPPRIVDIR), whose content renders
        `PRIVATE_TEMPLATED` files only."""
        self._text_env, self._notebook_env = template_environments(optional_variables)
        self._copy_steps = copy_steps
        self._private_dir = os.path.abspath(private_dir) if private_dir is not None else None
        self._code_cache = open_code_cache(code_cache) if code_cache is not None else None
        self._recheck_seconds = recheck_seconds
        self._clock = clock
        self._cache: dict[str, _CacheEntry] = {}
        self._lock = threading.Lock()

    def workshop(self, content: Path) -> CompiledWorkshop:
        """The compiled workshop of the content folder `content` (e.g. WORKSHOPDIR/WKSHP-X).

        Raises StepFailed when the folder is missing, a template does not compile, or the
        folder holds a symlink pointing outside it (or a loop, a broken link, a device).
        """
        key = os.path.abspath(content)
        with self._lock:
            found = self._current(key)
            if found is not None:
                return found
            now = self._clock()
            started = time.perf_counter()
            private = self._private_dir is not None and os.path.dirname(key) == self._private_dir
            compiled = compile_workshop(
                Path(key),
                self._text_env,
                self._notebook_env,
                self._code_cache,
                PRIVATE_TEMPLATED if private else TEMPLATED,
            )
            compiled.copy_steps = self._copy_steps
            log.info(
                "compiled workshop %s: %d templated, %d copied files in %.1f ms",
                compiled.name,
                len(compiled.templates),
                len(compiled.copied),
                (time.perf_counter() - started) * 1000,
            )
            for warning in compiled.warnings:
                log.warning("%s", warning)
            self._cache[key] = _CacheEntry(compiled, now)
            return compiled

    def current(self, content: Path) -> CompiledWorkshop | None:
        """The compiled workshop of `content` when the cache holds it and it is current (what
        `workshop` returns without compiling); None when `workshop` would compile it."""
        with self._lock:
            return self._current(os.path.abspath(content))

    def _current(self, key: str) -> CompiledWorkshop | None:
        now = self._clock()
        entry = self._cache.get(key)
        if entry is None:
            return None
        if now - entry.checked_at < self._recheck_seconds:
            return entry.workshop
        if entry.workshop.unchanged_on_disk():
            entry.checked_at = now
            return entry.workshop
        del self._cache[key]
        return None

    @property
    def text_environment(self) -> ImmutableSandboxedEnvironment:
        """The sandboxed, strict environment text templates render in (wodmail.rendering)."""
        return self._text_env

    @classmethod
    def for_location(cls, location: Location, *, code_cache: Path | None = None) -> Renderer:
        """The renderer a location asks for: its optional variables, copy steps, private catalog."""
        deployment = location.deployment
        steps = CopySteps(
            workspace="workspace" in deployment.copy_steps,
            checkpoint="checkpoint" in deployment.copy_steps,
            pdf_script=deployment.pdf_script if "pdfscript" in deployment.copy_steps else None,
        )
        return cls(
            optional_variables=location.optional_variables,
            code_cache=code_cache,
            copy_steps=steps,
            private_dir=deployment.private_workshop_dir,
        )

    def forget(self, content: Path | None = None) -> None:
        """Drop the cached compilation of `content` (of every workshop when None)."""
        with self._lock:
            if content is None:
                self._cache.clear()
            else:
                self._cache.pop(os.path.abspath(content), None)
