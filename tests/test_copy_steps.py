"""A site's workshops deploy as the original backend's copy playbook deployed them.

ansible/copy_folder.yml of the original backend gave each student a JupyterLab workspace
opening the README, a checkpoint copy of 0-ReadMeFirst, the PDF script; left hidden files
unrendered and links as links; gave notebooks mode 0644; deployed a notebook already broken
in the catalog as it was; took a workshop from the private catalog when the public one has
none; and counted the completion its own way. Each is checked here by what lands on disk,
what the registration app stand-in receives and what `wodmail check` and the job's steps say.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Daemon, Site, with_app, wodmail
from tests.standins import RegistrationApp
from wodmail.command import Command
from wodmail.compiling import PRIVATE_TEMPLATED, TEMPLATED
from wodmail.copysteps import COPY_STEP_NAMES, CopySteps, workspace_document
from wodmail.errors import StepFailed
from wodmail.homeaccess import acl_xattr
from wodmail.location import keys as key_table
from wodmail.location import load_location
from wodmail.notebooks import completion_percentage
from wodmail.rendering import escape_for_json_string, is_already_escaped, template_environments
from wodmail.resources import product_path
from wodmail.scriptcompiling import compile_scripts, install_compiled, scripts_to_compile
from wodmail.transport import HttpClient
from wodmail.wiring import build_services
from wodmail.workshop import Renderer

PDF_SCRIPT = product_path("templates") / "wod-generate-pdf.sh"
_ACL_USER, _ACL_MASK, _ACL_UNDEFINED_ID = 0x02, 0x10, 0xFFFFFFFF
ALL_STEPS = CopySteps(workspace=True, checkpoint=True, pdf_script=PDF_SCRIPT)

#: A notebook broken the way the public catalog's is: an unescaped quote inside a JSON string.
BROKEN_NOTEBOOK = (
    '{\n "cells": [\n  {\n   "cell_type": "markdown",\n   "metadata": {},\n'
    '   "source": ["A panic is triggered by calling the built-in "panic" function, student{{ STDID }}"]\n'
    '  }\n ],\n "metadata": {},\n "nbformat": 4,\n "nbformat_minor": 4\n}\n'
)


def notebook(*cells: dict[str, Any]) -> str:
    """A notebook as Jupyter writes it (one key per line, indent 1)."""
    return json.dumps({"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 4}, indent=1) + "\n"


def markdown(text: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "metadata": {}, "source": [text]}


def code(ran: int | None, result: bool = False) -> dict[str, Any]:
    outputs: list[dict[str, Any]] = []
    if ran is not None and result:
        outputs.append(
            {"data": {"text/plain": ["42"]}, "execution_count": ran, "metadata": {}, "output_type": "execute_result"}
        )
    return {"cell_type": "code", "execution_count": ran, "metadata": {}, "outputs": outputs, "source": ["6 * 7"]}


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def copy_workshop(root: Path, name: str = "WKSHP-Copy") -> Path:
    """A workshop with what the original's copy steps treat apart."""
    top = root / name
    write(top / "0-ReadMeFirst.ipynb", notebook(markdown("Welcome student{{ STDID }}")), 0o600)
    write(top / "1-Lab.ipynb", notebook(markdown("Lab of {{ STUDENT }}"), *[code(None) for _ in range(10)]))
    write(top / "2-Broken.ipynb", BROKEN_NOTEBOOK)
    write(top / "tools" / "run.sh", "#!/bin/sh\necho student{{ STDID }}\n", 0o644)
    write(top / ".env", "TOKEN={{ STDID }}\n")
    write(top / "lab.env", "TOKEN={{ STDID }}\n")
    write(top / ".config" / "settings.py", "STUDENT = '{{ STUDENT }}'\n")
    write(top / "data" / "file.txt", "plain {{ data }}\n")
    (top / "data-link").symlink_to("data")
    (top / "absolute-link.txt").symlink_to(top / "data" / "file.txt")
    (top / "tools" / "readme-link.ipynb").symlink_to("../0-ReadMeFirst.ipynb")
    write(top / "wod.yml", "range: [1, 50]\n")
    return top


def student_variables(stdid: int = 12, **extra: object) -> dict[str, object]:
    return {"STDID": stdid, "STUDENT": f"student{stdid}", "MODE": "WKSHP", **extra}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --------------------------------------------------------------------------- what lands on disk


