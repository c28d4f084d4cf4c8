"""A site that runs the original backend switches to wodmail (docs/migrating.md).

The host here is laid out like the original's: /etc/wod.sh and /etc/wod.yml as wod-install
writes them, wod-backend's and wod-install's group variables, wod-private's generated and
group files and its wod-private.sh, the notebooks in wod-notebooks, the homes in /student
(all under a temporary folder). The wodmail location names those files (WODCONFIG) and
adds only what wodmail needs beside them. On it: the original's keys load and map, `check`
shows the mapping, the README's operator story runs (the daemon, a CREATE sent with a real
SMTP client, the home and the callbacks at the registration-app stand-in), the guide's
tested commands run, and `wodmail send --range` works like the original's wod-test-action.sh
through the admin socket. One daemon for the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SAMPLES, Daemon, Site, same_secret, wodmail
from tests.standins import JupyterHubStandin, RegistrationApp
from wodmail.errors import ConfigError
from wodmail.location import load_location
from wodmail.location.original import ORIGINAL_NAMES, mapping_table, read_shell_file

GUIDE = REPO / "docs" / "migrating.md"
LDAP_PASSWORD = "MotDePasseLDAP-never-shown"
ADMIN_PASSWORD = "AdminPassword-never-shown"


class OriginalSite(Site):
    """A Jupyter host laid out like the original backend's, and a wodmail location naming its files."""

    def __init__(self, root: Path, app: RegistrationApp, hub: JupyterHubStandin) -> None:
        super().__init__(root)
        self.app, self.hub = app, hub
        self.etc = root / "etc"
        self.home_dir = root / "home" / "wodadmin"
        self.student_dir = root / "student"
        self.private = self.home_dir / "wod-private"
        # In the guide's order: the Ansible precedence of the original (group variables of the
        # inventory, then include_vars, then the -e of WODANSPLAYOPT and WODANSPRIVOPT).
        self.paths = {
            "backend-all": self.home_dir / "wod-backend" / "ansible" / "group_vars" / "all.yml",
            "wod.yml": self.etc / "wod.yml",
            "wod.sh": self.etc / "wod.sh",
            "install-all": self.home_dir / "wod-install" / "ansible" / "group_vars" / "all.yml",
            "generated": self.private / "ansible" / "generated" / "test",
            "group": self.private / "ansible" / "group_vars" / "test",
            "private.sh": self.private / "scripts" / "wod-private.sh",
        }
        self.files = list(self.paths.values())
        self.values = {
            "WODCONFIG": [str(file) for file in self.files],
            "STATEDIR": str(self.state_dir),
            "SMTPHOST": "127.0.0.1",
            "SMTPPORT": self.smtp_port,
            "LEGACYPORT": self.legacy_port,
            # No hooks: RESET's range form is shown without an ansible-playbook run (seconds of CPU).
            "PLAYBOOKDIR": str(root / "playbooks"),
        }
        self.workshops = {
            "WKSHP-Sample": {"range": [1, 40], "varpass": True},
            "WKSHP-SampleReset": {"range": [41, 60], "reset": True, "varpass": True, "id": 7},
        }
        self.lay_out()

    def lay_out(self) -> None:
        home = self.home_dir
        for folder in (self.etc, home / "wod-backend" / "scripts", self.private / "scripts", self.student_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.student_dir.chmod(0o755)
        (self.private / "ansible" / "test").mkdir(parents=True)  # VARPRIVDIR: ANSIBLEPRIVDIR/WODGROUP
        shutil.copytree(SAMPLES, home / "wod-notebooks")
        texts = {
            # /etc/wod.sh as install-system.sh writes it (the parts a backend reads).
            "wod.sh": f"""#
# This is the wod.sh script, generated at install
# Please do not modify directly
#
export WODUSER=wodadmin
export WODTYPE=backend
export WODAPIDBFQDN="127.0.0.1"
export WODROOTDIR={home}
export WODGROUP=test
export WODBEDIR=$WODROOTDIR/wod-backend
export WODPRIVDIR=$WODROOTDIR/wod-private
export WODANSIBLEDIR=$WODROOTDIR/wod-$WODTYPE/ansible
export WODANSIBLEPRIVDIR=$WODPRIVDIR/ansible
export WODSCRIPTPRIVDIR=$WODPRIVDIR/scripts
export WODNOBO=$WODROOTDIR/wod-notebooks
WODPRIVINV=""
# Manages private inventory if any
if [ -f $WODPRIVDIR/ansible/inventory ]; then
    WODPRIVINV="-i $WODPRIVDIR/ansible/inventory"
fi
export WODPRIVINV
export WODSYSDIR=$WODROOTDIR/wod-$WODTYPE/sys
export WODSCRIPTDIR=$WODROOTDIR/wod-$WODTYPE/scripts

# These dirs are also fixed by default and can be changed as needed
export WODSTUDDIR={self.student_dir}
#
export WODANSPLAYOPT="-e WODGROUP=$WODGROUP -e WODSTUDDIR=$WODSTUDDIR"
export WODUSERMAX=100
""",
            "wod.yml": "WODUSER: wodadmin\nWODSENDER: wod@example.com\n",
            "backend-all": f"""---
UIDBASE: 2000
GIDBASE: 2000
CLEAN: false
VAULTPWD: VeryComplexPasswd1234!
NOCHECKSSH: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
JPHUB: /opt/jupyterhub
WODBETOKEN: 2c0246e2c8564dc6ac7b12c544b25d77
WODLDAPSRVNAME: ldap.example.org
WODLDAPDMN: dc=example,dc=org
WODLDAPPWD: {LDAP_PASSWORD}
WODLDAPPORT: "389"
SSHPORT-WKSHP-Docker101: 14101
IP-WKSHP-Docker101: x.y.z.t
""",
            "install-all": 'WODUSERMIN: 1\nWODUSERMAX: 100\nBRANDING: "Test WoD"\nSURVEYURL: TBD\n',
            "generated": f"""# This is the test ansible file, generated at install
WODGROUP: test
WODBEFQDN: jupyter.example.com
WODBEEXTFQDN: nb.example.com
WODBEIP: 127.0.0.1
WODAPIDBFQDN: 127.0.0.1
WODPOSTPORT: 10025
WODAPIDBURL: http://api.internal.example.com:8021/api
WODAPIDBEXTURL: {self.app.url}
WODBEAPIURL: {self.hub.url}
WODCURLOPT:
WODBASESTDID: 1000
""",
            "group": f"WODBETOKEN: {self.hub.token}\n",
            "private.sh": f"""#
# Private user and password for API communication
#
export WODAPIDBUSER="{self.app.username}"
export WODAPIDBUSERPWD="{self.app.password}"
export WODAPIDBADMIN="hackshack"
export WODAPIDBADMINPWD="{ADMIN_PASSWORD}"
""",
        }
        for name, text in texts.items():
            file = self.paths[name]
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text)


