"""A site's private pre- and post-templating tasks (PRETEMPLATING, POSTTEMPLATING).

The original backend's copy playbook included `pre_templating.yml` and `post_templating.yml`
from its private Ansible folder, when they existed, around the rendering of a workshop's
templates: Ansible task files, not playbooks. wodmail runs each in a one-task playbook of
its own that includes it (facts gathered, as the copy playbook did), through the hooks'
runner (wodmail.playbooks: no shell, the variables in a 0600 file, secrets masked), with
the variables the templates see; the pre-templating tasks before the deployment, the
post-templating ones after it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from wodmail.playbooks import Playbooks

__all__ = ["run_templating_tasks"]


async def run_templating_tasks(
    playbooks: Playbooks,
    tasks: Path,
    variables: Mapping[str, object],
    *,
    tag: str,
    secrets: Iterable[str] = (),
) -> str:
    """Run the Ansible task file `tasks` on this host with `variables`; `tag` names the
    files of the run (e.g. 'student12-pre-templating'). StepFailed when it fails."""
    playbooks.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    play = playbooks.run_dir / f"{tag}-play.yml"
    wrapper = [
        {
            "name": f"{tasks.name} (wodmail)",
            "hosts": "all",
            "gather_facts": True,
            "tasks": [{"name": f"include {tasks}", "ansible.builtin.include_tasks": str(tasks)}],
        }
    ]
    fd = os.open(play, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(wrapper, out, sort_keys=False)
    try:
        await playbooks.run(play, variables, tag=tag, secrets=secrets)
    finally:
        play.unlink(missing_ok=True)
    return f"{tasks.name} ok"