def test_a_deployment_lands_as_the_original_copy_playbook_left_it(tmp_path: Path) -> None:
    content = copy_workshop(tmp_path / "catalog")
    home = tmp_path / "student12"
    home.mkdir()
    compiled = Renderer(copy_steps=ALL_STEPS).workshop(content)
    compiled.render_into(home / "WKSHP-Copy", student_variables())
    dest = home / "WKSHP-Copy"

    # the JupyterLab workspace opens the workshop's README, the file browser in its folder
    workspaces = home / ".jupyter" / "lab" / "workspaces"
    workspace = workspaces / "default-37a8.jupyterlab-workspace"
    document = json.loads(workspace.read_text())
    layout = document["data"]["layout-restorer:data"]
    assert layout["main"]["current"] == "notebook:WKSHP-Copy/0-ReadMeFirst.ipynb"
    assert layout["main"]["dock"]["widgets"] == ["notebook:WKSHP-Copy/0-ReadMeFirst.ipynb"]
    assert document["data"]["file-browser-filebrowser:cwd"] == {"path": "WKSHP-Copy"}
    assert document["data"]["notebook:WKSHP-Copy/0-ReadMeFirst.ipynb"]["data"] == {
        "path": "WKSHP-Copy/0-ReadMeFirst.ipynb",
        "factory": "Notebook",
    }
    assert workspace.read_bytes() == workspace_document("WKSHP-Copy")
    assert mode_of(workspace) == 0o644
    assert [mode_of(p) for p in (home / ".jupyter", home / ".jupyter" / "lab", workspaces)] == [0o751] * 3

    # the checkpoint is the rendered README again; the PDF script is the shipped one
    readme = dest / "0-ReadMeFirst.ipynb"
    checkpoint = dest / ".ipynb_checkpoints" / "0-ReadMeFirst-checkpoint.ipynb"
    assert "Welcome student12" in readme.read_text()
    assert checkpoint.read_bytes() == readme.read_bytes()
    assert (mode_of(checkpoint), mode_of(checkpoint.parent)) == (0o644, 0o751)
    assert (dest / "wod-generate-pdf.sh").read_bytes() == PDF_SCRIPT.read_bytes()
    assert mode_of(dest / "wod-generate-pdf.sh") == 0o755

    # modes: a rendered notebook 0644 whatever the catalog's; a script gets the owner's rwx
    assert mode_of(readme) == 0o644 and mode_of(content / "0-ReadMeFirst.ipynb") == 0o600
    assert mode_of(dest / "1-Lab.ipynb") == 0o644
    assert mode_of(dest / "tools" / "run.sh") == 0o744
    assert (dest / "tools" / "run.sh").read_text() == "#!/bin/sh\necho student12\n"

    # a hidden file is left as it is; a file in a hidden folder, or not hidden, is rendered
    assert (dest / ".env").read_bytes() == (content / ".env").read_bytes()
    assert (dest / "lab.env").read_text() == "TOKEN=12\n"
    assert (dest / ".config" / "settings.py").read_text() == "STUDENT = 'student12'\n"

    # links stay links into the student's copy (an absolute one is made relative)
    assert os.readlink(dest / "data-link") == "data"
    assert os.readlink(dest / "absolute-link.txt") == "data/file.txt"
    assert os.readlink(dest / "tools" / "readme-link.ipynb") == "../0-ReadMeFirst.ipynb"
    assert (dest / "data-link" / "file.txt").read_text() == "plain {{ data }}\n"
    assert (dest / "absolute-link.txt").resolve() == (dest / "data" / "file.txt").resolve()
    assert compiled.links == (Path("absolute-link.txt"), Path("data-link"), Path("tools/readme-link.ipynb"))

    # the notebook already broken in the catalog: byte for byte, 0644, and a warning
    assert (dest / "2-Broken.ipynb").read_bytes() == BROKEN_NOTEBOOK.encode()
    assert mode_of(dest / "2-Broken.ipynb") == 0o644
    assert compiled.warnings == (
        "WKSHP-Copy/2-Broken.ipynb: not valid JSON in the catalog (line 6 column 62: Expecting ',' delimiter): "
        "deployed byte for byte, not rendered, as the original backend deployed it",
    )
    assert Path("2-Broken.ipynb") in compiled.notebooks  # its cells still count for the completion

    # and nothing else: no wod.yml, the checkpoint folder holds only the README's
    assert not (dest / "wod.yml").exists()
    assert os.listdir(checkpoint.parent) == ["0-ReadMeFirst-checkpoint.ipynb"]