@pytest.fixture(scope="module")
def standins() -> Iterator[tuple[RegistrationApp, JupyterHubStandin]]:
    with RegistrationApp() as app, JupyterHubStandin(auto_create_users=True) as hub:
        yield app, hub


@pytest.fixture(scope="module")
def original(
    tmp_path_factory: pytest.TempPathFactory, standins: tuple[RegistrationApp, JupyterHubStandin]
) -> OriginalSite:
    app, hub = standins
    site = OriginalSite(tmp_path_factory.mktemp("original"), app, hub)
    site.write()
    return site


@pytest.fixture(scope="module")
def daemon(original: OriginalSite) -> Iterator[Daemon]:
    running = Daemon(original).start()
    yield running
    running.stop()


# --- the settings ------------------------------------------------------------------------


def test_the_original_files_load_and_map_to_wodmail_keys(original: OriginalSite) -> None:
    location = load_location(original.file)
    app, hub = original.app, original.hub
    assert location.api_endpoint == app.url
    assert location.api_user == app.username
    assert same_secret(location.api_password, app.password)
    assert location.hub_url == hub.url
    assert same_secret(location.hub_token, hub.token), "the private group file's token overrides the default"
    assert (location.student_min, location.student_max, location.base_stdid) == (1, 100, 1000)
    assert location.student_dir == original.student_dir
    assert location.workshop_dir == original.home_dir / "wod-notebooks"
    assert location.var_priv_dir == original.private / "ansible" / "test"
    assert location.var_dir is None  # wod-backend/ansible/test does not exist: passed over
    assert location.accounts.uid_base == 2000
    values = location.values
    assert values["SCRIPTDIR"] == str(original.home_dir / "wod-backend" / "scripts")
    assert values["SCRIPTPRIVDIR"] == str(original.private / "scripts")
    assert (values["PBKDIR"], values["JPHOSTEXT"], values["LDAPDMN"]) == ("test", "nb.example.com", "dc=example,dc=org")

    # The original's keys stay, under their own names, for the templates; never its secrets.
    variables = location.template_variables()
    assert variables["WODUSERMAX"] == 100 and variables["WODSTUDDIR"] == str(original.student_dir)
    assert variables["BRANDING"] == "Test WoD" and variables["SSHPORT-WKSHP-Docker101"] == 14101
    assert variables["WODPRIVINV"] == "-i " + str(original.private / "ansible" / "inventory")
    for secret in ("WODAPIDBUSERPWD", "WODAPIDBADMINPWD", "WODBETOKEN", "WODLDAPPWD", "APIPWD", "LDAPBINDPW"):
        assert secret not in variables, secret
    assert ADMIN_PASSWORD in location.withheld and LDAP_PASSWORD in location.withheld


