"""Deploying a workshop into a student's home: rendering, copying, safety, caching, completion.

The workshops used here live in tests/data/workshops/, one folder per case, named after what
it shows; the shipped samples are templates/workshops/WKSHP-Sample and WKSHP-SampleReset.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.conftest import Daemon, Site
from wodmail.compiled import CompiledWorkshop
from wodmail.errors import StepFailed
from wodmail.identity import Identity, acting_as
from wodmail.location import load_location
from wodmail.notebooks import _count_code_cells, _count_code_cells_slowly, completion_percentage
from wodmail.rendering import render_context
from wodmail.resources import product_path
from wodmail.transport import HttpClient
from wodmail.wiring import build_services
from wodmail.workshop import Renderer, content_name

DATA = Path(__file__).parent / "data" / "workshops"
SHIPPED = product_path("templates") / "workshops"

PASSWORD = 'Pa"ss\\wo\nrd</script>-s3cr3t'
"""A password as nasty as a generated one could ever be: quote, backslash, newline."""


def variables(stdid: int = 12, /, **extra: object) -> dict[str, object]:
    """The variables a CREATE gives the templates: student, mode, location keys."""
    values: dict[str, object] = {
        "STDID": stdid,
        "STUDENT": f"student{stdid}",
        "PASSSTU": PASSWORD,
        "MODE": "WKSHP",
        "WORKSHOP": "WKSHP-Sample",
        "CHALLENGE": False,
        "BRANDING": "HPE Developer Community",
        "JPHOSTEXT": "nb3.example.com",
        "JPHOST": "jupyter3.example.com",
        "BASESTDID": 0,
        "API-KEY": "key-with-dash",
    }
    values.update(extra)
    return values


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty student home, as the skeleton reset leaves it."""
    folder = tmp_path / "homes" / "student12"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def catalog(tmp_path: Path) -> Callable[[str], Path]:
    """Copy a fixture workshop into a catalog under tmp_path (to change it safely)."""

    def copy(name: str) -> Path:
        target = tmp_path / "catalog" / name
        shutil.copytree(DATA / name, target, symlinks=True)
        return target

    return copy


def deploy(workshop: str, home: Path, renderer: Renderer | None = None, **extra: object) -> Path:
    compiled = (renderer or Renderer()).workshop(DATA / workshop)
    dest = home / compiled.name
    compiled.render_into(dest, variables(**extra))
    return dest


