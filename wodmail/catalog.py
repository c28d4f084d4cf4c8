"""The workshop catalog at run time: what a student's templates see, and `wodmail render`.

The variables a workshop's templates (and its hooks) see for one student, lowest precedence
first, as the deployment this replaces layered them (group_vars, then include_vars of the
public and the private variable file, then the extra vars of the command):

1. every key of the location, secrets excepted (SECRET_KEYS), with the folders as wodmail
   resolved them (STATEDIR, STUDENTDIR, WORKSHOPDIR, PLAYBOOKDIR, VARDIR, VARPRIVDIR);
2. the workshop's `variables` in the workshops file;
3. its public variable file, VARDIR/variables_<NAME>.yml (NAME: the command's name, so a
   challenge reads variables_CHLG-Name.yml, as CHALLENGE named it before);
4. its private variable file, VARPRIVDIR/variables_<NAME>.yml, whose values (or the whole
   file) may be encrypted with ansible-vault: the location's VAULTPWD decrypts them, as
   `--vault-password-file` did;
5. at CREATE, what the workshop's create scripts wrote for this student,
   VARPRIVDIR/pass/variables_<NAME>_<STDID>.yml (wodmail.scripts);
6. the student's values: STDID, STUDENT, MODE and MODEWS (WKSHP or CHLG), WORKSHOP (the
   content folder), CHALLENGE (the command's name), CUSTOMER, and PASSSTU for a `varpass`
   or `ldap` workshop.

A variable file replaces a key of a lower layer whole (Ansible's include_vars does not merge
mappings). Variable files are read when first needed and read again when they change on
disk (one stat per file and use), so an operator's edit is picked up without a restart.

`render_for_student` renders one workshop for one student into a folder of its own, with the
same variables and the same renderer as the daemon, touching neither the queue nor the
directory nor the registration app: `wodmail render`.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from wodmail.command import WORKSHOP_RE
from wodmail.errors import ConfigError, StepFailed
from wodmail.location import Location, Workshop, read_variable_file
from wodmail.passwords import ALPHABET, LENGTH
from wodmail.workshop import Renderer, content_name

__all__ = [
    "RenderReport",
    "VariableFiles",
    "find_workshop",
    "render_for_student",
    "template_variables",
]

_Signature = tuple[int, int, int, int]


class VariableFiles:
    """Variable files, each read once and read again when it changes (safe between threads)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[_Signature, Mapping[str, object]]] = {}
        self._lock = threading.Lock()

    def read(self, path: Path, vault_password: str | None = None) -> Mapping[str, object]:
        """The variables of `path`; empty when there is no such file. `vault_password`
        decrypts its ansible-vault values (the location's VAULTPWD).

        Raises StepFailed (naming the file and the key, never a value) when the file cannot
        be read or used; the job fails, and runs again once an operator fixed the file.
        """
        key = os.fspath(path)
        try:
            st = os.stat(key)
        except (FileNotFoundError, NotADirectoryError):
            return MappingProxyType({})
        except OSError as exc:
            raise StepFailed(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
        signature = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] == signature:
                return cached[1]
        try:
            variables: Mapping[str, object] = MappingProxyType(read_variable_file(path, None, vault_password))
        except ConfigError as exc:
            raise StepFailed(str(exc)) from None
        with self._lock:
            self._cache[key] = (signature, variables)
        return variables


_FILES = VariableFiles()
"""The variable files of this process (the daemon's and `wodmail render`'s)."""