def test_every_mapping_is_in_the_guide() -> None:
    guide = GUIDE.read_text()
    assert mapping_table() in guide, "docs/migrating.md's mapping table is not mapping_table()'s: paste it"
    for target, names in ORIGINAL_NAMES:
        assert all(name in guide for name in names), target


def test_where_both_names_are_given_they_must_agree(original: OriginalSite, tmp_path: Path) -> None:
    values = dict(original.values, WORKSHOPS=str(original.workshops_file))
    location_file = tmp_path / "both.yaml"
    location_file.write_text(yaml.safe_dump({**values, "STUDENTMAX": 100, "APIENDPOINT": original.app.url}))
    location = load_location(location_file)
    assert location.student_max == 100
    assert location.original is not None
    same = {item.key: item for item in location.original.mapped}
    assert same["STUDENTMAX"].also_given and same["APIENDPOINT"].also_given

    location_file.write_text(yaml.safe_dump({**values, "STUDENTMAX": 80}))
    with pytest.raises(ConfigError) as raised:
        load_location(location_file)
    message = str(raised.value)
    assert message.startswith(f"{location_file}: STUDENTMAX: given as STUDENTMAX and as the original's WODUSERMAX")
    assert str(original.paths["install-all"]) in message and "\n" not in message

    # A secret's values are never shown, not even when they differ.
    location_file.write_text(yaml.safe_dump({**values, "APIPWD": "another-password"}))
    with pytest.raises(ConfigError) as raised:
        load_location(location_file)
    assert "APIPWD" in str(raised.value) and original.app.password not in str(raised.value)
    assert "another-password" not in str(raised.value)


def test_a_bad_value_is_reported_in_the_original_file_under_its_name(original: OriginalSite, tmp_path: Path) -> None:
    broken = tmp_path / "wod.sh"
    broken.write_text(original.paths["wod.sh"].read_text().replace("WODUSERMAX=100", "WODUSERMAX=lots"))
    # wod-install's all.yml gives WODUSERMAX too, later: without it, wod.sh's counts.
    files = [str(broken if file == original.paths["wod.sh"] else file) for file in original.files]
    files.remove(str(original.paths["install-all"]))
    location_file = tmp_path / "site.yaml"
    location_file.write_text(
        yaml.safe_dump({**original.values, "WODCONFIG": files, "WORKSHOPS": str(original.workshops_file)})
    )
    with pytest.raises(ConfigError) as raised:
        load_location(location_file)
    assert str(raised.value).startswith(f"{broken}: WODUSERMAX: as wodmail's STUDENTMAX: expected an integer")

    location_file.write_text(yaml.safe_dump({**original.values, "WODCONFIG": [str(tmp_path / "absent.yml")]}))
    with pytest.raises(ConfigError, match=r"absent\.yml: no such file"):
        load_location(location_file)


def test_older_names_map_too_and_the_newest_counts(tmp_path: Path) -> None:
    (tmp_path / "students").mkdir()
    (tmp_path / "workshops.yaml").write_text(yaml.safe_dump({"WKSHP-Sample": {"range": [1, 10]}}))
    location_file = tmp_path / "site.yaml"
    location_file.write_text(
        yaml.safe_dump(
            {
                # Before 2025 the backend read these names (wod-backend 91dff51 renamed them).
                "USERMIN": 1,
                "USERMAX": 50,
                "WODUSERMAX": 90,
                "STUDDIR": str(tmp_path / "students"),
                "WODAPIDBURL": "http://api.example.com/api",
                "WODAPIDBUSER": "moderator",
                "WODAPIDBUSERPWD": "pw",
                "WORKSHOPDIR": str(SAMPLES),
                "STATEDIR": str(tmp_path / "state"),
                "CATALOGWORKSHOPS": "listed",
            }
        )
    )
    location = load_location(location_file)
    assert (location.student_min, location.student_max) == (1, 90)
    assert location.student_dir == tmp_path / "students"
    assert location.api_endpoint == "http://api.example.com/api"
    assert location.original is not None and location.original.files == ()