def acl_of(path: Path, kind: str = "access") -> dict[tuple[int, int], int]:
    """The POSIX ACL of `path`: (tag, id) -> permissions."""
    value = os.getxattr(path, f"system.posix_acl_{kind}", follow_symlinks=False)
    entries = [struct.unpack("<HHI", value[i : i + 8]) for i in range(4, len(value), 8)]
    return {(tag, ident): perms for tag, perms, ident in entries}


def test_the_admin_acl_of_the_home_reaches_every_deployed_file(tmp_path: Path) -> None:
    # HOMEACL (wodmail.homeaccess) gives the home the admin's entry, access and default: every
    # file and folder a deployment makes inherits it; the mask follows each file's mode.
    content = copy_workshop(tmp_path / "catalog")
    home = tmp_path / "student12"
    home.mkdir()
    admin = 65534  # any uid: the entry is what is checked
    os.setxattr(home, "system.posix_acl_access", acl_xattr(0o750, [("u", admin, 7)]))
    os.setxattr(home, "system.posix_acl_default", acl_xattr(0o750, [("u", admin, 7)]))
    Renderer(copy_steps=ALL_STEPS).workshop(content).render_into(home / "WKSHP-Copy", student_variables())

    dest = home / "WKSHP-Copy"
    workspace = home / ".jupyter" / "lab" / "workspaces" / "default-37a8.jupyterlab-workspace"
    for path in [
        dest,
        dest / "0-ReadMeFirst.ipynb",
        dest / "2-Broken.ipynb",
        dest / "data" / "file.txt",
        dest / ".ipynb_checkpoints" / "0-ReadMeFirst-checkpoint.ipynb",
        dest / "wod-generate-pdf.sh",
        workspace,
    ]:
        entries = acl_of(path)
        assert entries[(_ACL_USER, admin)] == 7, path
        assert entries[(_ACL_MASK, _ACL_UNDEFINED_ID)] == (path.stat().st_mode >> 3) & 7, path
    assert acl_of(dest, "default")[(_ACL_USER, admin)] == 7


def test_without_copy_steps_only_the_workshops_own_files_land(tmp_path: Path) -> None:
    content = copy_workshop(tmp_path / "catalog")
    home = tmp_path / "student12"
    home.mkdir()
    Renderer().workshop(content).render_into(home / "WKSHP-Copy", student_variables())

    assert sorted(os.listdir(home)) == ["WKSHP-Copy"]
    assert not (home / "WKSHP-Copy" / ".ipynb_checkpoints").exists()
    assert not (home / "WKSHP-Copy" / "wod-generate-pdf.sh").exists()


def test_the_workspace_replaces_an_old_one_and_refuses_a_planted_link(tmp_path: Path) -> None:
    content = copy_workshop(tmp_path / "catalog")
    home = tmp_path / "student12"
    workspaces = home / ".jupyter" / "lab" / "workspaces"
    write(workspaces / "default-37a8.jupyterlab-workspace", "{}")
    compiled = Renderer(copy_steps=CopySteps(workspace=True)).workshop(content)

    compiled.render_into(home / "WKSHP-Copy", student_variables())
    assert json.loads((workspaces / "default-37a8.jupyterlab-workspace").read_text())["data"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / ".jupyter" / "lab").rename(tmp_path / "old-lab")
    (home / ".jupyter" / "lab").symlink_to(elsewhere)
    with pytest.raises(StepFailed, match="WKSHP-Copy: cannot deploy into"):
        compiled.render_into(home / "WKSHP-Copy", student_variables())
    assert list(elsewhere.iterdir()) == []


def test_a_link_pointing_outside_the_workshop_is_refused_clearly(tmp_path: Path) -> None:
    content = copy_workshop(tmp_path / "catalog")
    (content / "data" / "passwd").symlink_to("/etc/passwd")

    with pytest.raises(StepFailed) as refused:
        Renderer().workshop(content)
    assert str(refused.value) == "WKSHP-Copy/data/passwd: symbolic link points outside the workshop folder"


# --------------------------------------------------------------------------- notebooks already broken


