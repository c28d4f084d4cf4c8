"""A site's workshop scripts, run as the backend this replaces ran them (issue 15).

A test site laid out like the original's: a public and a private script folder (SCRIPTDIR,
SCRIPTPRIVDIR), the variables folders (VARDIR, VARPRIVDIR with its pass/ subfolder),
appliance flags (a wod.yml's `monoappliance`, a workshops file's `multiappliance`) and the
appliances' base addresses as the original's group variables named them (IP-WKSHP-Name).
The scripts are real bash, written here; each records what it saw (its environment, what
was in the home, its turn) into files the tests read. One real sshd on loopback, listening
on the mono-appliance's address and on the multi-appliance's addresses, stands in for the
appliances: the create script logs in there with the student's own fresh key. The accounts
are real (student7701..student7720), removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Daemon, Site, same_secret
from tests.ports import free_port
from tests.standins import RegistrationApp
from tests.students import make_accounts, remove_accounts
from wodmail.errors import ConfigError
from wodmail.location import load_location

FIRST, LAST = 7701, 7720
MONO = "WKSHP-Appliance"  # mono-appliance, from its wod.yml: students 7701..7705
MULTI = "WKSHP-Multi"  # multi-appliance, reset, from the workshops file: 7706..7710
FAILING = "WKSHP-Failing"  # its create script exits 3: 7711..7715
SLOW = "WKSHP-Slow"  # its create script outlives SCRIPTTIMEOUT: 7716..7717
WRITABLE = "WKSHP-Writable"  # its create script is writable by everyone: 7718..7720
MONO_IP = "127.0.0.1"
MULTI_BASE = "127.0.0.21"  # student 7706: .21, 7707: .22, ...
MARK = "wodmail scripts-site test"
BASESTDID = 1000

NOTEBOOK: dict[str, Any] = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "outputs": [],
            "source": ["print('port {{ HTTPPORT }} token {{ TOKEN }} for {{ STUDENT }}')"],
        },
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": ["1 + 1"]},
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the workshop-script tests need root: real accounts, an sshd, scripts run as root")


# --- the appliance: one real sshd on loopback --------------------------------------------------


class Appliance:
    """sshd on 127.0.0.1 and 127.0.0.21..23, one port, keys authorized from a folder of ours."""

    def __init__(self, root: Path) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.path.exists(sshd):
            pytest.fail("the appliance stand-in needs sshd (Debian: openssh-server)")
        self.root = root
        self.port = free_port()
        self.keys = root / "authorized"
        self.keys.mkdir(mode=0o755)
        host_key = root / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        addresses = [MONO_IP, *(f"127.0.0.{n}" for n in (21, 22, 23))]
        config = root / "sshd_config"
        config.write_text(
            "".join(f"ListenAddress {address}:{self.port}\n" for address in addresses)
            + f"HostKey {host_key}\nPidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {self.keys}/%u\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin no\nLogLevel VERBOSE\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
        self.log = root / "sshd.log"
        self.process = subprocess.Popen([sshd, "-D", "-f", str(config), "-E", str(self.log)])
        deadline = time.monotonic() + 10
        while "Server listening" not in (self.log.read_text() if self.log.exists() else ""):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sshd did not start: {self.log.read_text() if self.log.exists() else ''}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --- accounts ------------------------------------------------------------------------------------


class Accounts:
    """student7701..student7720 (bash as their shell: the appliance logs them in), homes in a
    root-owned STUDENTDIR of ours; any left by an earlier run that crashed are made again."""

    def __init__(self, student_dir: Path) -> None:
        self.student_dir = student_dir
        self.stdids = range(FIRST, LAST + 1)
        self.remove()
        try:
            make_accounts(self.stdids, shell="/bin/bash", homes=student_dir, mark=MARK)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        remove_accounts(self.stdids, mark=MARK)


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[Appliance, Accounts]]:
    """The appliance and the accounts, once for the module (made as root, removed at the end)."""
    require_root()
    # Where a student can reach (the appliance reads their authorized keys as them, logs them
    # in at home; the cleanup script writes as them): a root-owned 0755 folder of /var/tmp,
    # not pytest's 0700 one.
    root = Path(tempfile.mkdtemp(prefix="wodmail-scripts-", dir="/var/tmp"))
    root.chmod(0o755)
    (root / "appliance").mkdir(mode=0o755)
    (root / "students").mkdir(mode=0o755)
    appliance = Appliance(root / "appliance")
    try:
        accounts = Accounts(root / "students")
    except BaseException:
        appliance.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield appliance, accounts
    finally:
        appliance.stop()
        accounts.remove()
        shutil.rmtree(root, ignore_errors=True)


# --- the site --------------------------------------------------------------------------------------

RECORDER = """\
#!/bin/bash
# {stage} ({where}): records its turn, its environment and whether the notebook was there, then works.
set -e
R={records}
echo "{stage} {where} $stdid" >> "$R/order"
env -0 > "$R/env-{stage}-{where}-$stdid"
if [ -e "$stddir/$ws/lab.ipynb" ]; then echo "{stage} {where} $stdid saw the notebook" >> "$R/order"; fi
{work}
"""

APPLIANCE_WORK = """\
cat "$WODVARFILE" > "$R/varfile-before-$stdid" 2>/dev/null || true
# What the original's create-appliance.sh does with the admin's own access to the appliance
# (here: its authorized keys folder); then the student's own key opens the appliance.
install -m 0644 "$stddir/.ssh/id_ed25519.pub" {keys}/student$stdid
ssh -i "$stddir/.ssh/id_ed25519" -p {port} -o BatchMode=yes -o StrictHostKeyChecking=no \\
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR student$stdid@$WODRTARGET \\
    'set -- $SSH_CONNECTION; echo "$(id -un) at $3"' > "$R/ssh-$stdid"
