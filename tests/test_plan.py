"""PLAN, a dry run of any verb: it names what the verb would do, and it leaves no trace.

One host for the whole file: real accounts student8201.. (ACCOUNTS: unix, an ed25519 key
pair on every erase), a real slapd for the LDAP workshop, the registration-app and
JupyterHub stand-ins, a site's scripts, the test catalog's workshops, and the daemon, which
first runs two real CREATEs so that the plans have homes, jobs, LDAP entries and callbacks
to leave alone. Then:

- the plans of CREATE, CLEANUP, RESET and PURGE (and the command line's) change nothing:
  the queue's folder, every home (modes, owners, bytes), /etc/shadow's lines of the
  students, LDAP (entries and connections) and the stand-ins (requests and connections)
  are compared before and after;
- a plan names the files, steps, hub calls and callbacks the real command then makes: the
  daemon runs the same commands, and the plans are compared with its journal, the homes and
  what the stand-ins received;
- bad input gets the refusal the door gives the real command.
"""

from __future__ import annotations

import asyncio
import gc
import json
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, Site, with_app, with_hub
from tests.slapd import Slapd, old_password, student_dn
from tests.standins import Call, JupyterHubStandin, RegistrationApp
from tests.students import Host, make_accounts, remove_accounts, require_root, snapshot
from wodmail.command import Command
from wodmail.errors import BadCommand
from wodmail.location import Location, load_location
from wodmail.plan import NEW_PASSWORD, Plan, make_plan, plan_text, planned_command
from wodmail.plansteps import Later
from wodmail.verbspec import VerbSpec, shipped_verbs

SAMPLE = range(8201, 8205)  # WKSHP-Sample (ldap, varpass): 8201..8206; 8205 has no account
CHALLENGE = 8207  # CHLG-Sample (varpass, a create hook): 8207..8210
RESET = range(8211, 8215)  # WKSHP-SampleReset (reset, varpass): 8211..8220
STUDENTS = [*SAMPLE, CHALLENGE, *RESET]
BASESTDID = 1000

CREATE_SCRIPT = '#!/bin/sh\necho "created $stdid in $w"\n'
CLEANUP_SCRIPT = '#!/bin/sh\necho "cleaned $stdid"\n'
RESET_SCRIPT = '#!/bin/sh\necho "reset $stdid"\n'


