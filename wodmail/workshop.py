"""Deploying a workshop's content into a student's home.

A site's catalog (WORKSHOPDIR) holds one folder per workshop, `WKSHP-Name/`, with
notebooks, pictures, data files and sub-folders. A student gets a copy in
`STUDENTDIR/student{N}/WKSHP-Name/` (a challenge, CHLG-Name, deploys the content of
WKSHP-Name, under that name too): the files whose name matches `TEMPLATED` are rendered
with the student's variables, every other file is copied byte for byte.

The rendering matches what Ansible's `template` module did for the platform this replaces
(Jinja2, `trim_blocks=True`, `lstrip_blocks=False`, `newline_sequence='\\n'`, the trailing
newlines of the source file kept, `None` rendered as an empty string, and
`hostvars[inventory_hostname]['KEY']` resolving to the variable `KEY`), with three changes:

- it is sandboxed (`ImmutableSandboxedEnvironment`): a template cannot reach Python
  internals or change the variables;
- it is strict: an undefined variable is an error naming the file, the line and the
  variable (only the `optional_variables` of the `Renderer` may be left undefined);
- in a notebook every inserted value is escaped for a JSON string, so a value holding
  quotes, backslashes or newlines cannot break the notebook, and a rendered notebook that
  is not valid JSON is refused.

`Renderer.workshop` compiles a workshop once and keeps it until its files change on disk
(with Jinja's bytecode cache, `open_code_cache`, compiled templates are also kept on disk
across restarts); `CompiledWorkshop.render_into` then only renders and writes, once per
student. All errors
are `StepFailed` (a workshop fixed by an operator can be deployed again); no message ever
carries a variable's value.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar, cast

import jinja2
from jinja2 import FileSystemBytecodeCache, Template, TemplateSyntaxError, Undefined, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from wodmail.erase import DIR_FLAGS, remove_entry
from wodmail.errors import StepFailed
from wodmail.identity import as_daemon
from wodmail.safefs import READ_FLAGS, copy_new_file, write_new_file

__all__ = [
    "EXCLUDED",
    "TEMPLATED",
    "CompiledWorkshop",
    "Renderer",
    "content_name",
    "open_code_cache",
]

log = logging.getLogger(__name__)

#: Files rendered with the student's variables (fnmatch on the file name, case-sensitive).
TEMPLATED = ("*.ipynb", "*.yaml", "*.py", "*.sh", "*.src", "*.tf", "*.env", "Variables.ps1")

#: Never deployed (fnmatch on the name of a file or folder): Jupyter's checkpoints, and the
#: workshop's metadata file, which describes the workshop to the platform, not to students.
EXCLUDED = ("*-checkpoint.ipynb", ".ipynb_checkpoints", "wod.yml")

#: The value of `inventory_hostname` when the variables do not set one.
DEFAULT_INVENTORY_HOSTNAME = "localhost"

#: Prefix of the hidden working folders `render_into` leaves beside `dest` while it works.
_WORK_MARK = ".wodmail-"

#: What json.dumps(ensure_ascii=False) escapes in a string: quote, backslash, controls.
_JSON_SPECIAL = re.compile(r'[\x00-\x1f"\\]')
#: Values shorter than this are not scrubbed from error details (they would mangle words).
_SCRUB_MIN_LENGTH = 4


def content_name(workshop: str) -> str:
    """The catalog folder holding `workshop`'s content: a challenge CHLG-X lives in WKSHP-X."""
    if workshop.startswith("CHLG-"):
        return "WKSHP-" + workshop[len("CHLG-") :]
    return workshop


# --------------------------------------------------------------------------- rendering


class _StudentVariables(dict[str, object]):
    """The student's variables as `hostvars[inventory_hostname]` shows them.

    A distinct type only so that a missing key in it reads "undefined variable 'KEY'".
    """