def cell_text(notebook: Path, index: int) -> str:
    return "".join(json.loads(notebook.read_text(encoding="utf-8"))["cells"][index]["source"])


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`: file bytes, or None for a folder."""
    return {
        path.relative_to(folder).as_posix(): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


# --------------------------------------------------------------------------- values in notebooks

NASTY_VALUES = [
    'say "hi"',
    "back\\slash \\n \\u0041",
    "line one\nline two\r\nline three",
    "</script><script>alert('x')</script>",
    "tab\tbell\x07nul\x00esc\x1b",
    "Grüße, 日本語, emoji 🎉, separators \u2028\u2029",
    '", "injected": "cell',
    "{{ STDID }} {% raw %}",
]


@pytest.mark.parametrize("value", NASTY_VALUES)
def test_any_value_keeps_the_notebook_valid_json_and_intact(home: Path, value: str) -> None:
    dest = deploy("WKSHP-QuotedValues", home, VALUE=value)

    notebook = dest / "1-Values.ipynb"
    assert cell_text(notebook, 0) == f"The value is: {value}"
    assert cell_text(notebook, 1) == f'value = "{value}"  # inside a code cell'


def test_values_go_into_other_files_as_they_are(home: Path) -> None:
    dest = deploy("WKSHP-QuotedValues", home, VALUE='a "quoted" \\ value')

    assert (dest / "values.py").read_text() == "VALUE = '''a \"quoted\" \\ value'''\n"


def test_ansible_template_behaviour_is_kept(home: Path) -> None:
    # ansible-core 2.19's template module renders this file to exactly these bytes:
    # trim_blocks, None as "", and the three trailing newlines of the source kept.
    dest = deploy("WKSHP-AnsibleCompat", home, NOTHING=None)

    assert (dest / "compat.sh").read_bytes() == b"ab\nX\n\n\n"


# --------------------------------------------------------------------------- template errors


def test_undefined_variable_names_file_line_and_variable(home: Path) -> None:
    source = DATA / "WKSHP-UndefinedVariable" / "1-Intro.ipynb"
    line = 1 + source.read_text().splitlines().index(
        next(text for text in source.read_text().splitlines() if "{{ PASSSTU }}" in text)
    )
    compiled = Renderer().workshop(DATA / "WKSHP-UndefinedVariable")
    values = variables()
    del values["PASSSTU"]

    with pytest.raises(StepFailed) as failure:
        compiled.render_into(home / compiled.name, values)

    assert str(failure.value) == (f"WKSHP-UndefinedVariable/1-Intro.ipynb line {line}: undefined variable 'PASSSTU'")
    assert failure.value.__cause__ is None and failure.value.__context__ is None
    assert not (home / compiled.name).exists()


def test_an_error_message_never_shows_a_value(home: Path) -> None:
    compiled = Renderer().workshop(DATA / "WKSHP-ErrorHidesValues")

    with pytest.raises(StepFailed) as failure:
        compiled.render_into(home / compiled.name, variables())

    message = str(failure.value)
    assert message.startswith("WKSHP-ErrorHidesValues/leak.py line 2: ")
    assert "<value of PASSSTU>" in message
    assert "s3cr3t" not in message


def test_optional_variables_may_be_left_undefined(home: Path) -> None:
    dest = deploy("WKSHP-Hostvars", home, Renderer(optional_variables=["KIBANAPWD"]))

    assert 'kibana: ""' in (dest / "config.yaml").read_text()


def test_other_undefined_variables_are_errors_even_with_optional_ones(home: Path) -> None:
    with pytest.raises(StepFailed, match=r"config.yaml line 4: undefined variable 'KIBANAPWD'"):
        deploy("WKSHP-Hostvars", home, Renderer(optional_variables=["OTHER"]))


def test_syntax_error_names_file_and_line() -> None:
    with pytest.raises(StepFailed) as failure:
        Renderer().workshop(DATA / "WKSHP-SyntaxError")

    assert str(failure.value).startswith("WKSHP-SyntaxError/broken.sh line ")
    assert "template syntax error" in str(failure.value)


@pytest.mark.parametrize(
    ("workshop", "file"),
    [
        ("WKSHP-SandboxClassMro", "WKSHP-SandboxClassMro/escape.py line 1"),
        ("WKSHP-SandboxCyclerGlobals", "WKSHP-SandboxCyclerGlobals/1-Escape.ipynb line "),
    ],
)
def test_sandbox_escapes_are_refused_naming_the_file(home: Path, workshop: str, file: str) -> None:
    compiled = Renderer().workshop(DATA / workshop)

    with pytest.raises(StepFailed) as failure:
        compiled.render_into(home / workshop, variables())

    assert str(failure.value).startswith(file)
    assert "refused by the template sandbox" in str(failure.value)
    assert not (home / workshop).exists()


def test_a_notebook_that_renders_to_invalid_json_is_refused(home: Path) -> None:
    compiled = Renderer().workshop(DATA / "WKSHP-NotebookBrokenByTemplate")
    dest = home / compiled.name
    compiled.render_into(dest, variables(MODE="CHLG"))
    before = tree(home)

    with pytest.raises(StepFailed) as failure:
        compiled.render_into(dest, variables(MODE="WKSHP"))

    assert str(failure.value).startswith(
        "WKSHP-NotebookBrokenByTemplate/1-Cells.ipynb: the rendered notebook is not valid JSON"
    )
    assert tree(home) == before


def test_a_template_error_leaves_the_previous_deployment_untouched(home: Path, catalog: Callable[[str], Path]) -> None:
    content = catalog("WKSHP-QuotedValues")
    renderer = Renderer(recheck_seconds=0)
    renderer.workshop(content).render_into(home / content.name, variables(VALUE="first"))
    before = tree(home)
    (content / "values.py").write_text("VALUE = '{{ NOT_DEFINED }}'\n")

    with pytest.raises(StepFailed, match="undefined variable 'NOT_DEFINED'"):
        renderer.workshop(content).render_into(home / content.name, variables(VALUE="second"))

    assert tree(home) == before


# --------------------------------------------------------------------------- Jinja features


def test_raw_blocks_and_literal_braces_work(home: Path) -> None:
    dest = deploy("WKSHP-RawAndLiteralBraces", home)

    notebook = dest / "1-Jinja.ipynb"
    assert cell_text(notebook, 0) == ("Jinja writes {{ name }} and {% for x in y %}.\nStill raw: {{ other }}")
    assert cell_text(notebook, 1) == 'template = "Hello {{ name }}"\nstudent = "student12"'
    # as Ansible does: trim_blocks drops the newline after {% endraw %}, not after {% raw %}
    assert (dest / "jinja.py").read_text() == "\nT = '{{ name }}'\nL = '{{ x }}'\nS = 12\n"


def test_hostvars_of_inventory_hostname_are_the_variables(home: Path) -> None:
    dest = deploy("WKSHP-Hostvars", home, KIBANAPWD="kibana")

    assert (dest / "config.yaml").read_text() == (
        'host: localhost\napi_key: "key-with-dash"\nstudent: student12\nkibana: "kibana"\n'
    )


# --------------------------------------------------------------------------- copying


def test_binary_files_are_copied_byte_for_byte_with_their_folders_and_modes(home: Path) -> None:
    source = DATA / "WKSHP-BinaryAndCheckpoints"
    dest = deploy("WKSHP-BinaryAndCheckpoints", home)

    for relative in ("data/all-bytes.bin", "data/windows.txt", "nested/deeper/notes.md"):
        assert (dest / relative).read_bytes() == (source / relative).read_bytes()
        assert not (dest / relative).is_symlink()
    for relative in ("data/all-bytes.bin", "tools/run.sh", "1-Notebook.ipynb"):
        assert stat.S_IMODE((dest / relative).stat().st_mode) == stat.S_IMODE((source / relative).stat().st_mode)
    assert (dest / "tools" / "run.sh").read_text() == "#!/bin/sh\necho student12\n"


def test_checkpoints_and_metadata_are_never_deployed(home: Path) -> None:
    compiled = Renderer().workshop(DATA / "WKSHP-BinaryAndCheckpoints")
    dest = home / compiled.name

    written = compiled.render_into(dest, variables())

    assert compiled.notebooks == (Path("1-Notebook.ipynb"),)
    assert sorted(tree(dest)) == [
        "1-Notebook.ipynb",
        "data",
        "data/all-bytes.bin",
        "data/windows.txt",
        "nested",
        "nested/deeper",
        "nested/deeper/notes.md",
        "tools",
        "tools/run.sh",
    ]
    assert written == 5 == compiled.file_count


def test_render_again_converges_and_removes_old_files(home: Path) -> None:
    compiled = Renderer().workshop(DATA / "WKSHP-BinaryAndCheckpoints")
    dest = home / compiled.name
    compiled.render_into(dest, variables())
    first = tree(dest)
    (dest / "student-work.ipynb").write_text("{}")
    (dest / "data" / "all-bytes.bin").write_bytes(b"changed by the student")
    (dest / "nested" / "deeper").chmod(0o500)
    (home / f".{compiled.name}.wodmail-new-0000").mkdir()  # left by a crash

    compiled.render_into(dest, variables())
    compiled.render_into(dest, variables())

    assert tree(dest) == first
    assert sorted(p.name for p in home.iterdir()) == [compiled.name]


def test_owner_is_given_every_file_and_folder(home: Path) -> None:
    # The suite runs as root (scripts/test installs Debian packages; CI is root): a run
    # without root fails here rather than skipping what the daemon does on a real host.
    assert os.geteuid() == 0, "changing owners needs root: run the suite as root (scripts/test)"
    compiled = Renderer().workshop(DATA / "WKSHP-BinaryAndCheckpoints")
    dest = home / compiled.name
    os.chown(home, 4242, 4343)
    parent = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with acting_as(Identity(4242, 4343)):  # as wodmail.homes runs it in a student's home
            compiled.render_at(parent, compiled.name, variables())
    finally:
        os.close(parent)

    for path in [dest, *dest.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4343)


# --------------------------------------------------------------------------- symlinks


def test_symlink_pointing_outside_the_workshop_is_refused(
    tmp_path: Path, home: Path, catalog: Callable[[str], Path]
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for students")
    content = catalog("WKSHP-QuotedValues")
    (content / "data").mkdir()
    (content / "data" / "leak.txt").symlink_to(secret)

    with pytest.raises(StepFailed) as failure:
        Renderer().workshop(content)

    assert str(failure.value) == ("WKSHP-QuotedValues/data/leak.txt: symbolic link points outside the workshop folder")
    assert list(home.iterdir()) == []


def test_symlink_inside_the_workshop_is_kept_as_a_link(home: Path, catalog: Callable[[str], Path]) -> None:
    # Issue 15: the original's rsync kept links as links; so does wodmail (it copied the
    # target before, and refused a link to a folder above it as a loop).
    content = catalog("WKSHP-QuotedValues")
    (content / "same-values.py").symlink_to("values.py")
    (content / "loop").symlink_to(".")

    compiled = Renderer().workshop(content)
    dest = home / content.name
    compiled.render_into(dest, variables(VALUE="v"))
    assert os.readlink(dest / "same-values.py") == "values.py"
    assert (dest / "same-values.py").read_text() == "VALUE = '''v'''\n"  # the rendered file, through it
    assert os.readlink(dest / "loop") == "."  # not followed: no loop


def test_dest_that_is_a_symlink_is_refused(tmp_path: Path, home: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / "WKSHP-QuotedValues").symlink_to(elsewhere)
    compiled = Renderer().workshop(DATA / "WKSHP-QuotedValues")

    with pytest.raises(StepFailed, match="is a symbolic link"):
        compiled.render_into(home / "WKSHP-QuotedValues", variables(VALUE="v"))

    assert list(elsewhere.iterdir()) == []
    assert (home / "WKSHP-QuotedValues").is_symlink()


def test_dest_whose_parent_is_a_symlink_is_refused(tmp_path: Path, home: Path) -> None:
    link = tmp_path / "homes" / "student13"
    link.symlink_to(home)
    compiled = Renderer().workshop(DATA / "WKSHP-QuotedValues")

    with pytest.raises(StepFailed, match="student13 is a symbolic link"):
        compiled.render_into(link / "WKSHP-QuotedValues", variables(VALUE="v"))

    assert list(home.iterdir()) == []


# --------------------------------------------------------------------------- caching


def test_templates_are_compiled_once_and_reused_for_every_student(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiles: list[str | None] = []
    original = ImmutableSandboxedEnvironment.compile

    def counting_compile(self: Any, *args: Any, **kw: Any) -> Any:
        compiles.append(str(kw.get("name")))
        return original(self, *args, **kw)

    monkeypatch.setattr(ImmutableSandboxedEnvironment, "compile", counting_compile)
    renderer = Renderer()
    compiled = renderer.workshop(SHIPPED / "WKSHP-Sample")
    templates = dict(compiled.templates)
    assert len(compiles) == len(templates) == 4

    for stdid in (12, 13, 14):
        (home.parent / f"student{stdid}").mkdir(exist_ok=True)
        again = renderer.workshop(SHIPPED / "WKSHP-Sample")
        again.render_into(home.parent / f"student{stdid}" / "WKSHP-Sample", variables(stdid))
        assert again is compiled
        assert all(again.templates[path] is template for path, template in templates.items())

    assert len(compiles) == 4


async def test_a_burst_waits_for_one_compile_made_beside_the_event_loop(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs of a burst that need a workshop not compiled yet all wait for one compile, made
    in a thread: a cold compile takes 0.1-0.3 s of Jinja, during which, on the event loop,
    every other job stood still."""
    compiled_in: list[int] = []
    original = ImmutableSandboxedEnvironment.compile

    def recording_compile(self: Any, *args: Any, **kw: Any) -> Any:
        compiled_in.append(threading.get_ident())
        return original(self, *args, **kw)

    monkeypatch.setattr(ImmutableSandboxedEnvironment, "compile", recording_compile)
    shutil.copytree(SHIPPED / "WKSHP-Sample", tmp_path / "catalog" / "WKSHP-Sample")
    site.values["WORKSHOPDIR"] = str(tmp_path / "catalog")
    site.workshops = {"WKSHP-Sample": {"range": [1, 99]}}
    location = load_location(site.write())
    client = HttpClient(timeout=10.0)
    services, _ = build_services(location, client)
    workshop = location.workshops["WKSHP-Sample"]
    try:
        results = await asyncio.gather(*(services.compiled(workshop) for _ in range(50)))
        assert all(result is results[0] for result in results)
        assert len(compiled_in) == len(results[0].templates) == 4  # each template once
        assert threading.get_ident() not in compiled_in  # never on the event loop's thread
        assert await services.compiled(workshop) is results[0]  # from the cache, now
        assert len(compiled_in) == 4
    finally:
        await services.homes.keeper.aclose()
        await client.aclose()


def test_the_daemon_compiles_its_workshops_at_start_and_names_one_that_cannot_be_deployed(
    site: Site, tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    """The jobs process compiles the location's workshops when it starts, before any command:
    the first CREATEs of a burst find them ready, and a template error is in the log at once."""
    catalog = tmp_path / "catalog"
    shutil.copytree(SHIPPED / "WKSHP-Sample", catalog / "WKSHP-Sample")
    shutil.copytree(SHIPPED / "WKSHP-Sample", catalog / "WKSHP-Broken")
    (catalog / "WKSHP-Broken" / "broken.ipynb").write_text('{"cells": [], "x": "{{ STUDENT "}')
    site.values["WORKSHOPDIR"] = str(catalog)
    site.workshops = {"WKSHP-Sample": {"range": [1, 99]}, "WKSHP-Broken": {"range": [100, 199]}}
    daemon = daemon_factory()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = daemon.log.read_text(errors="replace")
        if "compiled workshop WKSHP-Sample" in log and "WKSHP-Broken cannot be deployed" in log:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"no compile at start in the log:\n{log[-3000:]}")
    assert "broken.ipynb" in log.split("WKSHP-Broken cannot be deployed", 1)[1].splitlines()[0]
    assert "cannot empty" not in log  # no home erased yet, so no trash: nothing to say
    assert site.jobs() == []


def test_a_change_in_the_catalog_is_picked_up_at_most_once_a_second(home: Path, catalog: Callable[[str], Path]) -> None:
    now = [1000.0]
    renderer = Renderer(clock=lambda: now[0])
    content = catalog("WKSHP-QuotedValues")
    first = renderer.workshop(content)
    source = content / "values.py"
    source.write_text("VALUE = 'new: {{ VALUE }}'\n")
    later = source.stat().st_mtime + 10
    os.utime(source, (later, later))

    now[0] += 0.5
    assert renderer.workshop(content) is first  # not looked at again within the second

    now[0] += 0.6
    second = renderer.workshop(content)
    assert second is not first
    second.render_into(home / content.name, variables(VALUE="v"))
    assert (home / content.name / "values.py").read_text() == "VALUE = 'new: v'\n"

    now[0] += 1.1
    assert renderer.workshop(content) is second  # nothing changed: kept
    (content / "extra.txt").write_text("a new file")
    now[0] += 1.1
    third = renderer.workshop(content)
    assert third is not second
    assert Path("extra.txt") in third.copied


def test_a_catalog_switched_by_a_symlink_is_picked_up(
    tmp_path: Path, home: Path, catalog: Callable[[str], Path]
) -> None:
    release = catalog("WKSHP-QuotedValues")
    other = tmp_path / "release-2" / "WKSHP-QuotedValues"
    shutil.copytree(release, other)
    (other / "values.py").write_text("VALUE = 'release 2'\n")
    current = tmp_path / "current"
    current.symlink_to(release.parent)
    renderer = Renderer(recheck_seconds=0)
    first = renderer.workshop(current / "WKSHP-QuotedValues")

    current.unlink()
    current.symlink_to(other.parent)

    second = renderer.workshop(current / "WKSHP-QuotedValues")
    assert second is not first
    second.render_into(home / "WKSHP-QuotedValues", variables(VALUE="v"))
    assert (home / "WKSHP-QuotedValues" / "values.py").read_text() == "VALUE = 'release 2'\n"


# --------------------------------------------------------------------------- completion


def test_completion_percentage_counts_executed_code_cells() -> None:
    deployed = DATA / "WKSHP-HalfDone"
    notebooks = [
        Path("1-Done.ipynb"),  # 3 of 3 code cells executed
        Path("2-Partly.ipynb"),  # 1 of 4
        Path("3-Truncated.ipynb"),  # not valid JSON: its 2 code cells count, not executed
        Path("sub/4-OnlyMarkdown.ipynb"),  # no code cell
        Path("5-DeletedByStudent.ipynb"),  # missing: skipped
    ]

    assert completion_percentage(deployed, notebooks) == (3 + 1 + 0) * 100 // (3 + 4 + 2)
    assert completion_percentage(deployed, notebooks[:1]) == 100
    assert completion_percentage(deployed, notebooks[3:]) == 0
    assert completion_percentage(deployed, []) == 0


@pytest.mark.parametrize(
    "text",
    [
        '{"cells": [{"cell_type": "code", "execution_count": 1}, {"cell_type": "code", "execution_count": null}]}',
        '{"cells": [{"cell_type": "code", "execution_count": 2, "outputs": [{"execution_count": null}]}]}',
        '{"cells": [{"cell_type": "markdown"}, {"cell_type": "code"}, {"source": ["x"]}]}',
        '{"cells": [1, "code", null, {"cell_type": "code", "execution_count": 0}]}',  # not all objects
        '{"cells": [{"cell_type": ["code"], "execution_count": 1}]}',  # a type that is not a string
        '{"cells": {"cell_type": "code"}}',  # cells not a list: the text is counted
        '{"metadata": {}, "nbformat": 4}',  # no cells
        '{"cells": [], "cells": [{"cell_type": "code", "execution_count": 1}]}',  # the last one counts
        '{"cells": [{"cell_type": "code", "execution_count": 1}], "cells": 7}',
        '{"cells": [{"cell_type": "code", "execution_count": NaN}]}',  # only Python's json takes NaN
        '[{"cell_type": "code"}]',
        '{"cells": [{"cell_type": "code", "execution_count": 1}',  # cut short
        '{"a": ' + "[" * 5000 + "]" * 5000 + ', "cells": [{"cell_type": "code", "execution_count": 1}]}',
    ],
)
def test_the_fast_completion_count_agrees_with_pythons_json(text: str) -> None:
    assert _count_code_cells(text, text.encode()) == _count_code_cells_slowly(text)


def test_completion_percentage_does_not_follow_symlinks(tmp_path: Path) -> None:
    deployed = tmp_path / "WKSHP-HalfDone"
    shutil.copytree(DATA / "WKSHP-HalfDone", deployed)
    (deployed / "2-Partly.ipynb").unlink()
    (deployed / "2-Partly.ipynb").symlink_to(DATA / "WKSHP-HalfDone" / "1-Done.ipynb")
    os.mkfifo(deployed / "6-Fifo.ipynb")

    notebooks = [Path("1-Done.ipynb"), Path("2-Partly.ipynb"), Path("6-Fifo.ipynb")]
    assert completion_percentage(deployed, notebooks) == 100


# --------------------------------------------------------------------------- shipped samples


@pytest.mark.parametrize("mode", ["WKSHP", "CHLG"])
def test_shipped_sample_workshops_render_to_valid_notebooks(home: Path, mode: str) -> None:
    renderer = Renderer()
    for name in ("WKSHP-Sample", "WKSHP-SampleReset"):
        compiled = renderer.workshop(SHIPPED / name)
        dest = home / name
        workshop = name.replace("WKSHP-", f"{mode}-")
        count = compiled.render_into(dest, variables(MODE=mode, WORKSHOP=workshop))

        assert count == compiled.file_count
        assert compiled.notebooks
        for notebook in compiled.notebooks:
            document = json.loads((dest / notebook).read_text(encoding="utf-8"))
            assert document["nbformat"] == 4
            text = json.dumps(document, ensure_ascii=False)
            assert "{{" not in text and "{%" not in text
        assert not (dest / "wod.yml").exists()
        assert completion_percentage(dest, compiled.notebooks) == 0

    sample = home / "WKSHP-Sample"
    assert PASSWORD in cell_text(sample / "1-Python101.ipynb", 0)
    assert "student12" in cell_text(sample / "0-ReadMeFirst.ipynb", 0)
    assert "HPE Developer Community" in cell_text(sample / "0-ReadMeFirst.ipynb", 0)
    assert "nb3.example.com" in cell_text(sample / "0-ReadMeFirst.ipynb", 0)
    assert ("challenge" in cell_text(sample / "2-Files.ipynb", 0)) == (mode == "CHLG")
    assert (sample / "pictures" / "logo.png").read_bytes() == (
        SHIPPED / "WKSHP-Sample" / "pictures" / "logo.png"
    ).read_bytes()
    assert (sample / "pictures" / "logo.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "student12" in (sample / "setup.sh").read_text()
    assert os.access(sample / "setup.sh", os.X_OK)


def test_shipped_samples_are_valid_json_before_rendering() -> None:
    for notebook in SHIPPED.glob("*/*.ipynb"):
        assert json.loads(notebook.read_text(encoding="utf-8"))["nbformat"] == 4, notebook


def test_a_challenge_deploys_the_workshop_content() -> None:
    assert content_name("CHLG-Sample") == "WKSHP-Sample"
    assert content_name("WKSHP-Sample") == "WKSHP-Sample"


def test_compiled_workshop_describes_its_content() -> None:
    compiled = Renderer().workshop(SHIPPED / "WKSHP-Sample")

    assert isinstance(compiled, CompiledWorkshop)
    assert compiled.name == "WKSHP-Sample"
    assert compiled.root == (SHIPPED / "WKSHP-Sample").absolute()
    assert compiled.notebooks == (
        Path("0-ReadMeFirst.ipynb"),
        Path("1-Python101.ipynb"),
        Path("2-Files.ipynb"),
    )
    assert compiled.copied == (Path("data/sample.csv"), Path("pictures/logo.png"))
    assert set(compiled.templates) == {*compiled.notebooks, Path("setup.sh")}


def test_missing_workshop_folder_is_a_step_failure(tmp_path: Path) -> None:
    with pytest.raises(StepFailed, match=r"WKSHP-Nowhere: the workshop folder .* is missing"):
        Renderer().workshop(tmp_path / "WKSHP-Nowhere")


# --------------------------------------------------------------------------- compiled templates kept on disk


def test_a_restarted_renderer_takes_its_templates_from_the_code_cache(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "state" / "template-cache"
    first = Renderer(code_cache=cache).workshop(SHIPPED / "WKSHP-Sample")
    kept = sorted(cache.iterdir())
    assert len(kept) == len(first.templates) == 4
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700

    def no_compiling(self: Any, *args: Any, **kw: Any) -> Any:
        raise AssertionError(f"compiled {kw.get('name')} again")

    monkeypatch.setattr(ImmutableSandboxedEnvironment, "compile", no_compiling)
    again = Renderer(code_cache=cache).workshop(SHIPPED / "WKSHP-Sample")
    again.render_into(home / "WKSHP-Sample", variables())
    reference = tmp_path / "reference"
    reference.mkdir()
    first.render_into(reference / "WKSHP-Sample", variables())

    for path in again.templates:
        assert (home / "WKSHP-Sample" / path).read_bytes() == (reference / "WKSHP-Sample" / path).read_bytes()
    assert sorted(cache.iterdir()) == kept


def test_a_cached_template_still_names_the_line_of_an_undefined_variable(tmp_path: Path, home: Path) -> None:
    cache = tmp_path / "template-cache"
    Renderer(code_cache=cache).workshop(DATA / "WKSHP-UndefinedVariable")
    compiled = Renderer(code_cache=cache).workshop(DATA / "WKSHP-UndefinedVariable")
    values = variables()
    del values["PASSSTU"]

    with pytest.raises(
        StepFailed, match=r"^WKSHP-UndefinedVariable/1-Intro\.ipynb line \d+: undefined variable 'PASSSTU'$"
    ):
        compiled.render_into(home / compiled.name, values)


def test_a_changed_or_damaged_template_is_compiled_again(
    tmp_path: Path, home: Path, catalog: Callable[[str], Path]
) -> None:
    cache = tmp_path / "template-cache"
    content = catalog("WKSHP-QuotedValues")
    Renderer(code_cache=cache).workshop(content)
    kept = sorted(cache.iterdir())
    (content / "values.py").write_text("VALUE = 'changed: {{ VALUE }}'\n")
    for file in kept:
        if file.read_bytes() and file != kept[0]:
            file.write_bytes(b"\x00damaged")

    compiled = Renderer(code_cache=cache).workshop(content)
    compiled.render_into(home / content.name, variables(VALUE="v"))

    assert (home / content.name / "values.py").read_text() == "VALUE = 'changed: v'\n"
    assert sorted(cache.iterdir()) == kept  # replaced in place: one file per template


def test_a_cache_folder_others_may_write_is_not_used(tmp_path: Path, home: Path) -> None:
    cache = tmp_path / "template-cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)

    compiled = Renderer(code_cache=cache).workshop(SHIPPED / "WKSHP-Sample")
    compiled.render_into(home / "WKSHP-Sample", variables())

    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------- substitution path

CATALOG_NOTEBOOKS = Path(__file__).parent / "data" / "catalog" / "notebooks"


def every_workshop() -> list[Path]:
    folders = [*DATA.iterdir(), *SHIPPED.iterdir(), *CATALOG_NOTEBOOKS.iterdir()]
    return sorted(f for f in folders if f.is_dir() and f.name.startswith(("WKSHP-", "CHLG-")))


def compiled_files(workshop: Path) -> list[Any]:
    try:
        compiled = Renderer(optional_variables=["KIBANAPWD"]).workshop(workshop)
    except StepFailed:
        return []  # a workshop that does not compile (its own test says why)
    return list(compiled._templated.values())


def test_substitution_path_covers_plain_templates_and_only_them() -> None:
    """Templates made of text and lookups take the fast path; a statement, a filter or a call
    sends a file to Jinja's compiled code."""
    files = [f for w in every_workshop() for f in compiled_files(w)]
    fast = {f.where for f in files if f.substitution is not None}
    slow = {f.where for f in files if f.substitution is None}
    assert "WKSHP-Hostvars/config.yaml" in fast, sorted(fast)
    assert any("RawAndLiteralBraces" in where for where in fast), sorted(fast)
    assert slow == {
        "WKSHP-AnsibleCompat/compat.sh",  # {% if %}, filters
        "WKSHP-Docker101/0-ReadMeFirst.ipynb",  # {% if %}
        "WKSHP-Docker101/2-WKSHP-Conclusion.ipynb",  # {% for %}
        "WKSHP-Docker101/lab/app/main.py",  # {% if %}
        "WKSHP-ErrorHidesValues/leak.py",  # a dict literal
        "WKSHP-NotebookBrokenByTemplate/1-Cells.ipynb",  # {% for %}
        "WKSHP-Sample/2-Files.ipynb",  # {% if %}
        "WKSHP-SandboxCyclerGlobals/1-Escape.ipynb",  # calls
    }


values_strategy = st.one_of(
    st.text(max_size=40),
    st.sampled_from(['"', "\\", "\n", "\x00", "{{ x }}", "é", "</script>", ""]),
    st.integers(),
    st.none(),
    st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=values_strategy, host=values_strategy, extra=values_strategy)
def test_substitution_path_renders_what_jinja_renders(password: object, host: object, extra: object) -> None:
    """For every templated file of every sample workshop, with any values: the fast path's
    text equals what the compiled Jinja template renders, or both fail."""
    values = variables(PASSSTU=password, JPHOSTEXT=host, KIBANAPWD=extra, **{"IP-WKSHP-Hostvars": extra})
    context = render_context(values)
    for workshop in every_workshop():
        for file in compiled_files(workshop):
            if file.substitution is None:
                continue
            env = file.template.environment
            try:
                expected: str | None = file.template.render(context)
            except Exception:  # noqa: BLE001 - the fast path must fail too
                expected = None
            try:
                got: str | None = file.substitution.render(env, context, {})
            except Exception:  # noqa: BLE001
                got = None
            assert got == expected, file.where