def test_a_notebook_rendering_would_break_is_still_refused(tmp_path: Path) -> None:
    content = tmp_path / "WKSHP-Count"
    # not valid JSON as it stands, but a number makes it valid: rendered, and checked
    write(
        content / "1-Count.ipynb", notebook(code(None)).replace('"execution_count": null', '"execution_count": {{ N }}')
    )
    compiled = Renderer().workshop(content)
    assert compiled.warnings == ()

    (tmp_path / "ok").mkdir()
    compiled.render_into(tmp_path / "ok" / "WKSHP-Count", {"N": 3})
    assert (
        json.loads((tmp_path / "ok" / "WKSHP-Count" / "1-Count.ipynb").read_text())["cells"][0]["execution_count"] == 3
    )
    with pytest.raises(StepFailed, match=r"WKSHP-Count/1-Count\.ipynb: the rendered notebook is not valid JSON"):
        compiled.render_into(tmp_path / "ok" / "WKSHP-Count", {"N": "three"})


# --------------------------------------------------------------------------- values already escaped


@pytest.mark.parametrize(
    ("value", "escaped", "shown"),
    [
        ('say \\"hi\\"', True, 'say "hi"'),  # a site escaped its quotes for the original
        ("C:\\\\temp\\\\new", True, "C:\\temp\\new"),  # and its backslashes
        ('\\"a\\" and\\nb', True, '"a" and\nb'),  # other escapes ride along with them
        ('say "hi"', False, 'say "hi"'),  # not escaped: escaped by wodmail
        ("C:\\temp", False, "C:\\temp"),  # only \\t: a Windows path, not an escaped value
        ('\\"a" b', False, '\\"a" b'),  # one quote left bare: not valid, so escaped whole
        ("\\\\\\", False, "\\\\\\"),  # ends in a lone backslash
        ('\\"\x01', False, '\\"\x01'),  # a control character
        ("plain", False, "plain"),
    ],
)
def test_a_value_a_site_already_escaped_is_not_escaped_twice(value: str, escaped: bool, shown: str) -> None:
    assert is_already_escaped(value) is escaped
    inserted = escape_for_json_string(value)
    assert json.loads(f'"{inserted}"') == shown  # what the student reads in the notebook


def test_an_already_escaped_value_renders_as_the_original_rendered_it(tmp_path: Path) -> None:
    content = tmp_path / "WKSHP-Escaped"
    source = notebook(markdown("Password: {{ VALUE }}"))
    write(content / "1-Values.ipynb", source)
    compiled = Renderer().workshop(content)
    value = 'p\\"w\\\\d'

    (tmp_path / "home").mkdir()
    compiled.render_into(tmp_path / "home" / "WKSHP-Escaped", {"VALUE": value})
    deployed = (tmp_path / "home" / "WKSHP-Escaped" / "1-Values.ipynb").read_text()
    # byte for byte what Ansible's template (values inserted raw) wrote
    assert deployed == source.replace("{{ VALUE }}", value)
    assert json.loads(deployed)["cells"][0]["source"] == ['Password: p"w\\d']


# --------------------------------------------------------------------------- completion


def lab_notebook() -> str:
    """10 code cells, 5 of them run, each of those with a result (a second execution_count)."""
    return notebook(*[code(n if n <= 5 else None, result=True) for n in range(1, 11)])


def test_both_completion_methods_on_the_same_notebooks(tmp_path: Path) -> None:
    deployed = tmp_path / "WKSHP-Lab"
    write(deployed / "1-Lab.ipynb", lab_notebook())
    notebooks = [Path("1-Lab.ipynb")]

    assert completion_percentage(deployed, notebooks) == 50  # 5 of 10 code cells
    assert completion_percentage(deployed, notebooks, method="original") == 66  # 10 of 15 lines

    # a notebook in a sub-folder counts for wodmail only; one the student made, for the original only
    write(deployed / "more" / "2-More.ipynb", notebook(code(None), code(None)))
    write(deployed / "Untitled.ipynb", notebook(code(1)))
    notebooks.append(Path("more/2-More.ipynb"))
    assert completion_percentage(deployed, notebooks) == 41  # 5 of 12 code cells
    assert completion_percentage(deployed, notebooks, method="original") == 68  # 11 of 16 lines


