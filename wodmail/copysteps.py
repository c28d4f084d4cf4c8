"""The original backend's extra copy steps, for the sites that keep them (COPYSTEPS).

Besides the workshop's own files, the playbook that deployed a workshop on the platform
this replaces (ansible/copy_folder.yml) gave every student three more files, which a
workshop can notice; COPYSTEPS names the ones a location wants:

- `workspace`: STUDENTDIR/student{N}/.jupyter/lab/workspaces/default-37a8.jupyterlab-workspace,
  JupyterLab's default workspace, so the student's first page shows WKSHP-Name in the file
  browser and WKSHP-Name/0-ReadMeFirst.ipynb open (folders made 0751, the file 0644);
- `checkpoint`: WKSHP-Name/.ipynb_checkpoints/0-ReadMeFirst-checkpoint.ipynb, the rendered
  0-ReadMeFirst.ipynb again, so "Revert Notebook to Checkpoint" gives it back as deployed
  (folder 0751, file 0644; nothing when the workshop has no 0-ReadMeFirst.ipynb, where the
  original's playbook failed);
- `pdfscript`: WKSHP-Name/wod-generate-pdf.sh, the bytes of PDFSCRIPT (the shipped one runs
  `jupyter nbconvert --to pdf` on the workshop's notebooks), mode 0755.

Everything is written by whoever runs the deployment (in a home: the student), through
folder descriptors, never following a link and never blocking (wodmail.safefs).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from wodmail.erase import DIR_FLAGS
from wodmail.identity import as_daemon
from wodmail.safefs import READ_FLAGS, write_new_file

__all__ = [
    "CHECKPOINTS",
    "COPY_STEP_NAMES",
    "NO_COPY_STEPS",
    "WORKSPACE_FILE",
    "CopySteps",
    "workspace_document",
    "write_checkpoint",
    "write_pdf_script",
    "write_workspace",
]

#: The names COPYSTEPS takes.
COPY_STEP_NAMES = ("workspace", "checkpoint", "pdfscript")
#: Where the workspace goes in a home, and its name (JupyterLab's default workspace).
WORKSPACE_FILE = (".jupyter", "lab", "workspaces", "default-37a8.jupyterlab-workspace")
#: The notebook the workspace opens and the checkpoint copies.
README_NOTEBOOK = "0-ReadMeFirst.ipynb"
#: The name of the PDF script in the workshop folder.
PDF_SCRIPT_NAME = "wod-generate-pdf.sh"
#: Modes the original gave: folders it made, files it templated or copied, the script.
FOLDER_MODE, FILE_MODE, SCRIPT_MODE = 0o751, 0o644, 0o755
#: The most read from PDFSCRIPT (it is a short script).
MAX_SCRIPT_BYTES = 1 << 20


@dataclass(frozen=True)
class _Checkpoints:
    source: str = README_NOTEBOOK
    folder: str = ".ipynb_checkpoints"
    name: str = "0-ReadMeFirst-checkpoint.ipynb"


CHECKPOINTS = _Checkpoints()
"""The checkpoint copy: of `source`, to `folder/name` in the workshop folder."""


@dataclass(frozen=True)
class CopySteps:
    """Which copy steps a deployment makes (COPYSTEPS), and the PDF script's source."""

    workspace: bool = False
    checkpoint: bool = False
    pdf_script: Path | None = None
    """PDFSCRIPT when COPYSTEPS has `pdfscript`; None: no script."""

    @property
    def names(self) -> tuple[str, ...]:
        """The COPYSTEPS names these are."""
        chosen = (self.workspace, self.checkpoint, self.pdf_script is not None)
        return tuple(name for name, on in zip(COPY_STEP_NAMES, chosen, strict=True) if on)


NO_COPY_STEPS = CopySteps()
"""None of them (the default: a deployment is the workshop's own files)."""


def workspace_document(folder: str) -> bytes:
    """The JupyterLab workspace that opens `folder`/0-ReadMeFirst.ipynb, `folder` in the file
    browser: the layout the original's lab-a511.jupyterlab-workspace.j2 gave, one line."""
    notebook = f"{folder}/{README_NOTEBOOK}"
    widget = f"notebook:{notebook}"
    layout = {
        "main": {
            "dock": {"type": "tab-area", "currentIndex": 1, "widgets": [widget]},
            "mode": "multiple-document",
            "current": widget,
        },
        "left": {
            "collapsed": False,
            "current": "filebrowser",
            "widgets": [
                "filebrowser",
                "running-sessions",
                "command-palette",
                "jp-property-inspector",
                "tab-manager",
                "extensionmanager.main-view",
            ],
        },
        "right": {"collapsed": True, "widgets": []},
    }
    document = {
        "data": {
            "layout-restorer:data": layout,
            "file-browser-filebrowser:cwd": {"path": folder},
            widget: {"data": {"path": notebook, "factory": "Notebook"}},
        },
        "metadata": {"id": "/lab"},
    }
    return (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _open_or_make_folder(parent_fd: int, name: str) -> int:
    """The folder `name` of `parent_fd`, made FOLDER_MODE if missing; a link is refused (ELOOP)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, FOLDER_MODE, dir_fd=parent_fd)
    return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def _replace_file(folder_fd: int, name: str, data: bytes, mode: int) -> None:
    """Make `name` in `folder_fd` hold `data`: written beside, then renamed over it."""
    work = f".{name}.wodmail-{secrets.token_hex(4)}"
    write_new_file(folder_fd, work, data, mode)
    try:
        os.rename(work, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(work, dir_fd=folder_fd)
        raise


def write_workspace(home_fd: int, folder: str) -> None:
    """The `workspace` step: the workspace opening `folder` (the workshop folder's name)
    under .jupyter/lab/workspaces of the open home `home_fd` (OSError when it cannot)."""
    opened: list[int] = []
    try:
        current = home_fd
        for name in WORKSPACE_FILE[:-1]:
            current = _open_or_make_folder(current, name)
            opened.append(current)
        _replace_file(current, WORKSPACE_FILE[-1], workspace_document(folder), FILE_MODE)
    finally:
        for fd in opened:
            os.close(fd)


def write_checkpoint(workshop_fd: int, notebook: bytes) -> None:
    """The `checkpoint` step, in the new workshop folder `workshop_fd`: `notebook` (the
    deployed 0-ReadMeFirst.ipynb's bytes) as its checkpoint."""
    folder = _open_or_make_folder(workshop_fd, CHECKPOINTS.folder)
    try:
        write_new_file(folder, CHECKPOINTS.name, notebook, FILE_MODE)
    finally:
        os.close(folder)


def write_pdf_script(workshop_fd: int, script: Path) -> None:
    """The `pdfscript` step, in the new workshop folder `workshop_fd`: `script`'s bytes (read
    as the daemon) as wod-generate-pdf.sh, replacing a file of that name the workshop has."""
    with as_daemon():
        fd = os.open(script, READ_FLAGS)
    with os.fdopen(fd, "rb") as source:
        data = source.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise OSError(errno.EFBIG, f"{script} is larger than {MAX_SCRIPT_BYTES} bytes")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(PDF_SCRIPT_NAME, dir_fd=workshop_fd)
    write_new_file(workshop_fd, PDF_SCRIPT_NAME, data, SCRIPT_MODE)
