"""A site's workshop scripts, run where the backend this replaces ran them.

The original backend (wod-backend's procmail-action.sh) ran executable files named after
the workshop from two folders, the public SCRIPTDIR (its WODSCRIPTDIR) and the private
SCRIPTPRIVDIR (its WODSCRIPTPRIVDIR), the public one first, then the private one when both
exist:

    create-WKSHP-Name.sh      CREATE, after the home is reset, before the notebooks are rendered
    post-copy-WKSHP-Name.sh   CREATE, after the workshop is deployed
    cleanup-WKSHP-Name.sh     CLEANUP, before the completion is computed
    reset-WKSHP-Name.sh       RESET (a reset workshop needs one, or a reset hook)

A challenge runs its workshop's scripts (the name is always the WKSHP- one, `ws`). Each
runs as root (the site's code, as wodmail runs), with no shell and no argument, stdin from
/dev/null, in WORKSHOPDIR, in a session of its own (killed whole at SCRIPTTIMEOUT), with
the daemon's environment minus every secret of wodmail's own (USER, LOGNAME and HOME set
when it has none), and the original's variables:

    stdid      the student number          randompw   the student's new password
    w          the command's workshop      ws         its WKSHP- name
    wid        the registration app's workshop id (when known)
    stddir     STUDENTDIR/student{stdid}   WODRTARGET the appliance (appliance workshops only)

plus WODSTUDDIR, WODNOBO, WODSCRIPTDIR, WODSCRIPTPRIVDIR (the folders, as /etc/wod.sh
exported them), WODVARFILE (the student's variables file, below) and WODSSHKEY (the
student's private key, ACCOUNTSSHKEY). Every value is checked (numbers, workshop names, the
password's alphabet) before it reaches the environment.

A create script may write values for this student (ports, tokens; ansible-vault values
too) into VARPRIVDIR/pass/variables_<w>_<stdid>.yml, where the original read them: the
templates see them above the workshop's variable files and below the student's own values.
A file an earlier CREATE left (one that crashed) is removed before the first create script
runs; the file is removed again once CREATE has reported.

A script's output (stdout and stderr together) is kept, the last OUTPUT_TAIL characters of
it with the password and the daemon's secrets masked, in its step's record; a non-zero exit
fails the step naming the script and the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import pwd
import signal
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from wodmail.command import WORKSHOP_RE
from wodmail.errors import ConfigError, StepFailed
from wodmail.location import Location, Workshop, read_variable_file
from wodmail.location.parts import ScriptSettings
from wodmail.passwords import ALPHABET
from wodmail.playbooks import inherited_environment, mask

log = logging.getLogger(__name__)

STAGES = ("create", "post-copy", "cleanup", "reset")
"""The scripts a workshop may have, by the name's first part (create-WKSHP-Name.sh, ...)."""
OUTPUT_TAIL = 2000
"""Characters of a script's output kept in its step's record (the last ones)."""
_READ_LIMIT = 4 * OUTPUT_TAIL
"""Bytes of output held while a script runs: its tail, however much it writes."""
_DRAIN_AFTER_EXIT = 2.0
"""Seconds to read what is left once a script exited (a background child may keep the pipe)."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STUDENT_VARIABLES = "pass/variables_{name}_{stdid}.yml"
"""The student's variables file, in VARPRIVDIR (the original's ANSIBLEPRIVDIR/PBKDIR/pass)."""


@dataclass(frozen=True)
class WorkshopScript:
    """One executable script of a workshop, found in the public or the private folder."""

    stage: str
    path: Path
    private: bool

    @property
    def step(self) -> str:
        """Its step's name in the job's journal, e.g. `public create script`."""
        return f"{'private' if self.private else 'public'} {self.stage} script"


class WorkshopScripts:
    """The workshop scripts of a location: found on use, run with the original's variables."""

    def __init__(self, location: Location, withheld: Iterable[str] = ()) -> None:
        self.location = location
        self.settings: ScriptSettings = location.scripts
        self._withheld = frozenset(value for value in withheld if value)

    def find(self, workshop: Workshop, stage: str) -> list[WorkshopScript]:
        """`workshop`'s executable `stage` scripts, the public one first (looked at on every use,
        as the original did: a script added is run from the next command on)."""
        if stage not in STAGES:
            raise ValueError(f"unknown script stage {stage!r}")
        name = f"{stage}-{_checked_name(workshop.content_name)}.sh"
        found = []
        for folder, private in ((self.settings.public_dir, False), (self.settings.private_dir, True)):
            if folder is None:
                continue
            path = folder / name
            try:
                st = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                found.append(WorkshopScript(stage, path, private))
        return found

    def student_variables_file(self, workshop: Workshop, stdid: int) -> Path | None:
        """VARPRIVDIR/pass/variables_<w>_<stdid>.yml; None without VARPRIVDIR."""
        if self.location.var_priv_dir is None:
            return None
        name = STUDENT_VARIABLES.format(name=_checked_name(workshop.name), stdid=int(stdid))
        return self.location.var_priv_dir / name

    def appliance_target(self, workshop: Workshop, stdid: int) -> str | None:
        """WODRTARGET: a mono-appliance workshop's base address; a multi-appliance one's base
        address plus the student's place in the booked range; None for other workshops."""
        base = self.settings.appliance_ips.get(workshop.name)
        if base is None or not (workshop.monoappliance or workshop.multiappliance):
            return None
        if workshop.multiappliance:
            return str(ipaddress.IPv4Address(int(base) + (int(stdid) - workshop.first)))
        return str(base)

    def environment(self, workshop: Workshop, stdid: int, password: str, wid: int | None) -> dict[str, str]:
        """What a script of `workshop` gets for student `stdid` (see the module doc)."""
        stdid = int(stdid)
        if stdid < 0:
            raise StepFailed(f"student number {stdid} cannot be given to a script")
        if not password or any(char not in ALPHABET for char in password):
            raise StepFailed("the student's password holds characters a script environment does not take")
        env = inherited_environment(self._withheld)
        env.setdefault("PATH", DEFAULT_PATH)
        # The original's scripts use $USER (a service of systemd may have none): wodmail's user.
        user = pwd.getpwuid(os.geteuid())
        env.setdefault("USER", user.pw_name)
        env.setdefault("LOGNAME", user.pw_name)
        env.setdefault("HOME", user.pw_dir)
        env.update(
            stdid=str(stdid),
            randompw=password,
            w=_checked_name(workshop.name),
            ws=_checked_name(workshop.content_name),
            stddir=str(self.location.student_home(stdid)),
            WODSTUDDIR=str(self.location.student_dir),
            WODNOBO=str(self.location.workshop_dir),
        )
        for name in ("wid", "WODRTARGET", "WODSCRIPTDIR", "WODSCRIPTPRIVDIR", "WODVARFILE", "WODSSHKEY"):
            env.pop(name, None)  # only ever ours
        if wid is not None:
            env["wid"] = str(int(wid))
        target = self.appliance_target(workshop, stdid)
        if target is not None:
            env["WODRTARGET"] = target
        if self.settings.public_dir is not None:
            env["WODSCRIPTDIR"] = str(self.settings.public_dir)
        if self.settings.private_dir is not None:
            env["WODSCRIPTPRIVDIR"] = str(self.settings.private_dir)
        variables_file = self.student_variables_file(workshop, stdid)
        if variables_file is not None:
            env["WODVARFILE"] = str(variables_file)
        if self.location.accounts.ssh_key != "none":
            env["WODSSHKEY"] = str(self.location.student_home(stdid) / ".ssh" / f"id_{self.location.accounts.ssh_key}")
        return env

    async def run(
        self, script: WorkshopScript, env: Mapping[str, str], clear: Path | None = None, job: str = ""
    ) -> str:
        """Run `script` with `env`; its output's tail (masked) when it exits 0, else StepFailed.

        `clear`: a file removed first, its folder made if missing (the student's variables
        file, before a create script);
        `job`: who runs it, for the log ("job 12")."""
        if clear is not None:
            with contextlib.suppress(FileNotFoundError):
                clear.unlink()
            clear.parent.mkdir(mode=0o700, exist_ok=True)  # WODVARFILE's folder (pass/), made once
        _refuse_writable(script.path)
        secrets = [env.get("randompw", ""), *self._withheld]
        timeout = self.settings.timeout
        try:
            process = await asyncio.create_subprocess_exec(
                str(script.path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env),
                cwd=str(self.location.workshop_dir),
                start_new_session=True,
            )
        except OSError as exc:
            raise StepFailed(f"{script.stage} script {script.path} cannot run: {exc.strerror or exc}") from None
        assert process.stdout is not None
        tail = bytearray()
        total = 0

        async def read() -> None:
            nonlocal total
            assert process.stdout is not None
            while chunk := await process.stdout.read(65536):
                total += len(chunk)
                tail.extend(chunk)
                del tail[:-_READ_LIMIT]

        reader = asyncio.ensure_future(read())
        try:
            code = await asyncio.wait_for(process.wait(), timeout=timeout)
        except TimeoutError:
            _kill_session(process.pid)
            await process.wait()
            reader.cancel()
            text = _shown(tail, secrets)
            raise StepFailed(
                f"{script.stage} script {script.path} ran longer than {timeout:g} s (SCRIPTTIMEOUT): ...{text}"
            ) from None
        except asyncio.CancelledError:  # the jobs process stops: the script goes with the job
            _kill_session(process.pid)
            reader.cancel()
            raise
        try:
            await asyncio.wait_for(asyncio.shield(reader), timeout=_DRAIN_AFTER_EXIT)
        except TimeoutError:
            reader.cancel()  # a child it left in the background keeps the pipe open: not waited for
        text = _shown(tail, secrets)
        if code != 0:
            raise StepFailed(f"{script.stage} script {script.path} failed (exit {code}): ...{text}")
        log.info("%s: %s ran (exit 0, %d bytes of output)", job, script.path, total)
        return f"{script.path} exit 0, {total} bytes of output" + (f": ...{text}" if text else "")

    def read_student_variables(self, workshop: Workshop, stdid: int) -> dict[str, object]:
        """The values a create script wrote for this student (empty when there is no file)."""
        path = self.student_variables_file(workshop, stdid)
        if path is None or not path.exists():
            return {}
        try:
            return read_variable_file(path, None, self.location.vault_password)
        except ConfigError as exc:
            raise StepFailed(str(exc)) from None

    def remove_student_variables(self, workshop: Workshop, stdid: int) -> str:
        """Remove the student's variables file (it may hold tokens), as the original did."""
        path = self.student_variables_file(workshop, stdid)
        if path is None:
            return "no VARPRIVDIR"
        try:
            path.unlink()
        except FileNotFoundError:
            return f"no {path.name}"
        return f"{path} removed"


def _checked_name(name: str) -> str:
    if not WORKSHOP_RE.fullmatch(name) or ".." in name:
        raise StepFailed(f"{name[:60]!r} is not a workshop name a script may be given")
    return name


def _refuse_writable(path: Path) -> None:
    """A script run as root that anyone may change would run anyone's code: refused."""
    for where in (path, path.parent):
        try:
            mode = where.stat().st_mode
        except OSError as exc:
            raise StepFailed(f"{where}: cannot read: {exc.strerror}") from None
        if mode & stat.S_IWOTH:  # a sticky folder too: anyone may add the script it lacks
            raise StepFailed(f"{where} is writable by every user: a script run as root must not be")


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _shown(tail: bytearray, secrets: Iterable[str]) -> str:
    text = mask(bytes(tail).decode("utf-8", "replace"), secrets)
    return text[-OUTPUT_TAIL:].strip()