def test_the_original_count_reads_no_link_and_no_hidden_notebook(tmp_path: Path) -> None:
    deployed = tmp_path / "WKSHP-Lab"
    write(deployed / "1-Lab.ipynb", lab_notebook())
    write(tmp_path / "outside.ipynb", notebook(*[code(None) for _ in range(20)]))
    (deployed / "2-Link.ipynb").symlink_to(tmp_path / "outside.ipynb")
    write(deployed / ".hidden.ipynb", notebook(*[code(None) for _ in range(20)]))

    assert completion_percentage(deployed, [], method="original") == 66


# --------------------------------------------------------------------------- the location keys


def test_the_location_keys_of_the_original_copy_are_checked(site: Site, tmp_path: Path) -> None:
    assert key_table.COPY_STEPS == COPY_STEP_NAMES
    assert set(PRIVATE_TEMPLATED) == set(TEMPLATED) - {"*.tf", "*.env"}
    site.values.update(COPYSTEPS=["workspace", "pdfscript"], COMPLETION="original")
    deployment = load_location(site.write()).deployment
    assert (deployment.copy_steps, deployment.completion, deployment.pdf_script) == (
        ("workspace", "pdfscript"),
        "original",
        PDF_SCRIPT,
    )
    for key, value, reason in [
        ("COPYSTEPS", ["workspace", "checkpoints"], "COPYSTEPS: unknown copy step 'checkpoints'"),
        ("COMPLETION", "lines", "COMPLETION: expected cells or original"),
        ("WORKSHOPPRIVDIR", str(tmp_path / "nowhere"), "WORKSHOPPRIVDIR: "),
    ]:
        site.values.update({key: value})
        site.write()
        result = wodmail(site, "check")
        assert result.returncode == 78, result
        assert reason in result.stderr.decode(), result.stderr
        del site.values[key]
        site.values.update(COPYSTEPS=["workspace"])


def test_a_workshop_only_the_private_catalog_has_is_deployed_from_it(site: Site, tmp_path: Path) -> None:
    public = tmp_path / "public"
    copy_workshop(public, "WKSHP-Both")
    private = tmp_path / "private"
    write(private / "WKSHP-Both" / "private.txt", "the public one wins\n")
    write(private / "WKSHP-Both" / "wod.yml", "range: [51, 60]\n")
    write(private / "WKSHP-Private" / "1-Private.ipynb", notebook(markdown("private {{ STDID }}")))
    write(private / "WKSHP-Private" / "terraform.tf", "count = {{ STDID }}\n")
    write(private / "WKSHP-Private" / "setup.sh", "echo {{ STDID }}\n")
    write(private / "WKSHP-Private" / "wod.yml", "range: [61, 70]\n")
    site.values.update(WORKSHOPDIR=str(public), WORKSHOPPRIVDIR=str(private))
    site.workshops = {}
    location = load_location(site.write())

    assert location.workshops["WKSHP-Both"].content == public / "WKSHP-Both"
    assert location.workshops["WKSHP-Private"].content == private / "WKSHP-Private"
    assert (location.workshops["WKSHP-Private"].first, location.workshops["WKSHP-Private"].last) == (61, 70)
    renderer = Renderer.for_location(location)
    dest = tmp_path / "home" / "WKSHP-Private"
    dest.parent.mkdir()
    renderer.workshop(location.workshops["WKSHP-Private"].content).render_into(dest, student_variables(61))
    assert "private 61" in (dest / "1-Private.ipynb").read_text()
    assert (dest / "setup.sh").read_text() == "echo 61\n"
    assert (dest / "terraform.tf").read_text() == "count = {{ STDID }}\n"  # the private find had no *.tf


# --------------------------------------------------------------------------- through the daemon


