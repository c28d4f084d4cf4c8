"""A workshop's hooks: Ansible playbooks run on this host for create, cleanup and reset.

Each hook runs as `ansible-playbook -i localhost, -c local HOOK -e @VARS` with no shell;
the variables (the same ones templates see, the password among them) go in a 0600 file
that is removed as soon as the run ends, never on a command line. A failed run fails the
step with the tail of its output, every secret value masked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from wodmail.errors import StepFailed

log = logging.getLogger(__name__)

OUTPUT_TAIL = 2000


def ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise StepFailed("ansible-playbook is not installed (pip install ansible-core)")
    return found


class Playbooks:
    def __init__(self, state_dir: Path, timeout: float = 600.0, withheld: Iterable[str] = ()) -> None:
        self.run_dir = state_dir / "run"
        self.timeout = timeout
        # wodmail's own secrets, which may have come from its environment (env:NAME): a
        # hook's environment never carries them.
        self._withheld = frozenset(value for value in withheld if value)

    async def run(self, hook: Path, variables: Mapping[str, object], *, tag: str, secrets: Iterable[str] = ()) -> str:
        """Run `hook` with `variables`; `tag` names the vars file (e.g. 'job12-create')."""
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        vars_file = self.run_dir / f"{tag}.yml"
        fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            # YAML, not JSON: mappings keyed by numbers (OVIP: {7: ...}) keep their keys.
            yaml.safe_dump(plain(variables), out)
        env = {
            **inherited_environment(self._withheld),
            "ANSIBLE_LOCAL_TEMP": str(self.run_dir / "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": str(self.run_dir / "ansible-remote"),
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_NOCOWS": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "false",
            "ANSIBLE_DEPRECATION_WARNINGS": "false",
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_FORCE_COLOR": "false",
        }
        argv = [
            ansible_playbook(),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-e",
            f"@{vars_file}",
            str(hook),
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(hook.parent),
            )
            try:
                output, _ = await asyncio.wait_for(process.communicate(), timeout=self.timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
                raise StepFailed(f"playbook {hook.name} ran longer than {self.timeout:.0f} s") from None
        finally:
            vars_file.unlink(missing_ok=True)
        text = mask(output.decode("utf-8", "replace"), secrets)
        if process.returncode != 0:
            raise StepFailed(f"playbook {hook} failed (exit {process.returncode}): ...{text[-OUTPUT_TAIL:]}")
        return f"playbook {hook.name} ok"


def inherited_environment(withheld: frozenset[str]) -> dict[str, str]:
    """The daemon's environment for a child it runs (a hook, a workshop script), without any
    variable holding one of wodmail's secrets (`withheld`: they may have come from the
    environment, `env:NAME`)."""
    return {name: value for name, value in os.environ.items() if value not in withheld}


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text


def plain(value: object) -> object:
    """`value` with every mapping, sequence and scalar as YAML's safe dumper takes them."""
    if isinstance(value, Mapping):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