class _WorkshopUndefined(Undefined):
    """Jinja's StrictUndefined, except for the names in `optional_names`, which behave as a
    plain Undefined (render as "", iterate as empty, are false).

    Its message names the variable ("undefined variable 'X'") rather than Jinja's
    "'X' is undefined", and a missing `hostvars[inventory_hostname]` key reads the same.
    """

    __slots__ = ()
    optional_names: ClassVar[frozenset[str]] = frozenset()

    @property
    def _is_optional(self) -> bool:
        return (
            self._undefined_hint is None
            and self._undefined_exception is UndefinedError
            and (self._undefined_obj is missing or isinstance(self._undefined_obj, _StudentVariables))
            and self._undefined_name in self.optional_names
        )

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        if self._undefined_obj is missing or isinstance(self._undefined_obj, _StudentVariables):
            return f"undefined variable {self._undefined_name!r}"
        return super()._undefined_message

    def __str__(self) -> str:
        if self._is_optional:
            return ""
        self._fail_with_undefined_error()

    def __iter__(self) -> Iterator[Any]:
        if self._is_optional:
            return iter(())
        self._fail_with_undefined_error()

    def __len__(self) -> int:
        if self._is_optional:
            return 0
        self._fail_with_undefined_error()

    def __bool__(self) -> bool:
        if self._is_optional:
            return False
        self._fail_with_undefined_error()

    def __eq__(self, other: object) -> bool:
        if self._is_optional:
            return type(self) is type(other)
        self._fail_with_undefined_error()

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        if self._is_optional:
            return id(type(self))
        self._fail_with_undefined_error()


def _undefined_class(optional_names: frozenset[str]) -> type[Undefined]:
    """A `_WorkshopUndefined` that lets `optional_names` be undefined."""
    return cast(
        "type[Undefined]",
        type(
            "WorkshopUndefined",
            (_WorkshopUndefined,),
            {"__slots__": (), "optional_names": optional_names},
        ),
    )


def _finalize_text(value: object) -> object:
    """Insert values as they are, None as "" (what Ansible's templating did)."""
    return "" if value is None else value


def _finalize_json_string(value: object) -> str:
    """Insert a value escaped for the inside of a JSON string (notebooks), None as ""."""
    if value is None:
        return ""
    text = str(value)
    if _JSON_SPECIAL.search(text) is None:  # the common case, and 40% of a render's time
        return text
    return json.dumps(text, ensure_ascii=False)[1:-1]


#: What any value becomes once escaped for a JSON string, reduced to its most telling
#: part: valid inside a string, invalid anywhere else in JSON.
_ESCAPED_PROBE = '\\"x'


def _always_valid_json(tree: jinja2.nodes.Template) -> bool:
    """Whether every render of notebook template `tree` is valid JSON, whatever the values.

    True when the template is only text and `{{ expressions }}` (no statements, which could
    add or drop structure), the text is JSON, and every expression lies inside a JSON string:
    each is replaced by the escaped probe `\\"x`, which parses only inside a string. Values
    are escaped by the notebook environment's finalize, so they can never leave it.
    """
    probe: list[str] = []
    for node in tree.body:
        if not isinstance(node, jinja2.nodes.Output):
            return False
        for child in node.nodes:
            if isinstance(child, jinja2.nodes.TemplateData):
                probe.append(child.data)
            else:
                probe.append(_ESCAPED_PROBE)
    try:
        json.loads("".join(probe))
    except ValueError:
        return False
    return True


#: The expressions a `_Substitution` evaluates itself: lookups with no side effect.
_LOOKUP_NODES = (jinja2.nodes.Name, jinja2.nodes.Const, jinja2.nodes.Getitem, jinja2.nodes.Getattr)