def test_the_daemon_deploys_warns_accepts_any_email_and_counts_as_the_original(
    site: Site, app: RegistrationApp, daemon_factory: Any, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog"
    copy_workshop(catalog)
    scripts = tmp_path / "scripts"
    write(scripts / "check.shc", "#!/bin/bash\necho student{{ STDID }} checked\n", 0o755)
    with_app(site, app)
    site.values.update(
        WORKSHOPDIR=str(catalog),
        COPYSTEPS=["workspace", "checkpoint", "pdfscript"],
        COMPLETION="original",
        SCRIPTDIR=str(scripts),
    )
    site.workshops = {"WKSHP-Copy": {"range": [1, 50], "compile": "check.shc"}}
    daemon: Daemon = daemon_factory()

    # any customer e-mail without whitespace or control characters is taken as given
    for stdid, address in [(1, "Person@Host.local"), (2, "someone@lab.test"), (3, "not-an-address")]:
        code, reply = daemon.send(f"CREATE {stdid} c{stdid} {address}", "WKSHP-Copy")
        assert code == 250, reply
    code, reply = daemon.send("CREATE 4 c4 bell\x07@example.com", "WKSHP-Copy")
    assert (code, b"holds whitespace or control characters" in reply) == (554, True), reply
    jobs = site.wait_jobs(3, timeout=60)
    assert [job[3] for job in jobs] == ["done"] * 3, (jobs, daemon.logs()[-3000:])
    with site.db() as conn:
        emails = [json.loads(row[0])["email"] for row in conn.execute("SELECT command FROM jobs ORDER BY id")]
        rows = conn.execute("SELECT name, result FROM steps WHERE job_id = ? ORDER BY started", (jobs[0][0],))
        steps = dict(rows.fetchall())
    assert emails == ["Person@Host.local", "someone@lab.test", "not-an-address"]

    # the broken notebook deployed as it was, and the job's deploy step says so
    home = site.home(1)
    assert (home / "WKSHP-Copy" / "2-Broken.ipynb").read_bytes() == BROKEN_NOTEBOOK.encode()
    assert "WKSHP-Copy/2-Broken.ipynb: not valid JSON in the catalog" in steps["deploy workshop"]
    assert (home / ".jupyter" / "lab" / "workspaces" / "default-37a8.jupyterlab-workspace").is_file()
    assert (home / "WKSHP-Copy" / ".ipynb_checkpoints" / "0-ReadMeFirst-checkpoint.ipynb").is_file()
    assert (home / "WKSHP-Copy" / "wod-generate-pdf.sh").is_file()
    # the `compile:` script, compiled with shc before the deployment: only its binary lands
    assert json.loads(steps["compile scripts"]) == "1 compiled: check.shc.x"
    order = list(steps)
    assert order.index("reset home") < order.index("compile scripts") < order.index("deploy workshop"), order
    assert not (home / "check.shc").exists() and mode_of(home / "check.shc.x") == 0o755
    ran = subprocess.run([home / "check.shc.x"], capture_output=True, text=True, check=True, timeout=30)
    assert ran.stdout == "student1 checked\n"

    # the student ran 5 of the 10 cells: the original's figure is reported
    (home / "WKSHP-Copy" / "1-Lab.ipynb").write_text(lab_notebook())
    code, reply = daemon.send("CLEANUP 1 c1", "WKSHP-Copy")
    assert code == 250, reply
    site.wait_jobs(4, timeout=60)
    # a job is done once its callbacks are queued; the outbox (in the doors' process) sends them
    assert app.wait_for(lambda a: any("cleaned" in call.body for call in a.puts("/customer/c1")))
    completion = [call.body for call in app.puts("/customer/c1") if "completionPercentage" in call.body]
    # 1-Lab: 10 of 15 lines; 2-Broken and 0-ReadMeFirst hold none: 66
    assert completion == [{"completionPercentage": "66"}]

    # `wodmail check` warns about the broken notebook
    checked = wodmail(site, "check")
    assert checked.returncode == 0, checked
    assert b"warning: WKSHP-Copy/2-Broken.ipynb: not valid JSON in the catalog" in checked.stdout


def test_private_templating_tasks_run_before_and_after_the_deployment(site: Site, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    copy_workshop(catalog)
    tasks, record = tmp_path / "tasks", tmp_path / "record"
    record.mkdir()
    for when in ("pre", "post"):
        steps = [
            {"ansible.builtin.stat": {"path": "{{ STUDENTDIR }}/student{{ STDID }}/WKSHP-Copy"}, "register": "there"},
            {
                "ansible.builtin.copy": {
                    "dest": f"{record}/{when}-{{{{ STDID }}}}.txt",
                    "content": "{{ WORKSHOP }} {{ STDID }} {{ PASSSTU }} deployed={{ there.stat.exists }} "
                    "home={{ ansible_env.HOME is defined }}\n",
                }
            },
        ]
        write(tasks / f"{when}_templating.yml", yaml.safe_dump(steps))
    site.values.update(
        WORKSHOPDIR=str(catalog),
        PRETEMPLATING=str(tasks / "pre_templating.yml"),
        POSTTEMPLATING=str(tasks / "post_templating.yml"),
    )
    site.workshops = {"WKSHP-Copy": {"range": [1, 50], "varpass": True}}
    location = load_location(site.write())
    workshop = location.workshops["WKSHP-Copy"]
    command = Command(verb="CREATE", stdid=7, last_stdid=7, customer="c7", workshop="WKSHP-Copy")

    async def deploy() -> str:
        async with HttpClient() as client:
            services, _ = build_services(location, client)
            try:
                await services.homes.reset(7)
                variables = services.template_variables(command, workshop, 7, "pw-of-7")
                return await services.deploy(7, workshop, variables)
            finally:
                await services.homes.keeper.aclose()  # no keeper outlives the test

    result = asyncio.run(deploy())
    # 5 rendered, 3 copied (the broken notebook, .env, data/file.txt), 3 links; the warning
    assert result == "11 files; " + Renderer().workshop(catalog / "WKSHP-Copy").warnings[0]
    # with the student's values (the password masked in any output), facts gathered, in order
    assert (record / "pre-7.txt").read_text() == "WKSHP-Copy 7 pw-of-7 deployed=False home=True\n"
    assert (record / "post-7.txt").read_text() == "WKSHP-Copy 7 pw-of-7 deployed=True home=True\n"
    assert list((site.state_dir / "run").glob("*.yml")) == []  # the play and its variables are gone


def test_the_shipped_pdf_script_is_shell_that_runs_nbconvert() -> None:
    text = PDF_SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n") and "jupyter nbconvert --to pdf" in text
    subprocess.run(["sh", "-n", str(PDF_SCRIPT)], check=True)


# --------------------------------------------------------------------------- compile: workshops


def test_compile_scripts_are_compiled_with_shc_and_only_the_binary_lands(tmp_path: Path) -> None:
    public, private = tmp_path / "scripts", tmp_path / "private-scripts"
    write(public / "check.shc", "#!/bin/bash\necho token={{ TOKEN }} student{{ STDID }}\n", 0o755)
    write(private / "solve.shc", "#!/bin/bash\necho private {{ STDID }}\n")
    text_env, _ = template_environments()
    names = scripts_to_compile("check.shc, solve.shc")
    values = {"TOKEN": "s3cr3t-t0ken", "STDID": 12}
    compiled = asyncio.run(compile_scripts(names, [public, private], values, text_env, tmp_path / "work"))
    home = tmp_path / "home"
    home.mkdir()
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert install_compiled(home_fd, compiled) == 2
    finally:
        os.close(home_fd)

    assert sorted(os.listdir(home)) == ["check.shc.x", "solve.shc.x"]  # no source, no C file
    assert mode_of(home / "check.shc.x") == 0o755
    assert b"s3cr3t-t0ken" not in (home / "check.shc.x").read_bytes()
    ran = subprocess.run([home / "check.shc.x"], capture_output=True, text=True, check=True, timeout=30)
    assert ran.stdout == "token=s3cr3t-t0ken student12\n"
    ran = subprocess.run([home / "solve.shc.x"], capture_output=True, text=True, check=True, timeout=30)
    assert ran.stdout == "private 12\n"
    assert list((tmp_path / "work").iterdir()) == []


def test_compile_fails_clearly_without_shc_or_a_script(tmp_path: Path) -> None:
    public = tmp_path / "scripts"
    write(public / "check.shc", "#!/bin/bash\necho hi\n")
    text_env, _ = template_environments()
    nowhere = tmp_path / "no-tools"
    nowhere.mkdir()
    with pytest.raises(StepFailed) as missing_tool:
        asyncio.run(compile_scripts(["check.shc"], [public], {}, text_env, tmp_path / "work", search_path=str(nowhere)))
    assert str(missing_tool.value) == (
        "compile: shc is not installed on this host (Debian: apt-get install shc); cannot compile check.shc"
    )
    with pytest.raises(StepFailed, match=r"compile: script gone\.shc is in none of the script folders"):
        asyncio.run(compile_scripts(["gone.shc"], [public], {}, text_env, tmp_path / "work"))
    assert scripts_to_compile(False) == scripts_to_compile("") == scripts_to_compile(None) == ()
    assert scripts_to_compile(["a.shc", " b.shc "]) == ("a.shc", "b.shc")
    with pytest.raises(StepFailed, match="not a script name"):
        scripts_to_compile("../../etc/x")