def template_variables(
    location: Location,
    workshop: Workshop,
    stdid: int,
    password: str,
    *,
    customer: str = "",
    files: VariableFiles | None = None,
    student_variables: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """What `workshop`'s templates and hooks see for student `stdid` (see the module doc);
    `student_variables`: what the workshop's create scripts wrote for this student
    (wodmail.scripts), over the variable files and under the student's values."""
    variables: dict[str, Any] = dict(location.template_variables())
    # The folders as wodmail resolved them (the file may give them relative or with ~).
    variables.update(
        STATEDIR=str(location.state_dir),
        STUDENTDIR=str(location.student_dir),
        WORKSHOPDIR=str(location.workshop_dir),
        PLAYBOOKDIR=str(location.playbook_dir),
    )
    if location.var_dir is not None:
        variables["VARDIR"] = str(location.var_dir)
    if location.var_priv_dir is not None:
        variables["VARPRIVDIR"] = str(location.var_priv_dir)
    variables.update(workshop.variables)
    reader = files or _FILES
    for file in workshop.variable_files:
        variables.update(reader.read(file, location.vault_password))
    variables.update(student_variables or {})
    variables.update(
        STDID=stdid,
        STUDENT=f"student{stdid}",
        MODE=workshop.mode,
        MODEWS=workshop.mode,
        WORKSHOP=workshop.content_name,
        CHALLENGE=workshop.name,
        CUSTOMER=customer,
    )
    if workshop.varpass or workshop.ldap:
        variables["PASSSTU"] = password
    return variables


def find_workshop(location: Location, name: str) -> tuple[Workshop, tuple[str, ...]]:
    """The workshop `name` as `wodmail render` sees it, and notes for its author.

    A served workshop; else one the location knows but does not serve (inactive, ...); else a
    bare catalog folder (a workshop being written: no wod.yml, not booked), taken with no
    flags. Raises StepFailed when the catalog has no content for it.
    """
    if not WORKSHOP_RE.fullmatch(name) or ".." in name:
        raise StepFailed(
            f"{name[:60]!r} is not a workshop name: expected WKSHP- or CHLG- followed by letters, "
            "digits, '-', '_' or '.'"
        )
    served = location.workshops.get(name)
    if served is not None:
        return served, ()
    known = location.catalog.get(name)
    if known is not None:
        why = location.not_served.get(name, "not served")
        return known, (f"{name} is not served on location {location.name}: {why}",)
    content = location.workshop_dir / content_name(name)
    if not content.is_dir():
        raise StepFailed(f"no workshop {name} on location {location.name}: {content} is not a directory")
    bare = Workshop(
        name=name,
        first=0,
        last=-1,
        content=content,
        variable_files=location.variable_files(name),
    )
    return bare, (
        f"{name} has no wod.yml and is not in the workshops file: rendered with no flags "
        "(no varpass: templates get no PASSSTU)",
    )


@dataclass(frozen=True)
class RenderReport:
    """What `render_for_student` did."""

    workshop: Workshop
    stdid: int
    dest: Path
    """The rendered workshop: OUT/WKSHP-Name, as STUDENTDIR/student{N}/WKSHP-Name would be."""
    templated: int
    copied: int
    notes: tuple[str, ...]


def render_for_student(
    location: Location,
    name: str,
    stdid: int,
    *,
    out: Path | None = None,
    password: str | None = None,
    customer: str = "0",
    renderer: Renderer | None = None,
) -> RenderReport:
    """Render workshop `name` for student `stdid` into `out` (a new temporary folder if None).

    `out` stands for the student's home: the workshop lands in out/WKSHP-Name. `password`
    is what templates get as PASSSTU (a random one if None; never shown). Raises
    StepFailed as a CREATE would fail.
    """
    workshop, found_notes = find_workshop(location, name)
    notes = list(found_notes)
    if workshop.booked and not workshop.holds(stdid):
        notes.append(f"student {stdid} is outside {name}'s range {workshop.first}..{workshop.last}")
    if not location.student_min <= stdid <= location.student_max:
        notes.append(
            f"student {stdid} is outside STUDENTMIN..STUDENTMAX ({location.student_min}..{location.student_max})"
        )
    if password is None:
        password = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    variables = template_variables(location, workshop, stdid, password, customer=customer)
    renderer = renderer or Renderer.for_location(location)
    compiled = renderer.workshop(workshop.content)
    if out is None:
        out = Path(tempfile.mkdtemp(prefix=f"wodmail-render-{workshop.name}-student{stdid}-"))
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StepFailed(f"cannot make the folder {out}: {exc.strerror or type(exc).__name__}") from None
    dest = out / workshop.content_name
    compiled.render_into(dest, variables)
    return RenderReport(
        workshop=workshop,
        stdid=stdid,
        dest=dest,
        templated=len(compiled.templates),
        copied=len(compiled.copied),
        notes=tuple(notes),
    )
