"""A `compile:` workshop's scripts, compiled with shc for each student.

A workshop's `compile` (its wod.yml, or the registration app's `compile` field) names
scripts of the site's script folders, "a.shc,b.shc" or a list. The original backend
(ansible/compile_scripts.yml) rendered each with the student's variables into the
student's home, compiled it there with `shc -f`, and left the binary `NAME.x` for the
student (0755) and the rendered source unreadable to them. wodmail renders and compiles in
a folder of its own (0700, never in the home: the source may hold tokens the binary is
there to hide), then writes only `NAME.x` into the home, as the student (0755). Without
shc installed, the step fails, naming the scripts and the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment

from wodmail.errors import StepFailed
from wodmail.rendering import newlines_at_end, render_context, render_failure
from wodmail.safefs import write_new_file

__all__ = ["CompiledScript", "compile_scripts", "install_compiled", "scripts_to_compile"]

#: How long one shc run (it runs the C compiler) may take.
SHC_TIMEOUT = 120.0
#: Where shc and the C compiler it runs are looked for.
TOOL_PATH = "/usr/local/bin:/usr/bin:/bin"
#: The mode the original gave a compiled script.
BINARY_MODE = 0o755


@dataclass(frozen=True)
class CompiledScript:
    """One script compiled: the binary's name in the home and its bytes."""

    name: str
    binary: bytes


def scripts_to_compile(value: object) -> tuple[str, ...]:
    """The script names a workshop's `compile` gives: "a.sh,b.sh", a list, or none (false,
    empty). A name with a '/' (or '..') is refused: scripts live in the script folders."""
    if value is None or isinstance(value, bool) or value == "":
        return ()  # `compile: true` names no script (the original found no file "true")
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip() and str(item).strip() != "false")
    for name in names:
        if "/" in name or name in (".", ".."):
            raise StepFailed(f"compile: {name!r} is not a script name")
    return names


def _find(name: str, folders: Sequence[Path]) -> Path:
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    where = ", ".join(str(folder) for folder in folders) or "no script folder"
    raise StepFailed(f"compile: script {name} is in none of the script folders ({where})")


async def compile_scripts(
    names: Iterable[str],
    folders: Sequence[Path],
    variables: Mapping[str, object],
    env: ImmutableSandboxedEnvironment,
    work_dir: Path,
    *,
    search_path: str = TOOL_PATH,
) -> list[CompiledScript]:
    """Render each script `names` (found in `folders`, the public one first) with
    `variables` in the text environment `env`, compile it with shc in a new folder under
    `work_dir` (removed after), and return the binaries. StepFailed when shc is missing
    (from `search_path`), a script is missing or does not render, or shc fails."""
    wanted = list(names)
    if not wanted:
        return []
    shc = shutil.which("shc", path=search_path)
    if shc is None:
        raise StepFailed(
            "compile: shc is not installed on this host (Debian: apt-get install shc); "
            f"cannot compile {', '.join(wanted)}"
        )
    sources = [(name, _find(name, folders)) for name in wanted]
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="shc-", dir=work_dir))
    try:
        compiled: list[CompiledScript] = []
        context = render_context(variables)
        for name, source in sources:
            text = source.read_text(encoding="utf-8")
            failure = ""
            try:
                rendered = env.from_string(text).render(context)
            except Exception as exc:  # noqa: BLE001 - any template error fails this script
                failure = render_failure(f"compile: {name}", exc, variables)
            if failure:
                raise StepFailed(failure)
            rendered += "\n" * max(0, newlines_at_end(text) - newlines_at_end(rendered))
            (folder / name).write_text(rendered, encoding="utf-8")
            (folder / name).chmod(0o600)
            await _run_shc(shc, folder, name)
            compiled.append(CompiledScript(f"{name}.x", (folder / f"{name}.x").read_bytes()))
        return compiled
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _run_shc(shc: str, folder: Path, name: str) -> None:
    process = await asyncio.create_subprocess_exec(
        shc,
        "-f",
        name,
        cwd=str(folder),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": TOOL_PATH, "LC_ALL": "C"},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=SHC_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise StepFailed(f"compile: shc ran longer than {SHC_TIMEOUT:.0f} s on {name}") from None
    if process.returncode != 0 or not (folder / f"{name}.x").is_file():
        tail = output.decode("utf-8", "replace").strip()[-500:]
        raise StepFailed(f"compile: shc failed on {name} (exit {process.returncode}): {tail}")


def install_compiled(home_fd: int, scripts: Iterable[CompiledScript]) -> int:
    """Write each compiled script into the open home `home_fd` (replacing one of that name),
    as whoever runs it (the student: wodmail.homes.Homes.work_in_home). Returns how many."""
    count = 0
    for script in scripts:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(script.name, dir_fd=home_fd)
        write_new_file(home_fd, script.name, script.binary, BINARY_MODE)
        count += 1
    return count
