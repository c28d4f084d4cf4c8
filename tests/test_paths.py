"""Nothing a sender writes reaches a path outside the student's home, a template's
internals, or a shell; the files wodmail keeps for a job are private and short-lived.

End to end through a real daemon: workshop names and student ids that try to leave
WORKSHOPDIR / STUDENTDIR, symlinks in workshop content and in homes, sandbox escapes in
templates, shell metacharacters in every field, and the mode and life of a hook's
variables file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import DATA, REPO, SAMPLES, Daemon, Site, legacy_dialogue, send_legacy
from tests.standins import JupyterHubStandin, RegistrationApp

HOSTILE = DATA / "hostile"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every folder wodmail may write to, with a file in it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("not for students\n")
    return folder


@pytest.fixture
def catalog_site(site: Site, tmp_path: Path, outside: Path) -> Site:
    """A location whose catalog holds the sample, the hostile workshops and a workshop
    with symlinks pointing out of it."""
    catalog = tmp_path / "catalog"
    shutil.copytree(SAMPLES / "WKSHP-Sample", catalog / "WKSHP-Sample")
    for workshop in (HOSTILE / "workshops").iterdir():
        shutil.copytree(workshop, catalog / workshop.name)
    link_out = catalog / "WKSHP-LinkOut"
    link_out.mkdir()
    (link_out / "notes.md").write_text("notes\n")
    (link_out / "escape.txt").symlink_to(outside / "secret.txt")
    (link_out / "etc").symlink_to("/etc")
    playbooks = tmp_path / "playbooks"
    shutil.copytree(HOSTILE / "playbooks", playbooks)
    site.values.update(WORKSHOPDIR=str(catalog), PLAYBOOKDIR=str(playbooks))
    site.workshops = {
        "WKSHP-Sample": {"range": [1, 99], "varpass": True},
        "WKSHP-ClassMro": {"range": [100, 109]},
        "WKSHP-CyclerGlobals": {"range": [110, 119]},
        "WKSHP-LinkOut": {"range": [120, 129]},
        "WKSHP-Hook": {"range": [130, 139], "varpass": True, "variables": {"RECORD": str(tmp_path / "record.json")}},
    }
    return site


def job_of(site: Site, stdid: int, timeout: float = 60) -> tuple[object, ...]:
    """The latest job of `stdid`, once it ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [row for row in site.jobs() if row[2] == stdid]
        if mine and mine[-1][3] in ("done", "failed"):
            return mine[-1]
        time.sleep(0.05)
    raise AssertionError(f"no finished job for student {stdid}: {site.jobs()}")


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`: file contents, symlink targets, folders."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = "dir"
    return found


# --- paths -----------------------------------------------------------------------------------------

REFUSED_NAMES = {
    "WKSHP-..": "workshop name 'WKSHP-..' is not valid",
    "WKSHP-Sample/../../etc": "workshop name 'WKSHP-Sample/../../etc' is not valid",
    "../WKSHP-Sample": "workshop name '../WKSHP-Sample' is not valid",
    "/etc/passwd": "workshop name '/etc/passwd' is not valid",
    "WKSHP-Sample/..": "workshop name 'WKSHP-Sample/..' is not valid",
    "WKSHP-Sample\\..\\x": "workshop name 'WKSHP-Sample\\\\..\\\\x' is not valid",
    "WKSHP-.hidden..": "workshop name 'WKSHP-.hidden..' is not valid",
}
REFUSED_STUDENTS = {
    "../1": "student id '../1' is not a number",
    "1/../../2": "student id '1/../../2' is not a number",
    "-1": "student id '-1' is not a number",
    "/etc": "student id '/etc' is not a number",
    "0": "student 0 is outside this location's range 1..2000",
    "1,2": "only RESET takes a student range, CREATE got '1,2'",
}


def test_names_and_ids_cannot_leave_their_folders(
    catalog_site: Site, outside: Path, daemon_factory: Callable[[], Daemon]
) -> None:
    site = catalog_site
    daemon = daemon_factory()
    for name, reason in REFUSED_NAMES.items():
        code, text = daemon.send("CREATE 1 c1", name)
        assert code == 554 and text.decode().startswith(reason), (name, text)
    for student, reason in REFUSED_STUDENTS.items():
        code, text = daemon.send(f"CREATE {student} c1")
        assert code == 554 and text.decode().startswith(reason), (student, text)
    assert site.jobs() == []
    assert not site.student_dir.exists() or list(site.student_dir.iterdir()) == []


def test_symlinks_in_workshops_and_homes_lead_nowhere(
    catalog_site: Site, outside: Path, tmp_path: Path, daemon_factory: Callable[[], Daemon]
) -> None:
    site = catalog_site
    before = tree(outside)
    # A home that is itself a symlink (to a folder outside STUDENTDIR).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    site.student_dir.mkdir()
    site.home(5).symlink_to(elsewhere)
    daemon = daemon_factory()

    assert daemon.send("CREATE 5 c5")[0] == 250
    job = job_of(site, 5)
    assert job[3] == "failed" and f"{site.home(5)} is a symlink" in str(job[4]), job
    assert list(elsewhere.iterdir()) == []

    # Workshop content with a file symlink and a folder symlink pointing out of the workshop.
    assert daemon.send("CREATE 120 c120", "WKSHP-LinkOut")[0] == 250
    job = job_of(site, 120)
    assert job[3] == "failed", job
    assert re.search(r"WKSHP-LinkOut/(escape\.txt|etc): symbolic link points outside the workshop folder", str(job[4]))
    assert not (site.home(120) / "WKSHP-LinkOut" / "escape.txt").exists()

    # A student plants links in the home; CLEANUP erases the home, never what the links point to.
    assert daemon.send("CREATE 6 c6")[0] == 250
    assert job_of(site, 6)[3] == "done"
    (site.home(6) / "escape").symlink_to(outside)
    (site.home(6) / "WKSHP-Sample" / "data-link").symlink_to(outside / "secret.txt")
    assert daemon.send("CLEANUP 6 c6")[0] == 250
    assert job_of(site, 6)[1:4] == ("CLEANUP", 6, "done")
    assert not (site.home(6) / "escape").is_symlink()

    # The deployed workshop folder replaced by a symlink out: the next CREATE does not follow it.
    assert daemon.send("CREATE 7 c7")[0] == 250
    assert job_of(site, 7)[3] == "done"
    shutil.rmtree(site.home(7) / "WKSHP-Sample")
    (site.home(7) / "WKSHP-Sample").symlink_to(outside)
    assert daemon.send("CREATE 7 c77")[0] == 250
    job = job_of(site, 7)
    assert job[3] == "done" and (site.home(7) / "WKSHP-Sample").is_dir()
    assert not (site.home(7) / "WKSHP-Sample").is_symlink()

    assert tree(outside) == before
    assert list(elsewhere.iterdir()) == []


# --- templates ---------------------------------------------------------------------------------------


def test_template_sandbox_escapes_fail_the_job_naming_the_file(
    catalog_site: Site, daemon_factory: Callable[[], Daemon]
) -> None:
    site = catalog_site
    daemon = daemon_factory()
    assert daemon.send("CREATE 100 c100", "WKSHP-ClassMro")[0] == 250
    assert daemon.send("CREATE 110 c110", "WKSHP-CyclerGlobals")[0] == 250
    mro, globals_ = job_of(site, 100), job_of(site, 110)
    assert mro[3] == "failed" and globals_[3] == "failed"
    assert mro[4] == (
        "WKSHP-ClassMro/1-Escape.ipynb line 8: refused by the template sandbox:"
        " access to attribute '__class__' of 'str' object is unsafe."
    )
    assert globals_[4] == (
        "WKSHP-CyclerGlobals/escape.py line 2: refused by the template sandbox:"
        " access to attribute '__init__' of 'type' object is unsafe."
    )
    for stdid, workshop in ((100, "WKSHP-ClassMro"), (110, "WKSHP-CyclerGlobals")):
        assert not (site.home(stdid) / workshop).exists()
    assert "<class" not in str(mro[4]) and "builtins" not in str(globals_[4])  # nothing of the internals shown


# --- no shell ----------------------------------------------------------------------------------------------

SHELL_CALLS = re.compile(
    r"shell\s*=\s*True|os\.system\s*\(|os\.popen\s*\(|subprocess\.getoutput|subprocess\.getstatusoutput"
    r"|create_subprocess_shell|pty\.spawn|os\.exec[lv]p?e?\s*\(\s*['\"](/bin/)?(ba)?sh"
)


def test_no_shell_anywhere_in_the_code() -> None:
    files = sorted([*(REPO / "wodmail").rglob("*.py"), *(REPO / "verbs").rglob("*.py")])
    assert len(files) > 20
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if SHELL_CALLS.search(line)
    ]
    assert found == []


def test_shell_metacharacters_in_every_field_stay_data(
    catalog_site: Site, tmp_path: Path, daemon_factory: Callable[[], Daemon]
) -> None:
    """Every field of a command mail carries an attempt to run `touch CANARY`; the job runs
    (a hook playbook included) and no canary ever appears."""
    site = catalog_site
    canary = Path(f"/tmp/wmc{os.getpid()}")
    canary.unlink(missing_ok=True)
    touch = f"touch${{IFS}}{canary}"
    daemon = daemon_factory()
    accepted_email = f"x`{touch}`@example.com"
    mail = (
        f"From: `touch {canary}` <$(touch {canary})@example.com>\r\n"
        f"To: ;touch {canary};@example.com\r\n"
        f"Message-ID: <$(touch {canary})|{touch}@example.com>\r\n"
        f"X-Anything: && touch {canary}\r\n"
        f"Subject: CREATE 130 c130 {accepted_email}\r\n\r\nWKSHP-Hook\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", site.smtp_port, local_hostname=f"h$(touch {canary})") as client:
        client.sendmail(f"x|{touch}@example.com", [f"y`{touch}`@example.com"], mail)
    for subject, body in [
        (f"CREATE 1 c;touch${{IFS}}{canary}", "WKSHP-Sample"),
        (f"CREATE 1$(touch${{IFS}}{canary}) c1", "WKSHP-Sample"),
        ("CREATE 1 c1", f"WKSHP-Sample;touch${{IFS}}{canary}"),
        ("CREATE 1 c1", f"WKSHP-Sample`touch${{IFS}}{canary}`"),
    ]:  # (an e-mail address is any word without spaces or controls: `accepted_email` above)
        code, text = daemon.send(subject, body)
        assert code == 554, (subject, body, text)
    legacy = legacy_dialogue(f"PURGE 2 c2 $(touch {canary})", f"`touch {canary}`", sender=f"a|{touch}@example.com")
    send_legacy(site.legacy_port, legacy)
    job = job_of(site, 130)
    assert job[3] == "done", job
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["customer"] == "c130"
    with site.db() as conn:
        (command,) = conn.execute("SELECT command FROM jobs WHERE stdid = 130").fetchone()
    assert json.loads(command)["email"] == accepted_email  # kept as data, run by nothing
    time.sleep(0.5)
    assert not canary.exists()


# --- files ------------------------------------------------------------------------------------------------


def test_statedir_is_private_and_hook_variables_files_are_0600_and_removed(
    catalog_site: Site, tmp_path: Path, daemon_factory: Callable[[], Daemon]
) -> None:
    site = catalog_site
    daemon = daemon_factory()
    assert stat.S_IMODE(site.state_dir.stat().st_mode) == 0o700
    assert daemon.send("CREATE 131 c131", "WKSHP-Hook")[0] == 250
    job = job_of(site, 131)
    assert job[3] == "done", job
    record = json.loads((tmp_path / "record.json").read_text())
    (path,) = record["files"]
    assert record["modes"] == ["0600"]
    assert Path(path).parent == site.state_dir / "run" and Path(path).name.startswith(f"job{job[0]}-create.")
    assert not Path(path).exists()
    assert stat.S_IMODE((site.state_dir / "run").stat().st_mode) == 0o700
    assert [entry for entry in (site.state_dir / "run").iterdir() if entry.is_file()] == []


def test_a_hook_never_inherits_wodmails_secrets(
    catalog_site: Site, tmp_path: Path, app: RegistrationApp, daemon_factory: Callable[..., Daemon]
) -> None:
    """APIPWD given as env:NAME: the daemon reads it from its environment, its hooks do not."""
    site = catalog_site
    site.values.update(APIENDPOINT=app.url, APIUSER=app.username, APIPWD="env:WODMAIL_TEST_APIPWD")
    daemon = daemon_factory(WODMAIL_TEST_APIPWD=app.password)
    assert daemon.send("CREATE 132 c132", "WKSHP-Hook")[0] == 250
    job = job_of(site, 132)
    assert job[3] == "done", job
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["env_secret"] == "", "the hook's environment carried the API password"
    assert app.wait_for(lambda a: a.logins >= 1)  # the daemon itself did have it


def test_no_secret_key_of_the_location_reaches_a_hook(
    catalog_site: Site,
    tmp_path: Path,
    app: RegistrationApp,
    hub: JupyterHubStandin,
    daemon_factory: Callable[..., Daemon],
) -> None:
    """Every key of SECRET_KEYS, given as env:NAME (as sites do): the hook's environment holds
    none of their values, whatever the value's type (SIGNINGKEYS is a list of two)."""
    from wodmail.location import SECRET_KEYS
    from wodmail.location.original import ORIGINAL_NAMES

    site = catalog_site
    values = {key: f"{key.lower()}-value-{'s' * 40}" for key in SECRET_KEYS}
    # The original's name of a wodmail secret (WODAPIDBUSERPWD for APIPWD) holds the same
    # value: two different values under both names are a configuration error.
    for key, originals in ORIGINAL_NAMES:
        for original in originals:
            if original in values and key in values:
                values[original] = values[key]
    names = {key: f"WODMAIL_TEST_{key}" for key in SECRET_KEYS}
    env = {names[key]: value for key, value in values.items()}
    env["WODMAIL_TEST_SIGNINGKEYS_NEXT"] = "next-signing-key-" + "n" * 40
    site.values.update(
        {key: f"env:{name}" for key, name in names.items()},
        SIGNINGKEYS=[f"env:{names['SIGNINGKEYS']}", "env:WODMAIL_TEST_SIGNINGKEYS_NEXT"],
        APIENDPOINT=app.url,
        APIUSER=app.username,
        JPHUBAPISRV=hub.url,
    )
    site.workshops["WKSHP-Hook"]["variables"]["ENVNAMES"] = ",".join(sorted(env))
    app.password = values["APIPWD"]
    hub.token = values["JPHUBTOKEN"]
    daemon = daemon_factory(**env)
    assert daemon.send("CREATE 133 c133", "WKSHP-Hook")[0] == 250
    job = job_of(site, 133)
    assert job[3] == "done", job
    record = json.loads((tmp_path / "record.json").read_text())
    assert len(record["env"]) == len(env) == len(SECRET_KEYS) + 1
    leaked = [name for name, seen in zip(sorted(env), record["env"], strict=True) if seen]
    assert leaked == [], f"the hook's environment carried {leaked}"
    assert app.wait_for(lambda a: a.logins >= 1)  # the daemon itself did have them


def test_homes_are_owned_and_moded_as_the_location_says(site: Site, daemon_factory: Callable[..., Daemon]) -> None:
    site.values.update(HOMEOWNER="4242:4343", HOMEMODE="0700")
    daemon = daemon_factory()
    assert daemon.send("CREATE 5 c5")[0] == 250
    (job,) = site.wait_jobs(1)
    assert job[3] == "done", job
    home = site.home(5)
    st = home.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o700)
    deployed = [home / "WKSHP-Sample", *(home / "WKSHP-Sample").rglob("*")]
    assert len(deployed) > 5
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in deployed} == {(4242, 4343)}


def test_a_wrong_home_owner_stops_the_start(site: Site) -> None:
    site.values["HOMEOWNER"] = "root"
    result = subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.write()), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78
    assert "HOMEOWNER: must be student, none or UID:GID" in result.stderr


MOUNTINFO = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /srv/homes rw,relatime shared:20 - nfs4 filer:/export/homes rw,vers=4.2
41 22 0:36 / /srv/with\\040space rw,relatime shared:21 - fuse.sshfs host:/x rw
42 40 0:37 / /srv/homes/local rw,relatime shared:22 - tmpfs tmpfs rw
"""


def test_the_filesystem_of_the_homes_is_read_from_mountinfo(tmp_path: Path) -> None:
    from wodmail.homes import filesystem_of

    assert filesystem_of(Path("/srv/homes/student1"), MOUNTINFO) == "nfs4"
    assert filesystem_of(Path("/srv/homes"), MOUNTINFO) == "nfs4"
    assert filesystem_of(Path("/srv/homes/local/student2"), MOUNTINFO) == "tmpfs"  # the deepest mount wins
    assert filesystem_of(Path("/srv/homesick"), MOUNTINFO) == "ext4"  # a prefix is not a parent
    assert filesystem_of(Path("/srv/with space/s"), MOUNTINFO) == "fuse.sshfs"
    assert filesystem_of(Path("/dev/shm/nothing/yet")) == "tmpfs"  # the real table, a folder to come
    assert filesystem_of(tmp_path) not in ("", "tmpfs", "nfs4")


async def test_homes_on_a_local_disk_are_worked_on_inline_and_on_a_network_one_in_a_thread(tmp_path: Path) -> None:
    import threading

    from wodmail.homes import Homes

    homes = Homes(tmp_path / "students", owner="none")
    assert not homes.threaded and homes.filesystem
    seen: list[str] = []

    def where() -> str:
        seen.append(threading.current_thread().name)
        return "done"

    assert await homes.run(where) == "done"
    homes.threaded = True  # as a network filesystem would have it (none can be mounted here)
    assert await homes.run(where) == "done"
    await homes.reset(5)
    await homes.keeper.aclose()
    assert (tmp_path / "students" / "student5").is_dir()
    assert seen[0] == threading.current_thread().name and seen[1] != seen[0]
