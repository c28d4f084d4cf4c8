"""A compiled workshop: its files, scanned and compiled once, rendered and deployed for
every student.

`wodmail.compiling` builds a `CompiledWorkshop` from a content folder; `render` renders
its templated files for one student's variables (wodmail.rendering), `render_at` and
`render_into` deploy the whole workshop into a folder of the student's home through the
safe file-system layer (wodmail.safefs), with the copy steps the location asks for
(wodmail.copysteps), and `unchanged_on_disk` tells whether the catalog files it was built
from are still as they were. All errors are `StepFailed`; no message ever carries a
variable's value.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from jinja2 import Template

from wodmail.copysteps import CHECKPOINTS, NO_COPY_STEPS, CopySteps, write_checkpoint, write_pdf_script, write_workspace
from wodmail.erase import DIR_FLAGS
from wodmail.errors import StepFailed
from wodmail.identity import as_daemon
from wodmail.rendering import Substitution, newlines_at_end, render_context, render_failure
from wodmail.safefs import READ_FLAGS, copy_new_file, is_symlink_at, replace_folder, write_new_file

__all__ = ["CompiledWorkshop", "CopiedFile", "Folder", "LinkedFile", "Signature", "TemplatedFile", "signature"]


@dataclass(frozen=True, slots=True)
class TemplatedFile:
    """A file rendered with the student's variables."""

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
    substitution: Substitution | None = None
    """The same template as text and lookups, when it is only that."""


@dataclass(frozen=True, slots=True)
class CopiedFile:
    """A file copied byte for byte from the catalog."""

    name: str
    relative: Path
    source: str
    mode: int | None = None
    """The copy's mode; None: the catalog file's."""
    broken_notebook: bool = False
    """A notebook not valid JSON in the catalog, deployed as it is (wodmail.compiling)."""


@dataclass(frozen=True, slots=True)
class LinkedFile:
    """A symbolic link of the catalog, made again in the student's copy."""

    name: str
    relative: Path
    target: str
    """What the link points to: a path relative to its folder, inside the workshop."""


@dataclass(frozen=True, slots=True)
class Folder:
    """A folder of the workshop: its mode, files and sub-folders."""

    name: str
    relative: Path
    mode: int
    templated: tuple[TemplatedFile, ...]
    copied: tuple[CopiedFile, ...]
    folders: tuple[Folder, ...]
    links: tuple[LinkedFile, ...] = ()


#: What tells that a catalog file or folder changed: times, size, inode, mode.
Signature = tuple[int, int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    """The `Signature` of a file or folder from its stat."""
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode)