@dataclass(frozen=True, slots=True)
class _Substitution:
    """A template that is only text and `{{ lookups }}` (a name, a constant, `a[b]`, `a.b`),
    rendered without running its compiled code: each distinct lookup is evaluated once per
    student, the way the compiled code would (`str(finalize(value))`, the environment's
    sandboxed getitem/getattr, Undefined for a missing name), and the values are joined with
    the text between them. Output is the same text, in a tenth of the time; any error makes
    the caller render with the compiled template instead, whose error names the line.
    """

    texts: tuple[str, ...]
    """The text before each lookup, and after the last: one more than `lookups`."""
    lookups: tuple[str, ...]
    """Each lookup's key (its node's dump) in `expressions`."""
    expressions: Mapping[str, jinja2.nodes.Expr]

    def render(self, env: jinja2.Environment, context: Mapping[str, object], values: dict[str, str]) -> str:
        """The rendered text; `values` memoises lookups across the files of one render."""
        parts = [self.texts[0]]
        for key, text in zip(self.lookups, self.texts[1:], strict=True):
            value = values.get(key)
            if value is None:
                raw = _evaluate(env, self.expressions[key], context)
                value = values[key] = str(env.finalize(raw) if env.finalize else raw)
            parts.append(value)
            parts.append(text)
        return "".join(parts)


def _evaluate(env: jinja2.Environment, node: jinja2.nodes.Expr, context: Mapping[str, object]) -> object:
    if isinstance(node, jinja2.nodes.Name):
        value = context.get(node.name, missing)
        if value is missing:
            value = env.globals.get(node.name, missing)
        return env.undefined(name=node.name) if value is missing else value
    if isinstance(node, jinja2.nodes.Const):
        return node.value
    if isinstance(node, jinja2.nodes.Getitem):
        return env.getitem(_evaluate(env, node.node, context), _evaluate(env, node.arg, context))
    assert isinstance(node, jinja2.nodes.Getattr)
    return env.getattr(_evaluate(env, node.node, context), node.attr)


def _is_lookup(node: jinja2.nodes.Node) -> bool:
    if isinstance(node, (jinja2.nodes.Name, jinja2.nodes.Const)):
        return True
    if isinstance(node, jinja2.nodes.Getitem):
        return _is_lookup(node.node) and _is_lookup(node.arg)
    if isinstance(node, jinja2.nodes.Getattr):
        return _is_lookup(node.node)
    return False


def _substitution(tree: jinja2.nodes.Template) -> _Substitution | None:
    """`tree` as a `_Substitution`, or None when it holds anything but text and lookups."""
    texts = [""]
    lookups: list[str] = []
    expressions: dict[str, jinja2.nodes.Expr] = {}
    for node in tree.body:
        if not isinstance(node, jinja2.nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, jinja2.nodes.TemplateData):
                texts[-1] += child.data
            elif isinstance(child, _LOOKUP_NODES) and _is_lookup(child):
                key = repr(child)
                expressions.setdefault(key, child)
                lookups.append(key)
                texts.append("")
            else:
                return None
    return _Substitution(tuple(texts), tuple(lookups), MappingProxyType(expressions))


def _newlines_at_end(text: str) -> int:
    """How many '\\n' end `text` (Ansible puts back those that Jinja drops)."""
    return len(text) - len(text.rstrip("\n"))


def _template_line(traceback: TracebackType | None, filename: str) -> int | None:
    """The line of the innermost frame of template `filename` in `traceback`."""
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == filename:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def _scrub(text: str, variables: Mapping[str, object]) -> str:
    """`text` with every variable value that occurs in it replaced by a placeholder."""
    for key, value in variables.items():
        if not isinstance(value, str) or len(value) < _SCRUB_MIN_LENGTH:
            continue
        # as it is, and as repr() and JSON write it (Jinja's messages use repr)
        for form in (value, repr(value)[1:-1], json.dumps(value)[1:-1]):
            text = text.replace(form, f"<value of {key}>")
    return text


def _render_failure(where: str, exc: BaseException, variables: Mapping[str, object]) -> str:
    """The StepFailed message for an error raised while rendering the file `where`."""
    line = _template_line(exc.__traceback__, where)
    at = f"{where} line {line}" if line is not None else where
    if isinstance(exc, SecurityError):
        detail = f"refused by the template sandbox: {exc}"
    elif isinstance(exc, UndefinedError):
        detail = str(exc)
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return f"{at}: {_scrub(detail, variables)}"