def test_shell_files_are_read_without_running_them(tmp_path: Path) -> None:
    script = tmp_path / "wod.sh"
    marker = tmp_path / "ran"
    script.write_text(
        f"""export A=/opt/wod
B="$A/x y"   # a comment
export C='$A literal'
D=${{A}}/z
export E=`touch {marker}`
F=$(touch {marker})
G=$UNSET/path
H=1 touch {marker}
touch {marker}
if [ -f /etc/passwd ]; then
    I="in an if"
fi
J=0750
K="0750"
L=a#b
M=42
"""
    )
    values, passed = read_shell_file(script)
    assert values == {
        "A": "/opt/wod",
        "B": "/opt/wod/x y",
        "C": "$A literal",
        "D": "/opt/wod/z",
        "I": "in an if",
        "J": "0750",
        "K": "0750",
        "L": "a#b",
        "M": 42,
    }
    assert not marker.exists()
    assert [re.sub(r".*: line (\d+): (\w) not read: .*", r"\1 \2", line) for line in passed] == [
        "5 E",
        "6 F",
        "7 G",
        "8 H",
    ]
    assert "UNSET" in passed[2]


# --- check, the story, the guide ---------------------------------------------------------


def test_check_prints_the_mapping_and_no_secret(original: OriginalSite) -> None:
    result = wodmail(original, "check")
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, out + err
    lines = {line.split()[0]: line for line in out.splitlines() if " <- " in line}
    for key, source in (
        ("APIENDPOINT", "WODAPIDBEXTURL"),
        ("APIUSER", "WODAPIDBUSER"),
        ("APIPWD", "WODAPIDBUSERPWD"),
        ("JPHUBAPISRV", "WODBEAPIURL"),
        ("JPHUBTOKEN", "WODBETOKEN"),
        ("BASESTDID", "WODBASESTDID"),
        ("STUDENTMIN", "WODUSERMIN"),
        ("STUDENTMAX", "WODUSERMAX"),
        ("STUDENTDIR", "WODSTUDDIR"),
        ("WORKSHOPDIR", "WODNOBO"),
        ("SCRIPTDIR", "WODSCRIPTDIR"),
        ("SCRIPTPRIVDIR", "WODSCRIPTPRIVDIR"),
        ("LDAPDMN", "WODLDAPDMN"),
        ("LDAPBINDPW", "WODLDAPPWD"),
        ("VARPRIVDIR", "WODANSIBLEPRIVDIR/WODGROUP"),
    ):
        assert f"<- {source} " in lines[key], lines.get(key)
    assert "(a secret, not shown)" in lines["APIPWD"] and "(a secret, not shown)" in lines["JPHUBTOKEN"]
    assert str(original.paths["private.sh"]) in lines["APIPWD"], "each line says which file gave the key"
    assert "note: VARDIR not set from WODANSIBLEDIR/WODGROUP" in out
    assert "note: LDAPURI is not set" in out
    for secret in (original.app.password, original.hub.token, LDAP_PASSWORD, ADMIN_PASSWORD, "VeryComplexPasswd1234!"):
        assert secret not in out + err


def test_the_operator_story_runs_on_the_original_layout(original: OriginalSite, daemon: Daemon) -> None:
    app, hub = original.app, original.hub
    # The README's story: a CREATE with a real SMTP client, then the home and the callbacks.
    with smtplib.SMTP("127.0.0.1", original.smtp_port, timeout=30) as client:
        client.sendmail(
            "wod@example.com",
            ["jupyter@example.com"],
            b"From: wod@example.com\r\nSubject: CREATE 7 c7 seven@example.com\r\n\r\nWKSHP-Sample\r\n",
        )
    jobs = original.wait_jobs(1)
    assert jobs[0][1:4] == ("CREATE", 7, "done"), jobs
    home = original.student_dir / "student7" / "WKSHP-Sample"
    text = "\n".join(path.read_text() for path in sorted(home.glob("*.ipynb")))
    assert "nb.example.com" in text, "JPHOSTEXT, from the original's WODBEEXTFQDN, reached the notebooks"
    assert app.wait_for(lambda a: a.state()["customer"].get("c7", {}).get("active") == "true")
    reported = app.state()["student"]["1007"]["password"]  # WODBASESTDID 1000
    shown = re.search(r"password[^`]*`([A-Za-z0-9]{16})`", text)
    assert shown is not None and same_secret(shown.group(1), reported)
    assert hub.running("student7")
    for path in home.glob("*.ipynb"):
        json.loads(path.read_text())