class CompiledWorkshop:
    """One workshop's content, scanned and compiled once, rendered for every student.

    Build it with `wodmail.workshop.Renderer.workshop`. `render_into` renders and writes;
    nothing is read from the catalog again except the bytes of the copied files.
    """

    root: Path
    """The content folder, as given to `Renderer.workshop` (made absolute)."""
    name: str
    """The folder's name, e.g. WKSHP-Sample."""
    notebooks: tuple[Path, ...]
    """Relative paths of the notebooks (*.ipynb, checkpoints excluded), sorted."""
    copied: tuple[Path, ...]
    """Relative paths of the files copied byte for byte, sorted."""
    links: tuple[Path, ...]
    """Relative paths of the symbolic links kept as links, sorted."""
    warnings: tuple[str, ...]
    """What deploys but is odd, one line each (a notebook already broken in the catalog)."""
    copy_steps: CopySteps
    """What `render_at` adds to the workshop's own files (wodmail.copysteps); set by the
    `Renderer` from the location."""

    def __init__(
        self,
        root: Path,
        real_root: str,
        tree: Folder,
        dependencies: tuple[tuple[str, Signature], ...],
        *,
        warnings: tuple[str, ...] = (),
        copy_steps: CopySteps = NO_COPY_STEPS,
    ) -> None:
        self.root = root
        self.name = root.name
        self._real_root = real_root
        self._tree = tree
        self._dependencies = dependencies
        self.warnings = warnings
        self.copy_steps = copy_steps
        templated: dict[Path, TemplatedFile] = {}
        copied: list[Path] = []
        broken: list[Path] = []
        links: list[Path] = []
        for folder in _walk(tree):
            templated.update((f.relative, f) for f in folder.templated)
            copied.extend(f.relative for f in folder.copied)
            broken.extend(f.relative for f in folder.copied if f.broken_notebook)
            links.extend(f.relative for f in folder.links)
        self._templated = templated
        self.notebooks = tuple(sorted([*(p for p, f in templated.items() if f.notebook), *broken]))
        self.copied = tuple(sorted(copied))
        self.links = tuple(sorted(links))

    @property
    def tree(self) -> Folder:
        """The workshop's top folder, with its files and sub-folders as compiled (read only)."""
        return self._tree

    @property
    def templates(self) -> Mapping[Path, Template]:
        """The compiled template of every templated file, by relative path."""
        return MappingProxyType({p: f.template for p, f in self._templated.items()})

    @property
    def file_count(self) -> int:
        """How many files and links `render_into` writes from the catalog."""
        return len(self._templated) + len(self.copied) + len(self.links)

    def unchanged_on_disk(self) -> bool:
        """True while no file or folder it was built from has changed (stat only)."""
        if os.path.realpath(self.root) != self._real_root:  # e.g. a catalog symlink swapped
            return False
        for path, known in self._dependencies:
            try:
                if signature(os.stat(path, follow_symlinks=False)) != known:
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
        file: TemplatedFile,
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
            failure = render_failure(file.where, exc, variables)
        else:
            missing_newlines = file.trailing_newlines - newlines_at_end(text)
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
    def _check_rendered(file: TemplatedFile, text: str) -> str:
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
        renames (wodmail.safefs.replace_folder): `leaf` is at every moment either the
        old content, absent for an instant, or the complete new content, never a
        half-written file. Running it again converges; leftovers of an interrupted run
        are removed. Every write goes through a folder descriptor, never following a link
        and never blocking (O_NONBLOCK), so nothing is written outside `parent_fd`; a
        `leaf` that is a symlink is refused. Files and folders belong to whoever runs it:
        in a student's home, the student (wodmail.homes runs it with the student's
        identity; the catalog's files are read as the daemon).

        With `copy_steps`, the copy of the original backend's extra files: the checkpoint
        copy of 0-ReadMeFirst.ipynb and the PDF script go into the new folder before it is
        swapped in, the JupyterLab workspace into `parent_fd` (the home) after.

        Returns the number of files written.
        """
        rendered = self.render(variables)
        where = where or leaf
        if not leaf or leaf in (".", "..") or "/" in leaf:
            raise StepFailed(f"{self.name}: cannot deploy into {where}")
        steps = self.copy_steps
        try:
            if is_symlink_at(parent_fd, leaf):
                raise StepFailed(f"{self.name}: {where} is a symbolic link; refusing to deploy there")
            written = replace_folder(parent_fd, leaf, lambda folder_fd: self._fill_root(folder_fd, rendered))
            if steps.workspace:
                write_workspace(parent_fd, leaf)
                written += 1
        except OSError as exc:
            raise StepFailed(f"{self.name}: cannot deploy into {where}: {exc.strerror or type(exc).__name__}") from None
        return written

    def _fill_root(self, folder_fd: int, rendered: Mapping[Path, bytes]) -> int:
        """The workshop's own files, then the copy steps' files inside the workshop folder."""
        written = self._fill(folder_fd, self._tree, rendered)
        steps = self.copy_steps
        if steps.checkpoint:
            readme = Path(CHECKPOINTS.source)
            if readme in rendered:
                write_checkpoint(folder_fd, rendered[readme])
                written += 1
            elif any(f.relative == readme for f in self._tree.copied):
                # deployed as it was in the catalog (not rendered): its checkpoint is the copy's
                readme_fd = os.open(CHECKPOINTS.source, READ_FLAGS, dir_fd=folder_fd)
                with os.fdopen(readme_fd, "rb") as copy:
                    write_checkpoint(folder_fd, copy.read())
                written += 1
        if steps.pdf_script is not None:
            write_pdf_script(folder_fd, steps.pdf_script)
            written += 1
        return written

    def _fill(
        self,
        folder_fd: int,
        folder: Folder,
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
        for link in folder.links:
            os.symlink(link.target, link.name, dir_fd=folder_fd)
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


def _walk(folder: Folder) -> Iterator[Folder]:
    yield folder
    for sub in folder.folders:
        yield from _walk(sub)


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


def _copy_new_file(folder_fd: int, file: CopiedFile, workshop: str) -> None:
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
        copy_new_file(src, folder_fd, file.name, stat.S_IMODE(st.st_mode) if file.mode is None else file.mode)
    finally:
        os.close(src)