@dataclass
class World:
    site: Site
    host: Host
    slapd: Slapd
    app: RegistrationApp
    hub: JupyterHubStandin
    scripts: Path

    def location(self) -> Location:
        return load_location(self.site.file)

    def plan(self, *words: str, workshop: str | None = None) -> Plan:
        location = self.location()
        return asyncio.run(make_plan(location, planned_command(location, words, workshop)))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wodmail", "--location", str(self.site.file), "plan", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def run_commands(self, *commands: tuple[str, str]) -> list[int]:
        """Send the commands to a daemon started for them; wait until they ended, and their
        callbacks were delivered; stop it. The new jobs' ids."""
        known = len(self.site.jobs()) if (self.site.state_dir / "queue.sqlite3").exists() else 0
        daemon = Daemon(self.site).start()
        try:
            for subject, body in commands:
                code, text = daemon.send(subject, body)
                assert code == 250, text
            jobs = self.site.wait_jobs(known + len(commands))
            assert all(job[3] == "done" for job in jobs), jobs
            self.site.wait_callbacks()
        finally:
            assert daemon.stop() == 0, daemon.logs()[-3000:]
        return [job[0] for job in jobs[known:]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root()
    root = tmp_path_factory.mktemp("plan")
    with ExitStack() as stack:
        site = Site(root)
        host = Host(site)
        stack.callback(host.remove)
        stack.callback(remove_accounts, STUDENTS)
        for stdid in make_accounts(STUDENTS):  # ACCOUNTS: unix touches only accounts whose home is STUDENTDIR's
            subprocess.run(["usermod", "--home", str(host.home(stdid)), f"student{stdid}"], check=True)
        slapd = Slapd(root / "slapd")
        for stdid in SAMPLE:
            slapd.add_student(stdid, old_password(stdid))
        stack.enter_context(slapd)
        app = stack.enter_context(RegistrationApp())
        hub = stack.enter_context(JupyterHubStandin(auto_create_users=True))
        scripts = host.made(host.root / "scripts")
        for name, text in (
            ("create-WKSHP-Sample.sh", CREATE_SCRIPT),
            ("cleanup-WKSHP-Sample.sh", CLEANUP_SCRIPT),
            ("reset-WKSHP-SampleReset.sh", RESET_SCRIPT),
        ):
            (scripts / name).write_text(text)
            (scripts / name).chmod(0o755)
        with_app(site, app)
        with_hub(site, hub)
        site.values.update(
            slapd.location_keys(),
            STUDENTMAX=9000,
            BASESTDID=BASESTDID,
            ACCOUNTS="unix",
            ACCOUNTSSHKEY="ed25519",
            SCRIPTDIR=str(scripts),
            PLAYBOOKDIR=str(host.made(host.root / "playbooks")),  # no hooks by convention: RESET runs a script
        )
        site.workshops = {
            "WKSHP-Sample": {"range": [8201, 8206], "ldap": True, "varpass": True, "id": 5},
            "CHLG-Sample": {"range": [8207, 8210], "varpass": True, "hooks": {"create": str(host.hooks / "reset.yml")}},
            "WKSHP-SampleReset": {"range": [8211, 8220], "reset": True, "varpass": True, "id": 7},
        }
        site.write()
        world = World(site, host, slapd, app, hub, scripts)
        world.run_commands(("CREATE 8201 c1 one@example.com", "WKSHP-Sample"), ("CREATE 8211 c11", "WKSHP-SampleReset"))
        yield world


# --- what must not change ---------------------------------------------------------------------------


def shadow_lines() -> dict[str, str]:
    """Our students' lines of /etc/shadow (other tests' accounts change meanwhile)."""
    ours = {f"student{stdid}" for stdid in STUDENTS}
    with open("/etc/shadow") as shadow:
        return {line.split(":")[0]: line for line in shadow if line.split(":")[0] in ours}


def state_of(world: World) -> dict[str, Any]:
    """Everything a command changes, compared whole (secrets only as digests: snapshot)."""
    gc.collect()  # the tests' own queue connections, closed (a WAL checkpoint) when collected
    slapd = world.slapd
    return {
        "state": snapshot(world.site.state_dir),
        "homes": snapshot(world.host.student_dir),
        "shadow": shadow_lines(),
        "ldap": {stdid: slapd.entry(student_dn(stdid)) for stdid in SAMPLE},
        "ldap connections": slapd.connections_total(),
        "app": (world.app.calls, world.app.connections_accepted, world.app.state()),
        "hub": (world.hub.calls, world.hub.connections_accepted),
    }


def test_plans_change_nothing(world: World) -> None:
    before = state_of(world)
    plans = [
        world.plan("CREATE", "8202", "c2", "two@example.com", workshop="WKSHP-Sample"),
        world.plan("CREATE", "8201", "c1", workshop="WKSHP-Sample"),
        world.plan("CLEANUP", "8201", "c1", workshop="WKSHP-Sample"),
        world.plan("DELETE", "8211", "c11", workshop="WKSHP-SampleReset"),
        world.plan("RESET", "8211,8213", "c0", workshop="WKSHP-SampleReset"),
        world.plan("PURGE", "8201", "c1"),
        world.plan("CREATE", str(CHALLENGE), "c7", workshop="CHLG-Sample"),
    ]
    shown = world.cli("CREATE", "8203", "c3", "--workshop", "WKSHP-Sample")
    as_json = world.cli("PURGE", "8211", "c11", "--workshop", "WKSHP-SampleReset", "--json")
    after = state_of(world)
    for part in before:
        assert before[part] == after[part], f"PLAN changed {part}"

    assert shown.returncode == 0, shown.stderr
    assert "student8203" in shown.stdout and "a dry run, nothing was changed" in shown.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["command"] == "PURGE 8211 c11 / WKSHP-SampleReset"
    # Never a secret: the stand-ins' credentials, LDAP's, the password the app holds.
    secrets = [world.app.password, world.hub.token, world.slapd.service_password]
    secrets.append(world.app.state()["student"][str(8201 + BASESTDID)]["password"])
    texts = [plan_text(plan) + json.dumps(plan.as_dict()) for plan in plans] + [shown.stdout, as_json.stdout]
    for text in texts:
        assert [number for number, secret in enumerate(secrets) if secret in text] == []
        assert "PlanOnly" not in text  # the stand-in password the verb gets is never shown
    assert all(NEW_PASSWORD in plan_text(plan) for plan in plans)
    assert [plan.failure for plan in plans] == [None] * len(plans)

    # A challenge deploys its workshop's content, and runs its own create hook.
    challenge = plans[-1]
    assert challenge.workshop is not None and challenge.workshop.content == "WKSHP-Sample"
    (hook,) = [step for step in challenge.steps if step.name == "create hook"]
    assert f"ansible-playbook {world.host.hooks / 'reset.yml'}" in hook.summary and hook.writes_home
    assert {file.path.split("/")[0] for file in challenge.files} == {"WKSHP-Sample"}


# --- what the plan says ---------------------------------------------------------------------------


def test_create_plan_names_files_steps_and_calls(world: World) -> None:
    plan = world.plan("CREATE", "8202", "c2", workshop="WKSHP-Sample")
    assert plan.failure is None, plan.failure
    assert plan.workshop is not None and plan.workshop.flags == ("ldap", "varpass")
    (student,) = plan.students
    assert (student.stdid, student.dbid, student.home_now) == (8202, 9202, "absent")
    assert student.ldap_dn == "uid=student8202,ou=People,dc=example,dc=com"
    kinds = {step.name: step for step in plan.steps}
    assert f"the host account student8202 (uid {pwd.getpwnam('student8202').pw_uid})" in kinds["set password"].summary
    assert student.ldap_dn in kinds["set password"].summary
    assert str(world.scripts / "create-WKSHP-Sample.sh") in kinds["public create script"].summary
    assert kinds["deploy workshop"].writes_home
    hub_url = world.hub.url
    assert plan.hub_calls == (f"POST {hub_url}/hub/api/users/student8202/server",)
    api = world.app.url
    assert [(c.method, c.url, c.fields) for c in plan.callbacks] == [
        ("PUT", f"{api}/student/9202", {"password": NEW_PASSWORD}),
        ("PUT", f"{api}/customer/c2", {"active": "true"}),
    ]
    notebooks = [file.path for file in plan.files if file.path.endswith(".ipynb")]
    assert notebooks == sorted(f"WKSHP-Sample/{name}" for name in world.host.notebooks())
    assert "APPDEADLINE" in " ".join(plan.notes)


def test_plan_is_what_create_did(world: World) -> None:
    """The plan of the CREATE the daemon ran: the same steps in the same order, and the same
    files, modes and sizes as in the home it made (a stand-in password as long as the real one)."""
    plan = world.plan("CREATE", "8201", "c1", "one@example.com", workshop="WKSHP-Sample")
    assert [step.name for step in plan.steps] == journal(world.site, 1)
    home = world.host.home(8201)
    expected = {file.path: (file.mode, file.size) for file in plan.files}
    deployed = {
        str(path.relative_to(home)): (f"{stat.S_IMODE(path.lstat().st_mode):04o}", path.lstat().st_size)
        for path in (home / "WKSHP-Sample").rglob("*")
        if not path.is_dir()
    }
    assert expected == deployed


def test_the_other_verbs_plans_are_what_they_do(world: World) -> None:
    """CLEANUP, RESET (a range) and PURGE without a workshop: the daemon runs each after its
    plan; the journal, the hub calls and the callbacks are the plan's."""
    commands = [
        (("CLEANUP", "8201", "c1"), "WKSHP-Sample"),
        (("RESET", "8211,8213", "c0"), "WKSHP-SampleReset"),
        (("PURGE", "8202", "c2"), ""),
    ]
    plans = [world.plan(*words, workshop=body or None) for words, body in commands]
    assert all(plan.failure is None for plan in plans), [plan.failure for plan in plans]
    cleanup, reset, _purge = plans
    assert any(step.name == "public cleanup script" for step in cleanup.steps)
    assert [s.name for s in reset.steps].count("public reset script student8212") == 1
    assert reset.callbacks[-1].fields == {"capacity": "3"} and reset.callbacks[-1].url.endswith("/workshop/7")
    assert cleanup.callbacks[1].fields["completionPercentage"] == str(Later("the completion percentage, counted then"))

    world.hub.add_users("student8202", "student8212", "student8213")  # the hub has its users: their logins end
    hub_seen, app_seen = len(world.hub.calls), len(world.app.calls)
    ids = world.run_commands(*((" ".join(words), body) for words, body in commands))
    for plan, job_id in zip(plans, ids, strict=True):
        ran = journal(world.site, job_id)
        assert sorted(step.name for step in plan.steps) == sorted(ran), plan.verb
        if plan.verb != "RESET":  # a range's rotations are recorded as they end
            assert [step.name for step in plan.steps] == ran
    hub_calls = [
        f"{c.method} {world.hub.url}{c.path}" for c in world.hub.calls[hub_seen:] if c.method != "GET"
    ]  # what changes the hub: servers started and stopped, users deleted and made again
    assert sorted(hub_calls) == sorted(call for plan in plans for call in plan.hub_calls)
    puts = [c for c in world.app.calls[app_seen:] if c.method == "PUT"]
    assert sorted(_made(c, world.app.url) for c in puts) == sorted(
        _planned(c) for plan in plans for c in plan.callbacks
    )


def journal(site: Site, job_id: int) -> list[str]:
    with site.db() as conn:
        return [row[0] for row in conn.execute("SELECT name FROM steps WHERE job_id = ? ORDER BY rowid", (job_id,))]


def _made(call: Call, api: str) -> tuple[str, str, tuple[str, ...]]:
    body = call.body if isinstance(call.body, dict) else {}
    fields = [
        f"{key}={value}" if key in ("active", "assigned", "cleaned", "capacity") else key for key, value in body.items()
    ]
    return call.method, api + call.path, tuple(sorted(fields))


def _planned(callback: Any) -> tuple[str, str, tuple[str, ...]]:
    fields = [
        f"{key}={value}" if key in ("active", "assigned", "cleaned", "capacity") else key
        for key, value in callback.fields.items()
    ]
    return callback.method, callback.url, tuple(sorted(fields))


# --- bad input -----------------------------------------------------------------------------------


BAD = [
    (("FROB", "8201", "c1"), "WKSHP-Sample"),  # no such verb
    (("CREATE", "8201", "c1"), "WKSHP-Nowhere"),  # no such workshop
    (("CREATE", "9500", "c1"), "WKSHP-Sample"),  # past STUDENTMAX
    (("CREATE", "8215", "c1"), "WKSHP-Sample"),  # outside the workshop's range
    (("RESET", "8201", "c1"), "WKSHP-Sample"),  # not a reset workshop
    (("CLEANUP", "8201,8202", "c1"), "WKSHP-Sample"),  # a range for a verb that takes none
]


def test_bad_input_gets_the_doors_refusal(world: World) -> None:
    """Each bad command planned, then sent to the daemon: the plan's refusal is the door's 554."""
    planned = []
    for words, workshop in BAD:
        with pytest.raises(BadCommand) as refused:
            world.plan(*words, workshop=workshop)
        planned.append(refused.value.reason)
    daemon = Daemon(world.site).start()
    try:
        answers = [daemon.send(" ".join(words), workshop) for words, workshop in BAD]
    finally:
        daemon.stop()
    assert answers == [(554, reason.encode()) for reason in planned]


def test_the_command_line_gives_the_doors_refusal(world: World) -> None:
    refused = world.cli("CREATE", "9500", "c1", "--workshop", "WKSHP-Sample")
    assert refused.returncode == 65, refused.stderr
    assert "wodmail plan: student 9500 is outside this location's range 1..9000\n" in refused.stderr
    assert refused.stdout == ""


def test_a_plan_that_would_fail_says_why(world: World) -> None:
    """A RESET of a workshop with neither a reset script nor a reset hook fails in the verb's
    own check, before any step: the plan says so, with the job's error, and the command
    line exits 1."""
    script = world.scripts / "reset-WKSHP-SampleReset.sh"
    script.chmod(0o644)  # not executable: not run, as the original's [ -x ]
    try:
        plan = world.plan("RESET", "8212", "c12", workshop="WKSHP-SampleReset")
        refused = world.cli("RESET", "8212", "c12", "--workshop", "WKSHP-SampleReset")
    finally:
        script.chmod(0o755)
    assert plan.failure is not None and plan.failure.startswith("RESET of WKSHP-SampleReset needs a reset script")
    assert plan.steps == ()
    assert refused.returncode == 1 and f"It would FAIL: {plan.failure}" in refused.stdout

    # A CREATE the door would refuse for now (its workshop drained: the daemon's PLAN asks the queue).
    location = world.location()
    command = planned_command(location, ["CREATE", "8203", "c3"], "WKSHP-Sample")
    drained = asyncio.run(make_plan(location, command, refused_now="WKSHP-Sample is drained since 10:00 by root"))
    assert drained.failure == "the door would refuse it for now (451): WKSHP-Sample is drained since 10:00 by root"
    assert drained.steps == () and drained.callbacks == () and drained.hub_calls == ()

    # A student whose host account is missing (ACCOUNTCREATE false): the first step fails.
    missing = world.plan("CREATE", "8205", "c5", workshop="WKSHP-Sample")
    assert missing.failure == "the host account student8205 does not exist: create it, or set ACCOUNTCREATE: true"
    assert [(step.name, step.failure) for step in missing.steps] == [("set password", missing.failure)]


def test_a_verb_that_does_not_declare_its_effects_is_not_planned(world: World) -> None:
    """A verb whose effects may happen outside its steps (a site's own, or HELP, STATUS,
    DRAIN) is never run by a plan: the plan is refused, naming the verbs it takes."""
    ran: list[str] = []

    class Frobnicate:
        spec = VerbSpec(name="FROBNICATE", description="Change something outside any step.")

        @staticmethod
        async def run(job: Any, services: Any) -> str:
            ran.append(job.command.verb)
            return "changed"

    verbs = shipped_verbs().with_verbs(Frobnicate())
    location = world.location()
    with pytest.raises(BadCommand) as refused:
        planned_command(location, ["FROBNICATE", "8201", "c1"], "WKSHP-Sample", verbs)
    assert refused.value.reason == "FROBNICATE cannot be planned: PLAN takes CREATE, CLEANUP, RESET or PURGE"
    command = Command("FROBNICATE", 8201, 8201, "c1", "WKSHP-Sample")
    with pytest.raises(BadCommand):
        asyncio.run(make_plan(location, command, verbs=verbs))
    assert ran == []