def render_context(variables: Mapping[str, object]) -> dict[str, object]:
    """What templates see: `variables`, `inventory_hostname` and `hostvars[inventory_hostname]`."""
    facts = _StudentVariables(variables)
    host = str(facts.get("inventory_hostname", DEFAULT_INVENTORY_HOSTNAME))
    context: dict[str, object] = dict(facts)
    context.setdefault("inventory_hostname", host)
    context.setdefault("hostvars", {host: facts})
    return context


# --------------------------------------------------------------------------- compiled workshop


@dataclass(frozen=True, slots=True)
class _TemplatedFile:
    name: str
    """File name (one path component)."""
    relative: Path
    where: str
    """WKSHP-Name/relative/path, as messages name the file."""
    source: str
    template: Template
    mode: int
    trailing_newlines: int
    notebook: bool
    always_valid: bool = False
    """A notebook whose every expression sits inside a JSON string and that has no
    statements: any values give valid JSON, so its renders need no check."""
    substitution: _Substitution | None = None
    """The same template as text and lookups, when it is only that."""


@dataclass(frozen=True, slots=True)
class _CopiedFile:
    name: str
    relative: Path
    source: str


@dataclass(frozen=True, slots=True)
class _Folder:
    name: str
    relative: Path
    mode: int
    templated: tuple[_TemplatedFile, ...]
    copied: tuple[_CopiedFile, ...]
    folders: tuple[_Folder, ...]


_Signature = tuple[int, int, int, int, int]


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode)


