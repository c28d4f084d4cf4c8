"""Compiling a workshop's content folder into a `CompiledWorkshop`.

A site's catalog (WORKSHOPDIR) holds one folder per workshop, `WKSHP-Name/`, with
notebooks, pictures, data files and sub-folders. `compile_workshop` scans one such folder
(following symbolic links only inside it), compiles every file whose name matches
`TEMPLATED` with the environments of wodmail.rendering, keeps every other file (but the
`EXCLUDED`) to be copied byte for byte, and records the stat of everything it read so the
compiled workshop can tell when the catalog changed. With Jinja's bytecode cache
(`open_code_cache`) compiled templates are also kept on disk across restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from jinja2 import FileSystemBytecodeCache, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from wodmail.compiled import CompiledWorkshop, CopiedFile, Folder, Signature, TemplatedFile, signature
from wodmail.errors import StepFailed
from wodmail.rendering import CODE_FORMAT, always_valid_json, newlines_at_end, substitution_of

__all__ = ["EXCLUDED", "TEMPLATED", "compile_workshop", "open_code_cache"]

log = logging.getLogger(__name__)

#: Files rendered with the student's variables (fnmatch on the file name, case-sensitive).
TEMPLATED = ("*.ipynb", "*.yaml", "*.py", "*.sh", "*.src", "*.tf", "*.env", "Variables.ps1")

#: Never deployed (fnmatch on the name of a file or folder): Jupyter's checkpoints, and the
#: workshop's metadata file, which describes the workshop to the platform, not to students.
EXCLUDED = ("*-checkpoint.ipynb", ".ipynb_checkpoints", "wod.yml")


def compile_workshop(
    root: Path,
    text_env: ImmutableSandboxedEnvironment,
    notebook_env: ImmutableSandboxedEnvironment,
    code_cache: FileSystemBytecodeCache | None = None,
) -> CompiledWorkshop:
    """The content folder `root` compiled: notebooks with `notebook_env`, other templated
    files with `text_env` (wodmail.rendering.template_environments), through `code_cache`.

    Raises StepFailed when the folder is missing, a template does not compile, or the
    folder holds a symlink pointing outside it (or a loop, a broken link, a device).
    """
    return _Compiler(root, text_env, notebook_env, code_cache).compile()


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
    dependencies: list[tuple[str, Signature]] = field(default_factory=list)

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
        self.dependencies.append((path, signature(st)))
        return st

    def _where(self, relative: Path) -> str:
        return f"{self.name}/{relative.as_posix()}" if relative.parts else self.name

    def _folder(self, real: str, relative: Path, name: str, ancestors: frozenset[str]) -> Folder:
        st = self._depend(real)
        templated: list[TemplatedFile] = []
        copied: list[CopiedFile] = []
        folders: list[Folder] = []
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
                    copied.append(CopiedFile(entry.name, rel, source))
            else:
                raise StepFailed(f"{self._where(rel)}: not a regular file or folder")
        return Folder(
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

    def _template(self, source: str, relative: Path, name: str) -> TemplatedFile:
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
            bucket = cache.get_bucket(env, f"{CODE_FORMAT}/{kind}/{where}", source, text) if cache else None
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
            return TemplatedFile(
                name=name,
                relative=relative,
                where=where,
                source=source,
                template=template,
                mode=stat.S_IMODE(st.st_mode) & 0o777,
                trailing_newlines=newlines_at_end(text),
                notebook=notebook,
                always_valid=notebook and always_valid_json(tree),
                substitution=substitution_of(tree),
            )
        raise StepFailed(failure)


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
