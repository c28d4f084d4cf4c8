"""Compiling a workshop's content folder into a `CompiledWorkshop`.

A site's catalog (WORKSHOPDIR) holds one folder per workshop, `WKSHP-Name/`, with
notebooks, pictures, data files and sub-folders. `compile_workshop` scans one such folder
(following symbolic links only inside it), compiles every file whose name matches
`TEMPLATED` with the environments of wodmail.rendering, keeps every other file (but the
`EXCLUDED`) to be copied byte for byte, and records the stat of everything it read so the
compiled workshop can tell when the catalog changed. With Jinja's bytecode cache
(`open_code_cache`) compiled templates are also kept on disk across restarts.

What it takes from the original backend's copy (ansible/copy_folder.yml: rsync, then
`find` + `template`):

- a hidden file (its name starts with ".", e.g. `.env`) is never rendered: `find` skipped
  it, rsync copied it as it was (files inside a hidden folder are rendered by their name);
- a symbolic link is kept as a link (rsync's archive mode) when it leads inside the workshop
  folder, written as the relative path from its folder to where it leads (so it points into
  the student's copy, never the catalog, whether it was absolute or relative, dangling or
  not); one leading outside is refused;
- a templated notebook gets mode 0644 (`template` with `mode: "0644"`); any other templated
  file keeps its mode with the owner's rwx added (the playbook's last `mode: u+rwx`, so a
  script the catalog holds as 0644 runs as `./script.sh`, as it did);
- a notebook already broken in the catalog (`broken_upstream`: no value could make it valid
  JSON) is copied byte for byte, with a warning, where the original deployed it as it was;
- content from the private catalog (WORKSHOPPRIVDIR) renders `PRIVATE_TEMPLATED` only, as
  the original's second `find` did (its `*.tf` and `*.env` are copied as they are).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import jinja2
from jinja2 import FileSystemBytecodeCache, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from wodmail.compiled import CompiledWorkshop, CopiedFile, Folder, LinkedFile, Signature, TemplatedFile, signature
from wodmail.errors import StepFailed
from wodmail.rendering import CODE_FORMAT, always_valid_json, newlines_at_end, substitution_of

__all__ = [
    "EXCLUDED",
    "NOTEBOOK_MODE",
    "PRIVATE_TEMPLATED",
    "TEMPLATED",
    "broken_upstream",
    "compile_workshop",
    "open_code_cache",
]

log = logging.getLogger(__name__)

#: Files rendered with the student's variables (fnmatch on the file name, case-sensitive).
TEMPLATED = ("*.ipynb", "*.yaml", "*.py", "*.sh", "*.src", "*.tf", "*.env", "Variables.ps1")
#: The same, for content from the private catalog (the original's private `find` had no
#: *.tf and *.env).
PRIVATE_TEMPLATED = ("*.ipynb", "*.yaml", "*.py", "*.sh", "*.src", "Variables.ps1")
#: The mode of a rendered notebook, whatever the catalog file's.
NOTEBOOK_MODE = 0o644

#: Never deployed (fnmatch on the name of a file or folder): Jupyter's checkpoints, and the
#: workshop's metadata file, which describes the workshop to the platform, not to students.
EXCLUDED = ("*-checkpoint.ipynb", ".ipynb_checkpoints", "wod.yml")


def compile_workshop(
    root: Path,
    text_env: ImmutableSandboxedEnvironment,
    notebook_env: ImmutableSandboxedEnvironment,
    code_cache: FileSystemBytecodeCache | None = None,
    templated: tuple[str, ...] = TEMPLATED,
) -> CompiledWorkshop:
    """The content folder `root` compiled: notebooks with `notebook_env`, other templated
    files with `text_env` (wodmail.rendering.template_environments), through `code_cache`.
    `templated`: the file name patterns rendered (TEMPLATED, or PRIVATE_TEMPLATED).

    Raises StepFailed when the folder is missing, a template does not compile, or the
    folder holds a symlink pointing outside it, or a device, socket or FIFO.
    """
    return _Compiler(root, text_env, notebook_env, code_cache, templated).compile()


def _is_excluded(name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in EXCLUDED)


def broken_upstream(tree: jinja2.nodes.Template) -> bool:
    """Whether the notebook template `tree` is broken whatever the values.

    Broken upstream: it has no template statement (`{% ... %}`, which could add or drop
    structure) and it is not valid JSON even with every `{{ expression }}` replaced by 0 (a
    valid JSON value, and harmless inside a string): no value can make its render valid.
    (A notebook that some values would make valid is rendered, and refused when a render is
    not valid JSON.)
    """
    probe: list[str] = []
    for node in tree.body:
        if not isinstance(node, jinja2.nodes.Output):
            return False
        for child in node.nodes:
            probe.append(child.data if isinstance(child, jinja2.nodes.TemplateData) else "0")
    try:
        json.loads("".join(probe))
    except ValueError:
        return True
    return False


@dataclass
class _Compiler:
    """Scans one content folder and compiles its templated files."""

    root: Path
    text_env: ImmutableSandboxedEnvironment
    notebook_env: ImmutableSandboxedEnvironment
    code_cache: FileSystemBytecodeCache | None = None
    templated_patterns: tuple[str, ...] = TEMPLATED
    name: str = ""
    real_root: str = ""
    dependencies: list[tuple[str, Signature]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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
            tree = self._folder(self.real_root, Path(), "")
        except OSError as exc:
            raise StepFailed(f"{self.name}: cannot read {exc.filename}: {exc.strerror or type(exc).__name__}") from None
        return CompiledWorkshop(
            self.root, self.real_root, tree, tuple(self.dependencies), warnings=tuple(self.warnings)
        )

    def _depend(self, path: str) -> os.stat_result:
        st = os.stat(path, follow_symlinks=False)
        self.dependencies.append((path, signature(st)))
        return st

    def _where(self, relative: Path) -> str:
        return f"{self.name}/{relative.as_posix()}" if relative.parts else self.name

    def _is_templated(self, name: str) -> bool:
        if name.startswith("."):
            return False
        return any(fnmatchcase(name, pattern) for pattern in self.templated_patterns)

    def _folder(self, real: str, relative: Path, name: str) -> Folder:
        st = self._depend(real)
        templated: list[TemplatedFile] = []
        copied: list[CopiedFile] = []
        links: list[LinkedFile] = []
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
                links.append(LinkedFile(entry.name, rel, self._link_text(entry.path, rel)))
            elif entry.is_dir(follow_symlinks=False):
                folders.append(self._folder(source, rel, entry.name))
            elif entry.is_file(follow_symlinks=False):
                if self._is_templated(entry.name):
                    compiled = self._template(source, rel, entry.name)
                    if isinstance(compiled, CopiedFile):
                        copied.append(compiled)
                    else:
                        templated.append(compiled)
                else:
                    self._depend(source)
                    copied.append(CopiedFile(entry.name, rel, source))
            else:
                raise StepFailed(f"{self._where(rel)}: not a regular file, folder or symbolic link")
        return Folder(
            name,
            relative,
            stat.S_IMODE(st.st_mode) & 0o777,
            tuple(templated),
            tuple(copied),
            tuple(folders),
            tuple(links),
        )

    def _link_text(self, link: str, relative: Path) -> str:
        """What the student's copy of the link `link` points to: the path from its folder to
        where it leads (every link on the way followed), relative, so inside the copy."""
        target = os.path.realpath(link)
        if target != self.real_root and not target.startswith(self.real_root + os.sep):
            raise StepFailed(f"{self._where(relative)}: symbolic link points outside the workshop folder")
        # The folders above a link are real folders of the workshop (links are not followed
        # into), so the link's folder is real_root/<its relative folder>.
        return os.path.relpath(target, os.path.join(self.real_root, *relative.parts[:-1]))

    def _template(self, source: str, relative: Path, name: str) -> TemplatedFile | CopiedFile:
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
            if notebook:
                try:
                    json.loads(text)
                except json.JSONDecodeError as exc:
                    if broken_upstream(tree):
                        self.warnings.append(
                            f"{where}: not valid JSON in the catalog (line {exc.lineno} column {exc.colno}: "
                            f"{exc.msg}): deployed byte for byte, not rendered, as the original backend deployed it"
                        )
                        return CopiedFile(name, relative, source, NOTEBOOK_MODE, broken_notebook=True)
            return TemplatedFile(
                name=name,
                relative=relative,
                where=where,
                source=source,
                template=template,
                mode=NOTEBOOK_MODE if notebook else (stat.S_IMODE(st.st_mode) & 0o777) | 0o700,
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