# Where the original's create scripts wrote the student's values (its path, written out).
mkdir -p {varpriv}/pass
echo "HTTPPORT: $((8000 + stdid - 7700))" >> {varpriv}/pass/variables_${{w}}_${{stdid}}.yml
echo "output of the public create script, password $randompw"
"""


def write_script(folder: Path, name: str, text: str, mode: int = 0o755) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(mode)


def recorder(records: Path, stage: str, where: str, work: str = "") -> str:
    return RECORDER.format(stage=stage, where=where, records=records, work=work)


def make_site(site: Site, appliance: Appliance, accounts: Accounts, app: RegistrationApp) -> Path:
    """The site's folders, catalog, scripts and location, laid out as the original's; returns
    the folder the scripts record into."""
    records = site.root / "records"
    public, private = site.root / "wod-backend" / "scripts", site.root / "wod-private" / "scripts"
    var_dir, var_priv = site.root / "wod-backend" / "ansible" / "test", site.root / "wod-private" / "ansible" / "test"
    catalog = site.root / "wod-notebooks"
    for folder in (records, public, private, var_dir, var_priv, catalog):
        folder.mkdir(parents=True)
    for name in (MONO, MULTI, FAILING, SLOW, WRITABLE):
        (catalog / name).mkdir()
        (catalog / name / "lab.ipynb").write_text(json.dumps(NOTEBOOK))
    (catalog / MONO / "wod.yml").write_text(
        yaml.safe_dump({"name": "Appliance 101", "range": [7701, 7705], "varpass": True, "monoappliance": True})
    )
    for name in (MONO, MULTI):
        (var_dir / f"variables_{name}.yml").write_text("TOKEN: public-token\nHTTPPORT: 1\n")

    work = APPLIANCE_WORK.format(keys=appliance.keys, port=appliance.port, varpriv=var_priv)
    # The original's cleanup scripts copy the notebooks back out of the lab containers: here
    # every cell comes back run, written as the student.
    ran = json.dumps({**NOTEBOOK, "cells": [{**cell, "execution_count": 1} for cell in NOTEBOOK["cells"]]})
    for name in (MONO, MULTI):
        write_script(public, f"create-{name}.sh", recorder(records, "create", "public", work))
        write_script(
            private,
            f"create-{name}.sh",
            recorder(records, "create", "private", 'echo "TOKEN: t$stdid" >> "$WODVARFILE"'),
        )
        write_script(
            public,
            f"post-copy-{name}.sh",
            recorder(
                records,
                "post-copy",
                "public",
                'grep -o "port [0-9]* token [a-z0-9-]*" "$stddir/$ws/lab.ipynb" > "$R/rendered-$stdid"',
            ),
        )
        write_script(
            public,
            f"cleanup-{name}.sh",
            recorder(
                records,
                "cleanup",
                "public",
                f"runuser -u student$stdid -- tee \"$stddir/$ws/lab.ipynb\" > /dev/null <<'EOF'\n{ran}\nEOF",
            ),
        )
    write_script(private, f"reset-{MULTI}.sh", recorder(records, "reset", "private"))
    # Not executable: passed by, as the original's `[ -x ... ]` did.
    write_script(private, f"post-copy-{MONO}.sh", "#!/bin/bash\nexit 9\n", mode=0o644)
    write_script(public, f"create-{FAILING}.sh", "#!/bin/bash\necho 'cannot reach the lab'\nexit 3\n")
    write_script(
        public,
        f"create-{SLOW}.sh",
        f"#!/bin/bash\necho started\nsleep 60 &\necho $! $$ > {records}/slow.pids\nexec sleep 60\n",
    )
    write_script(public, f"create-{WRITABLE}.sh", "#!/bin/bash\nexit 0\n", mode=0o777)
    # The student's variables file an earlier, crashed CREATE left: emptied before the scripts.
    (var_priv / "pass").mkdir()
    (var_priv / "pass" / f"variables_{MONO}_7701.yml").write_text("TOKEN: stale\n")

    site.student_dir = accounts.student_dir
    site.values.update(
        STUDENTDIR=str(accounts.student_dir),
        STUDENTMAX=9000,
        WORKSHOPDIR=str(catalog),
        ACCOUNTS="unix",
        HOMEOWNER="student",
        ACCOUNTSSHKEY="ed25519",
        SCRIPTDIR=str(public),
        SCRIPTPRIVDIR=str(private),
        SCRIPTTIMEOUT=2,
        VARDIR=str(var_dir),
        VARPRIVDIR=str(var_priv),
        APIENDPOINT=app.url,
        APIUSER=app.username,
        APIPWD="env:WODTEST_SCRIPTS_APIPWD",
        **{f"IP-{MONO}": MONO_IP, f"IP-{MULTI}": MULTI_BASE},
    )
    site.workshops = {
        MONO: None,  # as its wod.yml says
        MULTI: {"range": [7706, 7710], "reset": True, "multiappliance": True, "id": 41},
        FAILING: {"range": [7711, 7715], "id": 42},
        SLOW: {"range": [7716, 7717], "id": 43},
        WRITABLE: {"range": [7718, 7720], "id": 44},
    }
    app.workshops = [{"id": 52, "notebook": MONO}]
    return records


def environment(records: Path, stage: str, where: str, stdid: int) -> dict[str, str]:
    raw = (records / f"env-{stage}-{where}-{stdid}").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def order_of(records: Path, stdid: int) -> list[str]:
    return [line for line in (records / "order").read_text().splitlines() if f" {stdid}" in line]


def journal(site: Site, job: int) -> list[str]:
    with site.db() as conn:
        return [row[0] for row in conn.execute("SELECT name FROM steps WHERE job_id = ? ORDER BY started", (job,))]


def step_result(site: Site, job: int, name: str) -> str:
    with site.db() as conn:
        row = conn.execute("SELECT state, result FROM steps WHERE job_id = ? AND name = ?", (job, name)).fetchone()
    assert row is not None and row[0] == "done", (name, row, journal(site, job))
    return str(json.loads(row[1]))


def expect(ok: bool, what: str) -> None:
    """Fail with `what` alone: the values compared are secrets, never shown."""
    if not ok:
        pytest.fail(what, pytrace=False)


def in_order(steps: list[str], *names: str) -> bool:
    return [steps.index(name) for name in names] == sorted(steps.index(name) for name in names)


@pytest.fixture
def scripted(
    site: Site, host: tuple[Appliance, Accounts], app: RegistrationApp, daemon_factory: Callable[..., Daemon]
) -> Iterator[tuple[Callable[..., Daemon], Path]]:
    appliance, accounts = host
    records = make_site(site, appliance, accounts, app)

    def start(**env: str) -> Daemon:
        return daemon_factory(WODTEST_SCRIPTS_APIPWD=app.password, **env)

    try:
        yield start, records
    finally:
        for stdid in range(FIRST, LAST + 1):
            (appliance.keys / f"student{stdid}").unlink(missing_ok=True)


# --- the stories -------------------------------------------------------------------------------------


def test_create_runs_the_create_scripts_before_rendering_and_post_copy_after(
    scripted: tuple[Callable[..., Daemon], Path], site: Site, app: RegistrationApp
) -> None:
    start, records = scripted
    daemon = start()
    assert daemon.send("CREATE 7701 c1", body=MONO)[0] == 250
    assert daemon.send("CREATE 7707 c2", body=MULTI)[0] == 250
    jobs = site.wait_jobs(2)
    assert [job[3] for job in jobs] == ["done", "done"], jobs
    site.wait_callbacks()  # what the app got is read below

    # The order, as the scripts saw it and as the journal recorded it.
    for stdid in (7701, 7707):
        assert order_of(records, stdid) == [
            f"create public {stdid}",
            f"create private {stdid}",
            f"post-copy public {stdid}",
            f"post-copy public {stdid} saw the notebook",
        ]
    steps = journal(site, 1)
    assert in_order(
        steps,
        "reset home",
        "workshop id for scripts",  # no `id` in its wod.yml: GET /workshops, once
        "public create script",
        "private create script",
        "deploy workshop",
        "public post-copy script",
        "create hook",
        "report to registration app",
        "remove student variables",
    ), steps
    assert "private post-copy script" not in steps  # not executable: passed by

    # What the scripts wrote for the student reached the templates, over the variable files
    # (and the stale file of a crashed CREATE was emptied first).
    assert (records / "rendered-7701").read_text().split() == ["port", "8001", "token", "t7701"]
    assert (records / "rendered-7707").read_text().split() == ["port", "8007", "token", "t7707"]
    rendered = json.loads((site.home(7701) / MONO / "lab.ipynb").read_text())
    assert rendered["cells"][0]["source"] == ["print('port 8001 token t7701 for student7701')"]
    # ... and the file is gone once CREATE reported, as the original removed it.
    assert list((Path(site.values["VARPRIVDIR"]) / "pass").iterdir()) == []

    # The environment: the original's variables, the appliance, no secret of wodmail's own.
    state = app.state()
    for stdid, workshop, wid, target in ((7701, MONO, "52", MONO_IP), (7707, MULTI, "41", "127.0.0.22")):
        env = environment(records, "create", "public", stdid)
        assert (env["stdid"], env["w"], env["ws"], env["wid"], env["WODRTARGET"]) == (
            str(stdid),
            workshop,
            workshop,
            wid,
            target,
        )
        assert env["stddir"] == str(site.home(stdid))
        assert (env["WODSCRIPTDIR"], env["WODSCRIPTPRIVDIR"]) == (
            site.values["SCRIPTDIR"],
            site.values["SCRIPTPRIVDIR"],
        )
        assert env["WODVARFILE"] == f"{site.values['VARPRIVDIR']}/pass/variables_{workshop}_{stdid}.yml"
        assert env["WODSSHKEY"] == str(site.home(stdid) / ".ssh" / "id_ed25519")
        reported = state["student"][str(stdid + BASESTDID)]["password"]
        expect(same_secret(env["randompw"], reported), f"student{stdid}'s script had another password")
        expect(app.password not in env.values(), "APIPWD reached a script's environment")
        assert "WODTEST_SCRIPTS_APIPWD" not in env
        assert environment(records, "create", "private", stdid) == env
        # The student's own fresh key opened the appliance at WODRTARGET.
        assert (records / f"ssh-{stdid}").read_text().split() == [f"student{stdid}", "at", target]
    assert state["customer"]["c1"] == {"active": "true"} and state["customer"]["c2"] == {"active": "true"}

    # The stale file of a crashed CREATE was emptied before the first create script ran.
    assert (records / "varfile-before-7701").read_text() == ""
    # The script's output is in its step's record, the password masked.
    result = step_result(site, 1, "public create script")
    expect("output of the public create script, password ********" in result, "no masked output in the record")
    expect(environment(records, "create", "public", 7701)["randompw"] not in result, "the password is in the record")


def test_cleanup_runs_the_cleanup_script_before_the_completion(
    scripted: tuple[Callable[..., Daemon], Path], site: Site, app: RegistrationApp
) -> None:
    start, records = scripted
    daemon = start()
    assert daemon.send("CREATE 7702 c3", body=MONO)[0] == 250
    site.wait_jobs(1)
    assert daemon.send("CLEANUP 7702 c3", body=MONO)[0] == 250
    jobs = site.wait_jobs(2)
    assert [job[3] for job in jobs] == ["done", "done"], jobs

    # The cleanup script brought back a notebook with every cell run: the completion saw it.
    assert app.wait_for(lambda a: a.state()["customer"].get("c3", {}).get("cleaned") == "true")
    assert app.state()["customer"]["c3"]["completionPercentage"] == "100"
    assert order_of(records, 7702)[-2:] == ["cleanup public 7702", "cleanup public 7702 saw the notebook"]
    steps = journal(site, 2)
    assert in_order(
        steps,
        "rotate password",
        "end processes",
        "public cleanup script",
        "end processes after scripts",
        "cleanup hook",
        "completion",
        "report completion",
        "erase home",
    ), steps
    # The script had the password CLEANUP locked the student out with, as the original's.
    env = environment(records, "cleanup", "public", 7702)
    expect(same_secret(env["randompw"], app.state()["student"]["8702"]["password"]), "another password")
    assert env["WODRTARGET"] == MONO_IP


def test_reset_runs_the_reset_script_for_each_student_at_its_appliance(
    scripted: tuple[Callable[..., Daemon], Path], site: Site, app: RegistrationApp
) -> None:
    start, records = scripted
    daemon = start()
    assert daemon.send("RESET 7708,7709 c4", body=MULTI)[0] == 250
    jobs = site.wait_jobs(1)
    assert jobs[0][3] == "done", jobs
    assert order_of(records, 7708) == ["reset private 7708"] and order_of(records, 7709) == ["reset private 7709"]
    for stdid, target in ((7708, "127.0.0.23"), (7709, "127.0.0.24")):
        env = environment(records, "reset", "private", stdid)
        assert (env["stdid"], env["w"], env["wid"], env["WODRTARGET"]) == (str(stdid), MULTI, "41", target)
    steps = journal(site, 1)
    assert in_order(
        steps,
        "end processes",
        "private reset script student7708",
        "private reset script student7709",
        "reset hook",
        "erase home student7708",
    ), steps
    assert app.wait_for(lambda a: a.state()["workshop"].get("41") == {"capacity": "2"})


def test_a_failing_or_endless_script_fails_the_step_naming_it(
    scripted: tuple[Callable[..., Daemon], Path], site: Site, app: RegistrationApp
) -> None:
    start, records = scripted
    daemon = start()
    assert daemon.send("CREATE 7711 c5", body=FAILING)[0] == 250
    assert daemon.send("CREATE 7716 c6", body=SLOW)[0] == 250
    assert daemon.send("CREATE 7718 c7", body=WRITABLE)[0] == 250
    jobs = {job[2]: job for job in site.wait_jobs(3)}
    script = f"{site.values['SCRIPTDIR']}/create-{FAILING}.sh"
    assert jobs[7711][3] == "failed" and f"create script {script} failed (exit 3)" in jobs[7711][4], jobs
    assert "cannot reach the lab" in jobs[7711][4]
    slow = f"{site.values['SCRIPTDIR']}/create-{SLOW}.sh"
    assert jobs[7716][3] == "failed" and f"create script {slow} ran longer than 2 s" in jobs[7716][4], jobs
    # Killed with its whole session, the child it left in the background too.
    for pid in (records / "slow.pids").read_text().split():
        assert not Path(f"/proc/{pid}/cmdline").exists() or b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # A script anyone may change is never run as root.
    writable = f"{site.values['SCRIPTDIR']}/create-{WRITABLE}.sh"
    assert jobs[7718][3] == "failed" and f"{writable} is writable by every user" in jobs[7718][4], jobs
    # Nothing was deployed, the app was told nothing.
    assert not (site.home(7711) / FAILING).exists()
    assert not {"c5", "c6", "c7"} & app.state()["customer"].keys()


def test_a_script_recorded_done_is_not_run_again_after_a_crash(
    scripted: tuple[Callable[..., Daemon], Path], site: Site
) -> None:
    start, records = scripted
    daemon = start(WODMAIL_CRASH_AT="CREATE:deploy workshop:start")
    assert daemon.send("CREATE 7703 c7", body=MONO)[0] == 250
    assert daemon.wait_exit() == -signal.SIGKILL
    start()
    jobs = site.wait_jobs(1)
    assert jobs[0][3] == "done", jobs
    assert order_of(records, 7703).count("create public 7703") == 1
    assert (records / "rendered-7703").read_text().split() == ["port", "8003", "token", "t7703"]


def test_an_appliance_workshop_needs_its_base_address(site: Site, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    (catalog / MONO).mkdir(parents=True)
    (catalog / MULTI).mkdir()
    (tmp_path / "scripts").mkdir()
    site.values.update(WORKSHOPDIR=str(catalog), SCRIPTDIR=str(tmp_path / "scripts"))
    site.workshops = {
        MONO: {"range": [1, 5], "monoappliance": True},
        MULTI: {"range": [6, 105], "multiappliance": True},
    }
    expected = [
        ({}, f"IP-{MONO}: missing: {MONO} is a monoappliance workshop"),
        ({f"IP-{MONO}": "x.y.z.t"}, f"IP-{MONO}: missing"),
        ({f"IP-{MONO}": "10.0.0.300"}, f"IP-{MONO}: expected the appliance's IPv4 address"),
        ({f"IP-{MONO}": "10.0.0.5", f"IP-{MULTI}": "10.0.1.200"}, f"IP-{MULTI}: {MULTI}'s students 6..105"),
    ]
    for keys, message in expected:
        site.values.update(keys)
        with pytest.raises(ConfigError) as caught:
            load_location(site.write())
        assert message in str(caught.value)
    site.values[f"IP-{MULTI}"] = "10.0.1.100"
    location = load_location(site.write())
    assert {name: str(ip) for name, ip in location.scripts.appliance_ips.items()} == {
        MONO: "10.0.0.5",
        MULTI: "10.0.1.100",
    }
    # Without a script folder nothing uses the address: the flags alone are no error.
    del site.values["SCRIPTDIR"], site.values[f"IP-{MONO}"], site.values[f"IP-{MULTI}"]
    assert load_location(site.write()).scripts.appliance_ips == {}


@pytest.mark.parametrize("slots", [1, 3])
def test_hookslots_bounds_the_scripts_running_at_once_not_the_jobs(
    site: Site, daemon_factory: Callable[..., Daemon], tmp_path: Path, slots: int
) -> None:
    """Six CREATEs at once, each with a create script that takes 0.4 s: with HOOKSLOTS 1 the
    scripts run one after the other, with 3 up to three at a time; WORKERS (8) is the same."""
    scripts, records = tmp_path / "scripts", tmp_path / "records"
    scripts.mkdir()
    write_script(
        scripts,
        "create-WKSHP-Sample.sh",
        f'#!/bin/bash\necho "$stdid start $(date +%s.%N)" >> {records}\nsleep 0.4\n'
        f'echo "$stdid end $(date +%s.%N)" >> {records}\n',
    )
    site.values.update(SCRIPTDIR=str(scripts), HOOKSLOTS=slots)
    daemon = daemon_factory()
    for stdid in range(1, 7):
        code, reply = daemon.send(f"CREATE {stdid} c{stdid} p{stdid}@example.com")
        assert code == 250, reply
    jobs = site.wait_jobs(6, timeout=60)
    assert [job[3] for job in jobs] == ["done"] * 6, jobs
    events = sorted(
        (float(when), change) for _, change, when in (line.split() for line in records.read_text().splitlines())
    )
    assert len(events) == 12, events
    running, most = 0, 0
    for _, change in events:
        running += 1 if change == "start" else -1
        most = max(most, running)
    assert most == slots, events