class CompiledWorkshop:
    """One workshop's content, scanned and compiled once, rendered for every student.

    Build it with `Renderer.workshop`. `render_into` renders and writes; nothing is read
    from the catalog again except the bytes of the copied files.
    """

    root: Path
    """The content folder, as given to `Renderer.workshop` (made absolute)."""
    name: str
    """The folder's name, e.g. WKSHP-Sample."""
    notebooks: tuple[Path, ...]
    """Relative paths of the notebooks (*.ipynb, checkpoints excluded), sorted."""
    copied: tuple[Path, ...]
    """Relative paths of the files copied byte for byte, sorted."""

    def __init__(
        self,
        root: Path,
        real_root: str,
        tree: _Folder,
        dependencies: tuple[tuple[str, _Signature], ...],
    ) -> None:
        self.root = root
        self.name = root.name
        self._real_root = real_root
        self._tree = tree
        self._dependencies = dependencies
        templated: dict[Path, _TemplatedFile] = {}
        copied: list[Path] = []
        for folder in _walk(tree):
            templated.update((f.relative, f) for f in folder.templated)
            copied.extend(f.relative for f in folder.copied)
        self._templated = templated
        self.notebooks = tuple(sorted(p for p, f in templated.items() if f.notebook))
        self.copied = tuple(sorted(copied))

    @property
    def templates(self) -> Mapping[Path, Template]:
        """The compiled template of every templated file, by relative path."""
        return MappingProxyType({p: f.template for p, f in self._templated.items()})

    @property
    def file_count(self) -> int:
        """How many files `render_into` writes."""
        return len(self._templated) + len(self.copied)

    def unchanged_on_disk(self) -> bool:
        """True while no file or folder it was built from has changed (stat only)."""
        if os.path.realpath(self.root) != self._real_root:  # e.g. a catalog symlink swapped
            return False
        for path, signature in self._dependencies:
            try:
                if _signature(os.stat(path, follow_symlinks=False)) != signature:
                    return False
            except OSError:
                return False
        return True

    # ----------------------------------------------------------------------- render

    def render(self, variables: Mapping[str, object]) -> dict[Path, bytes]:
        """Every templated file rendered for `variables`, as bytes to write."""
        context = render_context(variables)
        # the values of lookups already made, per environment (they finalize differently)
        memo: dict[int, dict[str, str]] = {}
        return {f.relative: self._render_file(f, context, variables, memo) for f in self._templated.values()}

    def _render_file(
        self,
        file: _TemplatedFile,
        context: Mapping[str, object],
        variables: Mapping[str, object],
        memo: dict[int, dict[str, str]],
    ) -> bytes:
        failure: str
        env = file.template.environment
        try:
            text = None
            if file.substitution is not None:
                with contextlib.suppress(Exception):  # rendered again below, for its error
                    text = file.substitution.render(env, context, memo.setdefault(id(env), {}))
            if text is None:
                text = file.template.render(context)
        except Exception as exc:  # noqa: BLE001 - any template error fails this file
            failure = _render_failure(file.where, exc, variables)
        else:
            missing_newlines = file.trailing_newlines - _newlines_at_end(text)
            if missing_newlines > 0:
                text += "\n" * missing_newlines
            failure = self._check_rendered(file, text)
            if not failure:
                try:
                    return text.encode("utf-8")
                except UnicodeEncodeError:
                    failure = f"{file.where}: the rendered text cannot be written as UTF-8"
        # Raised outside the except block: the Jinja traceback, whose frames hold the
        # template context (passwords), is not chained to the error.
        raise StepFailed(failure)

    @staticmethod
    def _check_rendered(file: _TemplatedFile, text: str) -> str:
        """Why the rendered `text` of `file` cannot be deployed ("" when it can)."""
        if not file.notebook or file.always_valid:
            return ""
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return (
                f"{file.where}: the rendered notebook is not valid JSON "
                f"(line {exc.lineno} column {exc.colno}: {exc.msg})"
            )
        return ""

    def render_into(self, dest: Path, variables: Mapping[str, object]) -> int:
        """Make the folder `dest` hold exactly this workshop, rendered for `variables`.

        `render_at` on `dest`'s parent folder (opened without following a link: `dest`
        or its parent being a symlink is refused). Returns the number of files written.
        """
        dest = Path(os.path.abspath(dest))
        parent, leaf = dest.parent, dest.name
        if not leaf or leaf in (".", ".."):
            raise StepFailed(f"{self.name}: cannot deploy into {dest}")
        parent_fd = _open_parent(parent, self.name)
        try:
            return self.render_at(parent_fd, leaf, variables, where=str(dest))
        finally:
            os.close(parent_fd)

    def render_at(self, parent_fd: int, leaf: str, variables: Mapping[str, object], *, where: str = "") -> int:
        """Make `leaf` in the open folder `parent_fd` hold exactly this workshop.

        Renders every templated file first (a template error changes nothing on disk),
        then builds the new folder as a hidden sibling of `leaf` and swaps it in with
        renames: `leaf` is at every moment either the old content, absent for an instant,
        or the complete new content, never a half-written file. Running it again
        converges; leftovers of an interrupted run are removed. Every write goes through
        a folder descriptor, never following a link and never blocking (O_NONBLOCK), so
        nothing is written outside `parent_fd`; a `leaf` that is a symlink is refused.
        Files and folders belong to whoever runs it: in a student's home, the student
        (wodmail.homes runs it with the student's identity; the catalog's files are read
        as the daemon).

        Returns the number of files written.
        """
        rendered = self.render(variables)
        where = where or leaf
        if not leaf or leaf in (".", "..") or "/" in leaf:
            raise StepFailed(f"{self.name}: cannot deploy into {where}")
        try:
            _refuse_symlink(parent_fd, leaf, where, self.name)
            _remove_leftovers(parent_fd, leaf)
            work = f".{leaf}{_WORK_MARK}new-{secrets.token_hex(4)}"
            try:
                os.mkdir(work, 0o700, dir_fd=parent_fd)
                work_fd = os.open(work, DIR_FLAGS, dir_fd=parent_fd)
                try:
                    written = self._fill(work_fd, self._tree, rendered)
                finally:
                    os.close(work_fd)
                _swap_in(parent_fd, work, leaf)
            except BaseException:
                _remove_quietly(parent_fd, work)
                raise
        except OSError as exc:
            raise StepFailed(f"{self.name}: cannot deploy into {where}: {exc.strerror or type(exc).__name__}") from None
        return written

    def _fill(
        self,
        folder_fd: int,
        folder: _Folder,
        rendered: Mapping[Path, bytes],
    ) -> int:
        """Write `folder`'s files and sub-folders into the open folder `folder_fd`."""
        written = 0
        for file in folder.templated:
            write_new_file(folder_fd, file.name, rendered[file.relative], file.mode)
            written += 1
        for copy in folder.copied:
            _copy_new_file(folder_fd, copy, self.name)
            written += 1
        for sub in folder.folders:
            os.mkdir(sub.name, 0o700, dir_fd=folder_fd)
            sub_fd = os.open(sub.name, DIR_FLAGS, dir_fd=folder_fd)
            try:
                written += self._fill(sub_fd, sub, rendered)
            finally:
                os.close(sub_fd)
        os.fchmod(folder_fd, folder.mode)
        return written