def guide_blocks() -> list[str]:
    """The shell blocks of docs/migrating.md marked as tested (```sh tested)."""
    return re.findall(r"^```sh tested\n(.*?)^```$", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_the_guide_commands_run_on_the_original_layout(original: OriginalSite, daemon: Daemon) -> None:
    blocks = guide_blocks()
    assert len(blocks) >= 3, "the guide's tested blocks are gone"
    env = {
        **os.environ,
        "WODMAIL": str(Path(sys.executable).parent / "wodmail"),
        "LOCATION": str(original.file),
        "WORKSHOP": "WKSHP-Sample",
    }
    before = len(original.jobs())
    outputs = []
    for block in blocks:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], env=env, capture_output=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"guide block failed:\n{block}\n{result.stdout.decode()}{result.stderr.decode()}"
        outputs.append(result.stdout.decode())
    out = "\n".join(outputs)
    assert "<- WODUSERMAX" in out
    sent = original.wait_jobs(before + 6)[before:]
    assert [(job[1], job[2], job[3]) for job in sent] == [
        (verb, stdid, "done") for verb in ("CREATE", "CLEANUP") for stdid in (11, 12, 13)
    ]


# --- send --range ------------------------------------------------------------------------


def send(original: OriginalSite, *args: str) -> subprocess.CompletedProcess[bytes]:
    return wodmail(original, "send", *args)


def test_send_range_sends_one_command_per_student_through_the_admin_socket(
    original: OriginalSite, daemon: Daemon
) -> None:
    before = len(original.jobs())
    result = send(original, "CREATE", "c21", "--range", "21,24", "--workshop", "WKSHP-Sample")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert len(re.findall(r"^student2[1-4]: 250 ", out, flags=re.MULTILINE)) == 4, out
    assert "4 of 4 command(s) accepted" in out
    jobs = original.wait_jobs(before + 4)[before:]
    assert [(job[1], job[2], job[3]) for job in jobs] == [("CREATE", n, "done") for n in range(21, 25)]
    shown = wodmail(original, "jobs", "show", str(jobs[0][0])).stdout.decode()
    assert "admin socket" in shown

    # CLEANUP the same way (DELETE is its alias), one per student; the customer the original sent: 0.
    result = send(original, "DELETE", "--range", "21,22", "--workshop", "WKSHP-Sample")
    assert result.returncode == 0, result.stderr.decode()
    jobs = original.wait_jobs(before + 6)[before + 4 :]
    assert [(job[1], job[2]) for job in jobs] == [("CLEANUP", 21), ("CLEANUP", 22)]
    assert original.app.wait_for(lambda a: a.state()["customer"].get("0", {}).get("cleaned") == "true")

    # PURGE too, one per student (the original's script refused a range for it).
    result = send(original, "PURGE", "c23", "--range", "23,24")
    assert result.returncode == 0, result.stderr.decode()
    jobs = original.wait_jobs(before + 8)[before + 6 :]
    assert [(job[1], job[2], job[3]) for job in jobs] == [("PURGE", 23, "done"), ("PURGE", 24, "done")]
    assert not original.hub.running("student23") and not original.hub.running("student24")


def test_send_range_gives_reset_its_own_range_form(original: OriginalSite, daemon: Daemon) -> None:
    before = len(original.jobs())
    result = send(original, "RESET", "admin", "--range", "41,43", "--workshop", "WKSHP-SampleReset")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert re.search(r"^student41,43: 250 ", out, flags=re.MULTILINE), out
    assert "1 of 1 command(s) accepted" in out
    with original.db() as conn:
        rows = conn.execute("SELECT verb, stdid, last_stdid FROM jobs WHERE id > ?", (before,)).fetchall()
    assert rows == [("RESET", 41, 43)]
    original.wait_jobs(before + 1)  # it ends at once: this site has no reset hook (PLAYBOOKDIR is empty)


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("5", None),
        ("7,3", "MIN 7 is above MAX 3"),
        ("1-20", "expected MIN,MAX"),
        ("1,20,30", "expected MIN,MAX"),
        ("0,5", "outside this host's students 1..100"),
        ("90,101", "outside this host's students 1..100"),
        ("", "expected MIN,MAX"),
    ],
)
def test_a_bad_range_is_refused_before_anything_is_sent(original: OriginalSite, given: str, reason: str | None) -> None:
    result = send(original, "PURGE", "--range", given, "--workshop", "WKSHP-Sample", "--print")
    err = result.stderr.decode()
    if reason is None:
        assert result.returncode == 64 and "--print" in err  # one mail per command: nothing to print
        return
    assert result.returncode == 65, err
    assert reason in err and err.count("\n") == 1, err