def _walk(folder: _Folder) -> Iterator[_Folder]:
    yield folder
    for sub in folder.folders:
        yield from _walk(sub)


# --------------------------------------------------------------------------- file system


def _open_parent(parent: Path, workshop: str) -> int:
    try:
        return os.open(parent, DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and parent.is_symlink():
            reason = "is a symbolic link"
        elif exc.errno == errno.ENOENT:
            reason = "does not exist"
        elif exc.errno == errno.ENOTDIR:
            reason = "is not a folder"
        else:
            reason = f"cannot be opened: {exc.strerror}"
        raise StepFailed(f"{workshop}: the student's folder {parent} {reason}") from None


def _refuse_symlink(parent_fd: int, leaf: str, dest: str, workshop: str) -> None:
    try:
        st = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StepFailed(f"{workshop}: {dest} is a symbolic link; refusing to deploy there")


def _remove_leftovers(parent_fd: int, leaf: str) -> None:
    """Remove the working folders an interrupted `render_into` left beside `leaf`."""
    prefix = f".{leaf}{_WORK_MARK}"
    for entry in os.listdir(parent_fd):
        if entry.startswith(prefix):
            _remove_entry(parent_fd, entry)


def _remove_entry(parent_fd: int, name: str) -> None:
    """Remove `name` (a folder tree, a file or a symlink, never what a symlink points to)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_entry(parent_fd, name)
    else:
        os.unlink(name, dir_fd=parent_fd)


def _remove_quietly(parent_fd: int, name: str) -> None:
    """`_remove_entry`, logging instead of raising (the next run removes what is left)."""
    try:
        _remove_entry(parent_fd, name)
    except OSError as exc:
        log.warning("cannot remove the working folder %s: %s", name, exc.strerror)


def _swap_in(parent_fd: int, work: str, leaf: str) -> None:
    """Put the finished folder `work` in place of `leaf`, removing the old one."""
    old = f".{leaf}{_WORK_MARK}old-{secrets.token_hex(4)}"
    try:
        os.rename(leaf, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except FileNotFoundError:
        old = ""
    os.rename(work, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    if old:
        _remove_quietly(parent_fd, old)


def _copy_new_file(folder_fd: int, file: _CopiedFile, workshop: str) -> None:
    """Copy `file` byte for byte with its permission bits (shutil.copyfile + copymode, on fds);
    the catalog's file is opened as the daemon, the copy made as whoever runs this."""
    try:
        with as_daemon():
            src = os.open(file.source, READ_FLAGS)
    except OSError as exc:
        raise StepFailed(f"{workshop}/{file.relative.as_posix()}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise StepFailed(f"{workshop}/{file.relative.as_posix()}: not a regular file any more")
        copy_new_file(src, folder_fd, file.name, stat.S_IMODE(st.st_mode))
    finally:
        os.close(src)


# --------------------------------------------------------------------------- compiling


def _is_excluded(name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in EXCLUDED)


def _is_templated(name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in TEMPLATED)


@dataclass
class _Compiler:
    """Scans one content folder and compiles its templated files."""

    root: Path
    text_env: ImmutableSandboxedEnvironment
    notebook_env: ImmutableSandboxedEnvironment
    code_cache: FileSystemBytecodeCache | None = None
    name: str = ""
    real_root: str = ""
    dependencies: list[tuple[str, _Signature]] = field(default_factory=list)

    def compile(self) -> CompiledWorkshop:
        self.name = self.root.name
        try:
            self.real_root = os.path.realpath(self.root)
            st = os.stat(self.real_root)
        except OSError:
            raise StepFailed(f"{self.name}: the workshop folder {self.root} is missing") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StepFailed(f"{self.name}: {self.root} is not a folder")
        try:
            tree = self._folder(self.real_root, Path(), "", frozenset({self.real_root}))
        except OSError as exc:
            raise StepFailed(f"{self.name}: cannot read {exc.filename}: {exc.strerror or type(exc).__name__}") from None
        return CompiledWorkshop(self.root, self.real_root, tree, tuple(self.dependencies))

    def _depend(self, path: str) -> os.stat_result:
        st = os.stat(path, follow_symlinks=False)
        self.dependencies.append((path, _signature(st)))
        return st

    def _where(self, relative: Path) -> str:
        return f"{self.name}/{relative.as_posix()}" if relative.parts else self.name

    def _folder(self, real: str, relative: Path, name: str, ancestors: frozenset[str]) -> _Folder:
        st = self._depend(real)
        templated: list[_TemplatedFile] = []
        copied: list[_CopiedFile] = []
        folders: list[_Folder] = []
        with os.scandir(real) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            if _is_excluded(entry.name):
                continue
            rel = relative / entry.name
            source = entry.path
            if entry.is_symlink():
                self._depend(entry.path)
                source = self._link_target(entry.path, rel)
                try:
                    target = os.stat(source)
                except OSError:
                    raise StepFailed(f"{self._where(rel)}: broken symbolic link") from None
                is_dir, is_file = stat.S_ISDIR(target.st_mode), stat.S_ISREG(target.st_mode)
            else:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=False)
            if is_dir:
                if source in ancestors:
                    raise StepFailed(f"{self._where(rel)}: symbolic link loop")
                folders.append(self._folder(source, rel, entry.name, ancestors | {source}))
            elif is_file:
                if _is_templated(entry.name):
                    templated.append(self._template(source, rel, entry.name))
                else:
                    self._depend(source)
                    copied.append(_CopiedFile(entry.name, rel, source))
            else:
                raise StepFailed(f"{self._where(rel)}: not a regular file or folder")
        return _Folder(
            name,
            relative,
            stat.S_IMODE(st.st_mode) & 0o777,
            tuple(templated),
            tuple(copied),
            tuple(folders),
        )

    def _link_target(self, link: str, relative: Path) -> str:
        target = os.path.realpath(link)
        if target != self.real_root and not target.startswith(self.real_root + os.sep):
            raise StepFailed(f"{self._where(relative)}: symbolic link points outside the workshop folder")
        return target

    def _template(self, source: str, relative: Path, name: str) -> _TemplatedFile:
        where = self._where(relative)
        st = self._depend(source)  # before reading: a change while reading is seen next time
        try:
            with open(source, encoding="utf-8", newline="") as handle:
                text = handle.read()
        except UnicodeDecodeError:
            raise StepFailed(f"{where}: not UTF-8 text") from None
        except OSError as exc:
            raise StepFailed(f"{where}: cannot read: {exc.strerror}") from None
        notebook = fnmatchcase(name, "*.ipynb")
        env = self.notebook_env if notebook else self.text_env
        kind = "notebook" if notebook else "text"
        failure: str
        try:
            cache = self.code_cache
            bucket = cache.get_bucket(env, f"{_CODE_FORMAT}/{kind}/{where}", source, text) if cache else None
            code = bucket.code if bucket is not None else None
            if code is None:
                code = env.compile(text, name=where, filename=where)
                if cache is not None and bucket is not None:
                    bucket.code = code
                    try:
                        cache.set_bucket(bucket)
                    except OSError as exc:  # costs a compilation at the next start, nothing more
                        log.warning("template cache: cannot keep %s: %s", where, exc.strerror)
        except TemplateSyntaxError as exc:
            failure = f"{where} line {exc.lineno}: template syntax error: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - e.g. a SecurityError at compile time
            failure = f"{where}: cannot compile: {type(exc).__name__}: {exc}"
        else:
            template = env.template_class.from_code(env, code, env.make_globals(None), None)
            tree = env.parse(text)  # compiled above: parses
            return _TemplatedFile(
                name=name,
                relative=relative,
                where=where,
                source=source,
                template=template,
                mode=stat.S_IMODE(st.st_mode) & 0o777,
                trailing_newlines=_newlines_at_end(text),
                notebook=notebook,
                always_valid=notebook and _always_valid_json(tree),
                substitution=_substitution(tree),
            )
        raise StepFailed(failure)


#: Changes whenever what the environments generate changes (their settings, finalize, ...):
#: part of each cached template's name, so older code is never loaded.
_CODE_FORMAT = "wodmail-templates-1"


def open_code_cache(folder: Path) -> FileSystemBytecodeCache | None:
    """Jinja's bytecode cache in `folder`, so that a restarted daemon does not compile its
    templates again, or None (with a warning) if the folder is not fit for it.

    Loading code from a file is running it: the folder must be wodmail's own (made 0700;
    one owned by another user, or writable by others, is not used). Jinja keys each file by
    the template's name and source path and checks the source's checksum and Jinja's and
    Python's bytecode versions when it loads it; a changed template is compiled again and
    its file replaced (one file per template). Files a crash left half-written go at start.
    """
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(folder, follow_symlinks=False)
    except OSError as exc:
        log.warning("template cache %s not used: %s", folder, exc.strerror)
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        log.warning("template cache %s not used: not a folder of this user, or writable by others", folder)
        return None
    for name in os.listdir(folder):
        if name.endswith(".tmp"):  # Jinja writes to NAME<random>.tmp, then renames
            with contextlib.suppress(OSError):
                os.unlink(folder / name)
    return FileSystemBytecodeCache(str(folder), "%s.code")


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
    ) -> None:
        """`optional_variables`: names a template may use undefined (they render as "");
        every other undefined name is an error. `code_cache`: a folder of wodmail's own
        where compiled templates are kept across restarts (`open_code_cache`; None: none).
        `recheck_seconds` and `clock` set how often the catalog is checked for changes
        (tests set them)."""
        undefined = _undefined_class(frozenset(optional_variables))
        common: dict[str, Any] = {
            "undefined": undefined,
            "autoescape": False,
            "trim_blocks": True,
            "lstrip_blocks": False,
            "newline_sequence": "\n",
            "keep_trailing_newline": False,
            "auto_reload": False,
        }
        self._text_env = ImmutableSandboxedEnvironment(finalize=_finalize_text, **common)
        self._notebook_env = ImmutableSandboxedEnvironment(finalize=_finalize_json_string, **common)
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
            now = self._clock()
            entry = self._cache.get(key)
            if entry is not None:
                if now - entry.checked_at < self._recheck_seconds:
                    return entry.workshop
                if entry.workshop.unchanged_on_disk():
                    entry.checked_at = now
                    return entry.workshop
                del self._cache[key]
            started = time.perf_counter()
            compiled = _Compiler(Path(key), self._text_env, self._notebook_env, self._code_cache).compile()
            log.info(
                "compiled workshop %s: %d templated, %d copied files in %.1f ms",
                compiled.name,
                len(compiled.templates),
                len(compiled.copied),
                (time.perf_counter() - started) * 1000,
            )
            self._cache[key] = _CacheEntry(compiled, now)
            return compiled

    def forget(self, content: Path | None = None) -> None:
        """Drop the cached compilation of `content` (of every workshop when None)."""
        with self._lock:
            if content is None:
                self._cache.clear()
            else:
                self._cache.pop(os.path.abspath(content), None)
