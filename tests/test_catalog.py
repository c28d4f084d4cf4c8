"""A site's existing workshop catalog deploys unchanged.

tests/data/catalog/ is a catalog as the replaced platform left it (see its README.md):
folders with a wod.yml, notebooks and files rendered until now by Ansible, and the public
and private variable folders. The tests point a location at it, as an operator would, and
check what wodmail serves, what it warns about, what `wodmail render` writes and what the
daemon deploys, file by file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Daemon, Site, same_secret, with_app
from tests.standins import RegistrationApp
from wodmail.catalog import VariableFiles, render_for_student, template_variables
from wodmail.errors import ConfigError, StepFailed
from wodmail.location import Location, load_location

CATALOG = Path(__file__).parent / "data" / "catalog"
NOTEBOOKS = CATALOG / "notebooks"
DOCKER = NOTEBOOKS / "WKSHP-Docker101"

#: Every file of WKSHP-Docker101 a student gets, and whether it is rendered.
TEMPLATED = {
    "0-ReadMeFirst.ipynb",
    "1-WKSHP-Docker-Basics.ipynb",
    "2-WKSHP-Conclusion.ipynb",
    "lab/Variables.ps1",
    "lab/app/config.yaml",
    "lab/app/main.py",
    "lab/env/lab.env",
    "lab/env/profile.src",
    "lab/setup.sh",
    "lab/terraform/main.tf",
}
COPIED = {
    "Pictures/architecture.pdf",
    "Pictures/docker-logo.png",
    "data/inventory.sqlite",
    "data/lab-files.zip",
    "data/notes.txt",
    "lab/Other.ps1",
    "lab/docker-compose.yml",
}

#: The site's own keys, as a location file of the replaced platform has them.
SITE_KEYS: dict[str, Any] = {
    "BRANDING": "Test WoD",
    "BRANDINGURL": "https://wod.example.com",
    "BRANDINGLOGO": '![WoDlogo](img/logo.png "the WoD logo")',
    "SURVEYURL": "https://survey.example.com/wod?id=1&lang=en",
    "JPHOSTEXT": "nb.example.com",
    "IP-WKSHP-Docker101": "192.0.2.50",
    "TAGS": ["docker", "containers"],
    "TEMPLATEOPTIONAL": ["BRANDINGSLACK"],
}

PASSWORD = 'Pw"7\\x'
"""A render password with a quote and a backslash: notebooks must stay valid JSON."""


def write_location(
    folder: Path,
    workshops: dict[str, Any] | None = None,
    *,
    notebooks: Path = NOTEBOOKS,
    var_dir: Path | None = CATALOG / "vars",
    var_priv_dir: Path | None = CATALOG / "vars-private",
    **extra: Any,
) -> Path:
    """A location pointing WORKSHOPDIR at a catalog; a workshops file only if given."""
    values: dict[str, Any] = {
        "STATEDIR": str(folder / "state"),
        "STUDENTDIR": str(folder / "students"),
        "WORKSHOPDIR": str(notebooks),
        "STUDENTMAX": 100,
        **SITE_KEYS,
    }
    if var_dir is not None:
        values["VARDIR"] = str(var_dir)
    if var_priv_dir is not None:
        values["VARPRIVDIR"] = str(var_priv_dir)
    values.update(extra)
    values = {key: value for key, value in values.items() if value is not None}
    if workshops is not None:
        (folder / "workshops.yaml").write_text(yaml.safe_dump(workshops, sort_keys=False))
    file = folder / "site.yaml"
    file.write_text(yaml.safe_dump(values, sort_keys=False))
    return file


def copy_catalog(tmp_path: Path) -> Path:
    """A copy of the fixture catalog (notebooks and variable folders) to change safely."""
    target = tmp_path / "catalog"
    shutil.copytree(CATALOG, target, symlinks=True)
    return target


def wodmail(location: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(location), "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), to compare without showing contents."""
    return {p.relative_to(root).as_posix(): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def cells(notebook: Path) -> list[str]:
    """The source of every cell of a deployed notebook (which must be valid JSON)."""
    document = json.loads(notebook.read_text(encoding="utf-8"))
    assert document["nbformat"] == 4
    return ["".join(cell["source"]) for cell in document["cells"]]


# --- what a location serves from a catalog ---------------------------------------------


def test_a_catalog_alone_serves_its_active_workshops(tmp_path: Path) -> None:
    location = load_location(write_location(tmp_path))

    assert set(location.workshops) == {"WKSHP-Docker101", "WKSHP-React101", "CHLG-Docker101"}
    docker = location.workshops["WKSHP-Docker101"]
    assert (docker.first, docker.last, docker.varpass, docker.reset, docker.ldap) == (1, 20, True, False, False)
    assert (docker.capacity, docker.title, docker.active) == (20, "Docker 101: containers for developers", True)
    assert docker.content == DOCKER
    assert docker.metadata_file == DOCKER / "wod.yml"
    assert docker.metadata["presenter"] == "A. Presenter"  # unknown keys are kept, not refused
    assert docker.variable_files == (
        CATALOG / "vars" / "variables_WKSHP-Docker101.yml",
        CATALOG / "vars-private" / "variables_WKSHP-Docker101.yml",
    )
    react = location.workshops["WKSHP-React101"]
    assert (react.first, react.last, react.varpass) == (21, 30, False)  # `active: 'true'` as text
    challenge = location.workshops["CHLG-Docker101"]
    assert (challenge.first, challenge.last, challenge.mode, challenge.varpass) == (31, 40, "CHLG", True)
    assert challenge.content == DOCKER
    assert challenge.variable_files[0] == CATALOG / "vars" / "variables_CHLG-Docker101.yml"

    assert dict(location.not_served) == {"WKSHP-Draft": "inactive", "WKSHP-Legacy": "inactive"}
    assert set(location.catalog) == set(location.workshops) | {"WKSHP-Draft", "WKSHP-Legacy"}
    assert location.catalog["WKSHP-Draft"].active is False
    assert not location.catalog["WKSHP-Legacy"].booked  # its range is malformed
    assert "DevTalks" not in location.catalog
    assert location.optional_variables == ("BRANDINGSLACK",)
    assert (location.var_dir, location.var_priv_dir) == (CATALOG / "vars", CATALOG / "vars-private")


def test_what_is_odd_but_harmless_is_a_warning_naming_file_and_key(tmp_path: Path) -> None:
    location = load_location(write_location(tmp_path))

    assert sorted(location.warnings) == sorted(
        [
            f"{NOTEBOOKS}/WKSHP-Legacy/wod.yml: range: expected [first, last], two student numbers "
            "(write [52, 91], not [52-91])",
            f"{NOTEBOOKS}/WKSHP-React101/wod.yml: priority: expected an integer, found a string",
            f"{NOTEBOOKS}/WKSHP-Draft/wod.yml: range: range 15..25 overlaps WKSHP-Docker101's range 1..20 "
            "(WKSHP-Draft is not served: inactive)",
            f"{NOTEBOOKS}/WKSHP-React101/wod.yml: range: range 21..30 overlaps WKSHP-Draft's range 15..25 "
            "(WKSHP-Draft is not served: inactive)",
            f"{NOTEBOOKS}/WKSHP-Draft/wod.yml: capacity: capacity 50 is larger than the range 15..25 (11 students)",
        ]
    )


def test_the_workshops_file_overrides_a_wod_yml_key_by_key(tmp_path: Path) -> None:
    workshops = {
        "WKSHP-Docker101": {"range": [41, 60], "id": 5, "hooks": None},
        "WKSHP-Legacy": {"range": [61, 100], "active": True},  # fixes the malformed range
        "WKSHP-React101": {"active": False},
        "CHLG-Docker101": None,  # an empty entry: as its wod.yml says
    }
    location = load_location(write_location(tmp_path, workshops))

    docker = location.workshops["WKSHP-Docker101"]
    assert (docker.first, docker.last, docker.app_id, docker.varpass, docker.capacity) == (41, 60, 5, True, 20)
    legacy = location.workshops["WKSHP-Legacy"]
    assert (legacy.first, legacy.last, legacy.reset, legacy.active) == (61, 100, True, True)
    assert location.workshops["CHLG-Docker101"].first == 31
    assert location.not_served == {"WKSHP-React101": "inactive", "WKSHP-Draft": "inactive"}
    assert not any("WKSHP-Legacy" in warning for warning in location.warnings)
    assert any("capacity 50" in warning for warning in location.warnings)


def test_only_listed_workshops_are_served_when_the_location_says_so(tmp_path: Path) -> None:
    file = write_location(tmp_path, {"WKSHP-React101": {"range": [1, 10]}}, CATALOGWORKSHOPS="listed")

    location = load_location(file)

    assert set(location.workshops) == {"WKSHP-React101"}
    assert location.not_served["WKSHP-Docker101"] == "not in the workshops file (CATALOGWORKSHOPS: listed)"
    assert location.workshops["WKSHP-React101"].first == 1


def test_workshops_of_another_site_are_known_but_not_served(tmp_path: Path) -> None:
    location = load_location(write_location(tmp_path, CATALOGLOCATION="grenoble"))

    assert set(location.workshops) == {"WKSHP-React101", "CHLG-Docker101"}  # no `location` in their wod.yml
    assert location.not_served["WKSHP-Docker101"] == "for location mougins (CATALOGLOCATION: grenoble)"
    assert not any("overlaps WKSHP-Docker101" in warning for warning in location.warnings)


def test_the_embedded_default_and_its_samples_still_load() -> None:
    location = load_location()

    assert set(location.workshops) == {"WKSHP-Sample", "CHLG-Sample", "WKSHP-SampleReset"}
    assert (location.workshops["WKSHP-Sample"].first, location.workshops["WKSHP-Sample"].last) == (1, 40)
    assert location.warnings == ()


BAD_WOD_YML = {
    "malformed-range": (
        "range: [1981-1985]\n",
        "range: expected [first, last], two student numbers (write [1981, 1985], not [1981-1985])",
    ),
    "range-of-text": ("range: ['1', '9']\n", "range: expected [first, last], two student numbers"),
    "flag-not-boolean": ("range: [90, 95]\nvarpass: maybe\n", "varpass: expected true or false, found a string"),
    "active-not-boolean": ("range: [90, 95]\nactive: sometimes\n", "active: expected true or false, found a string"),
    "capacity-not-a-number": (
        "range: [90, 95]\ncapacity: lots\n",
        "capacity: expected a number of seats, found a string",
    ),
    "range-outside-students": ("range: [90, 120]\n", "range: range 90..120 is outside STUDENTMIN..STUDENTMAX (1..100)"),
    "ranges-overlap": ("range: [10, 25]\n", "range: range 10..25 overlaps WKSHP-Docker101's range 1..20"),
    "missing-range": (
        "varpass: true\n",
        "range: missing: the booked students, as [first, last] (here or in the workshops file)",
    ),
    "ldap-without-ldapuri": (
        "range: [90, 95]\nldap: true\n",
        "ldap: the workshop needs LDAP but the location sets no LDAPURI",
    ),
    "not-yaml": ("range: [90, 95\n", "not valid YAML"),
    "not-a-mapping": ("- range\n", "expected a mapping of key: value, found a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_WOD_YML))
def test_a_malformed_wod_yml_of_a_served_workshop_stops_the_start(case: str, tmp_path: Path) -> None:
    catalog = copy_catalog(tmp_path)
    folder = catalog / "notebooks" / "WKSHP-Case"
    folder.mkdir()
    text, reason = BAD_WOD_YML[case]
    (folder / "wod.yml").write_text(text)

    with pytest.raises(ConfigError) as caught:
        load_location(write_location(tmp_path, notebooks=catalog / "notebooks"))

    assert str(caught.value).startswith(f"{folder / 'wod.yml'}: {reason}")
    assert "\n" not in str(caught.value)


def test_a_challenge_without_its_workshop_stops_the_start(tmp_path: Path) -> None:
    catalog = copy_catalog(tmp_path)
    (catalog / "notebooks" / "CHLG-Nothing").mkdir()
    (catalog / "notebooks" / "CHLG-Nothing" / "wod.yml").write_text("range: [90, 95]\n")

    with pytest.raises(ConfigError) as caught:
        load_location(write_location(tmp_path, notebooks=catalog / "notebooks"))

    assert str(caught.value) == (
        f"{catalog}/notebooks/CHLG-Nothing/wod.yml: workshop without content: "
        f"{catalog}/notebooks/WKSHP-Nothing is not a directory"
    )


def test_the_same_mistakes_in_an_inactive_workshop_only_warn(tmp_path: Path) -> None:
    catalog = copy_catalog(tmp_path)
    folder = catalog / "notebooks" / "WKSHP-Case"
    folder.mkdir()
    (folder / "wod.yml").write_text("active: false\nrange: [1981-1985]\nvarpass: maybe\nldap: true\n")

    location = load_location(write_location(tmp_path, notebooks=catalog / "notebooks"))

    assert location.not_served["WKSHP-Case"] == "inactive"
    mine = [warning for warning in location.warnings if "WKSHP-Case/wod.yml" in warning]
    assert [warning.split(": ")[1] for warning in mine] == ["range", "varpass", "ldap"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("OVIP: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  3061\n", "OVIP: encrypted with ansible-vault (!vault)"),
        ("- a list\n", "expected a mapping of NAME: value, found a list"),
        ("1: one\n", "1: variable names must be strings, found an integer"),
    ],
)
def test_a_variable_file_that_cannot_be_used_stops_the_start(text: str, reason: str, tmp_path: Path) -> None:
    catalog = copy_catalog(tmp_path)
    private = catalog / "vars-private" / "variables_WKSHP-Docker101.yml"
    private.write_text(text)

    with pytest.raises(ConfigError) as caught:
        load_location(write_location(tmp_path, var_priv_dir=catalog / "vars-private"))

    assert str(caught.value).startswith(f"{private}: {reason}")


def test_a_key_given_twice_counts_its_last_value_and_warns(tmp_path: Path) -> None:
    catalog = copy_catalog(tmp_path)
    wod = catalog / "notebooks/WKSHP-React101/wod.yml"
    wod.write_text(wod.read_text() + "range: [22, 29]\n")
    private = catalog / "vars-private/variables_WKSHP-Docker101.yml"
    private.write_text("SHARED: first\nSHARED: last\n")

    location = load_location(write_location(tmp_path, notebooks=catalog / "notebooks", var_priv_dir=private.parent))

    assert (location.workshops["WKSHP-React101"].first, location.workshops["WKSHP-React101"].last) == (22, 29)
    assert f"{wod}: range: given twice (lines 8 and 15): the last counts" in location.warnings
    assert f"{private}: SHARED: given twice (lines 1 and 2): the last counts" in location.warnings
    variables = template_variables(location, location.workshops["WKSHP-Docker101"], 7, "pw")
    assert variables["SHARED"] == "last"


def vault_encrypt(text: str, password: str) -> str:
    """What `ansible-vault encrypt_string` writes (ansible-core is a dependency)."""
    from ansible.parsing.vault import VaultLib, VaultSecret  # type: ignore[import-untyped,unused-ignore]

    return str(VaultLib([("default", VaultSecret(password.encode()))]).encrypt(text).decode())


def test_ansible_vault_values_and_files_are_decrypted_with_vaultpwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = copy_catalog(tmp_path)
    private = catalog / "vars-private"
    token = vault_encrypt('tok"en-from-vault', "vault-secret")
    (private / "variables_WKSHP-Docker101.yml").write_text(
        "SHARED: clear\nREGISTRYTOKEN: !vault |\n" + "".join(f"  {line}\n" for line in token.splitlines())
    )
    (private / "variables_WKSHP-React101.yml").write_text(vault_encrypt("WHOLE: file\n", "vault-secret"))
    (tmp_path / "vault_secret").write_text("vault-secret\n")
    monkeypatch.setenv("WODMAIL_TEST_VAULT", "wrong-secret")

    location = load_location(write_location(tmp_path, var_priv_dir=private, VAULTPWD=f"file:{tmp_path}/vault_secret"))
    wrong = write_location(tmp_path, var_priv_dir=private, VAULTPWD="env:WODMAIL_TEST_VAULT")
    with pytest.raises(ConfigError) as caught:
        load_location(wrong)

    docker = template_variables(location, location.workshops["WKSHP-Docker101"], 7, "pw")
    assert same_secret(docker["REGISTRYTOKEN"], 'tok"en-from-vault')
    assert docker["SHARED"] == "clear"
    assert template_variables(location, location.workshops["WKSHP-React101"], 21, "pw")["WHOLE"] == "file"
    assert "VAULTPWD" not in docker
    assert str(caught.value) == (
        f"{private}/variables_WKSHP-Docker101.yml: REGISTRYTOKEN: encrypted with ansible-vault (!vault): "
        "cannot be decrypted with VAULTPWD (a wrong password, or a damaged text)"
    )
    shown = "vault-secret" in repr(location) or "vault-secret" in str(location.template_variables())
    assert not shown, "VAULTPWD shows in the location's repr or reaches the templates"


def test_the_location_keys_are_checked(tmp_path: Path) -> None:
    cases: list[tuple[str, Any, str]] = [
        ("VARDIR", str(tmp_path / "nowhere"), f"{tmp_path / 'nowhere'} is not a directory"),
        ("CATALOGWORKSHOPS", "some", "expected active or listed"),
        ("TEMPLATEOPTIONAL", [["nested"]], "unknown key type"),
        ("TEMPLATEOPTIONAL", ["two words"], "expected names, found 'two words'"),
    ]
    for key, value, reason in cases:
        extra: dict[str, Any] = {key: value}
        file = write_location(tmp_path, None, **extra)
        with pytest.raises(ConfigError) as caught:
            load_location(file)
        assert str(caught.value).startswith(f"{file}: {key}: {reason}"), key


# --- the variables a student's templates see --------------------------------------------


def test_variables_are_layered_location_workshop_public_private_student(tmp_path: Path) -> None:
    public, private = tmp_path / "public", tmp_path / "private"
    public.mkdir()
    private.mkdir()
    (public / "variables_WKSHP-React101.yml").write_text(
        "LAYER: public\nPUBLIC: yes\nBRANDING: public branding\nSTDID: 999\nHOSTS: {7: 192.0.2.7}\n"
    )
    (private / "variables_WKSHP-React101.yml").write_text("LAYER: private\nPRIVATE: secret-value\n")
    file = write_location(
        tmp_path,
        {"WKSHP-React101": {"variables": {"LAYER": "workshops file", "FROMFILE": 1}}},
        var_dir=public,
        var_priv_dir=private,
        LAYER="location",
    )
    location = load_location(file)
    workshop = location.workshops["WKSHP-React101"]

    variables = template_variables(location, workshop, 7, "pw", customer="42")

    assert variables["LAYER"] == "private"
    assert (variables["PUBLIC"], variables["PRIVATE"], variables["FROMFILE"]) == (True, "secret-value", 1)
    assert variables["BRANDING"] == "public branding"  # a variable file overrides the location
    assert variables["HOSTS"] == {7: "192.0.2.7"}  # nested values, as include_vars read them
    assert variables["STDID"] == 7  # the student's values come last
    assert (variables["MODE"], variables["WORKSHOP"], variables["CHALLENGE"]) == (
        "WKSHP",
        "WKSHP-React101",
        "WKSHP-React101",
    )
    assert (variables["CUSTOMER"], variables["VARDIR"]) == ("42", str(public))
    assert "PASSSTU" not in variables  # React101 is not a varpass workshop


def test_variable_files_are_read_again_when_they_change(tmp_path: Path) -> None:
    file = tmp_path / "variables_WKSHP-X.yml"
    files = VariableFiles()
    assert files.read(file) == {}

    file.write_text("VALUE: one\n")
    first = files.read(file)
    assert first == {"VALUE": "one"}
    assert files.read(file) is first  # unchanged: not read again

    file.write_text("VALUE: second\n")
    assert files.read(file) == {"VALUE": "second"}

    file.write_text("VALUE: [unclosed\n")
    with pytest.raises(StepFailed, match=f"^{file}: not valid YAML"):
        files.read(file)

    file.unlink()
    assert files.read(file) == {}


# --- wodmail render ---------------------------------------------------------------------


def test_wodmail_render_writes_one_students_workshop_as_ansible_did(tmp_path: Path) -> None:
    location = write_location(tmp_path)
    out = tmp_path / "out"

    result = wodmail(location, "render", "WKSHP-Docker101", "--student", "7", "--out", str(out), "--password", PASSWORD)

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"WKSHP-Docker101 rendered for student7: 10 templated and 7 copied files in {out / 'WKSHP-Docker101'}\n"
    )
    deployed = out / "WKSHP-Docker101"
    assert set(tree(deployed)) == TEMPLATED | COPIED  # no wod.yml, no checkpoint
    for name in COPIED:  # byte for byte, template-looking bytes and all
        assert digest(deployed / name) == digest(DOCKER / name), name
    assert stat.S_IMODE((deployed / "lab/setup.sh").stat().st_mode) == 0o755

    readme, docker_host = cells(deployed / "0-ReadMeFirst.ipynb")
    assert readme.startswith('![WoDlogo](img/logo.png "the WoD logo")\n# Welcome to Test WoD: Docker 101\n')
    assert "This is the **workshop**." in readme and "challenge" not in readme
    assert same_secret(readme.split("your password is `")[1].split("`")[0], PASSWORD)
    assert "https://nb.example.com/user/student7/lab and more at https://wod.example.com." in readme
    assert docker_host == 'export DOCKER_HOST=tcp://192.0.2.50:2375\necho "student7 on localhost"'

    _, go_template, literal_braces, from_files = cells(deployed / "1-WKSHP-Docker-Basics.ipynb")
    assert go_template == "docker ps --format '{{ .Names }}: {{ .Status }}'"
    assert literal_braces == "docker inspect --format '{{ .State.Status }}' lab7"
    assert from_files == (
        'docker login -u student7 -p "tok"en\\with-quotes" registry.example.com\n'
        "ping -c1 192.0.2.107  # your appliance\necho from the private file"
    )
    (conclusion,) = cells(deployed / "2-WKSHP-Conclusion.ipynb")
    assert conclusion == (
        "# Thank you\nTell us what you thought: https://survey.example.com/wod?id=1&lang=en\n"
        "Join us on Slack.\n\n- docker\n\n- containers\n"
    )

    assert (deployed / "lab/app/main.py").read_text() == (
        '"""The lab application of student7."""\n\nSTUDENT = "student7"\nREGISTRY = "registry.example.com"\n'
        'GREETING = "Hello from " + STUDENT + " on Test WoD"\n\n\n'
    )
    assert (deployed / "lab/app/config.yaml").read_text() == (
        "# student7's lab configuration\nstudent: student7\nregistry: registry.example.com\n"
        'shared: from the private file\nappliance: 192.0.2.107\nformat: "{{ .Names }}"\n'
    )
    assert (deployed / "lab/env/lab.env").read_text() == (
        "STUDENT_ID=7\nPORTAL=https://wod.example.com\nDOCKER_HOST=tcp://192.0.2.50:2375\n"
    )
    assert (deployed / "lab/env/profile.src").read_text() == (
        "export WOD_STUDENT=student7\nexport WOD_CHALLENGE=WKSHP-Docker101\n"
    )
    assert '"student7"' in (deployed / "lab/terraform/main.tf").read_text()
    assert '"lab-${var.student}"' in (deployed / "lab/terraform/main.tf").read_text()
    variables_ps1 = (deployed / "lab/Variables.ps1").read_text()
    assert same_secret(variables_ps1, f'$Student = "student7"\n$Password = "{PASSWORD}"\n')
    assert 'echo "done for $(whoami) in WKSHP-Docker101 (WKSHP)"' in (deployed / "lab/setup.sh").read_text()


def test_wodmail_render_a_challenge_uses_the_workshops_content_and_its_own_variables(tmp_path: Path) -> None:
    location = write_location(tmp_path)
    out = tmp_path / "out"

    result = wodmail(location, "render", "CHLG-Docker101", "--student", "33", "--out", str(out))

    assert result.returncode == 0, result.stderr
    deployed = out / "WKSHP-Docker101"
    readme, _ = cells(deployed / "0-ReadMeFirst.ipynb")
    assert "This is the **challenge**: start with docker ps" in readme
    *_, from_files = cells(deployed / "1-WKSHP-Docker-Basics.ipynb")
    assert "challenge-registry.example.com\nping -c1 192.0.2.133" in from_files
    assert "CHALLENGE = True" in (deployed / "lab/app/main.py").read_text()
    assert "export WOD_CHALLENGE=CHLG-Docker101\n" in (deployed / "lab/env/profile.src").read_text()


def test_wodmail_render_jsx_in_raw_blocks(tmp_path: Path) -> None:
    location = write_location(tmp_path)

    result = wodmail(location, "render", "WKSHP-React101", "--student", "21")

    assert result.returncode == 0, result.stderr
    deployed = Path(result.stdout.rsplit(" in ", 1)[1].strip())
    assert deployed.parent.name.startswith("wodmail-render-WKSHP-React101-student21-")
    try:
        heading, jsx = cells(deployed / "0-ReadMeFirst.ipynb")
        assert heading == "# React 101 on Test WoD\nstudent21, MODE WKSHP"
        assert jsx.endswith(
            "export const Greeting = ({ user }) => (\n"
            '  <div style={{ color: "red", fontSize: 12 }}>Hello {user.name}</div>\n);'
        )
        assert digest(deployed / "src/App.js") == digest(NOTEBOOKS / "WKSHP-React101/src/App.js")
    finally:
        shutil.rmtree(deployed.parent)


def test_an_undefined_variable_fails_naming_file_line_and_variable(tmp_path: Path) -> None:
    location = write_location(tmp_path, TEMPLATEOPTIONAL=None)
    out = tmp_path / "out"

    result = wodmail(location, "render", "WKSHP-Docker101", "--student", "7", "--out", str(out))

    assert result.returncode == 65
    assert result.stderr == (
        "wodmail render: WKSHP-Docker101/2-WKSHP-Conclusion.ipynb line 9: undefined variable 'BRANDINGSLACK'\n"
    )
    assert not (out / "WKSHP-Docker101").exists()


def test_wodmail_render_checks_a_workshop_before_it_is_published(tmp_path: Path) -> None:
    catalog = copy_catalog(tmp_path)
    new = catalog / "notebooks" / "WKSHP-New"
    new.mkdir()
    (new / "0-ReadMeFirst.ipynb").write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 4, "x": "{{ STDID }}"})
    )
    location = write_location(tmp_path, notebooks=catalog / "notebooks")

    draft = wodmail(location, "render", "WKSHP-Draft", "--student", "15", "--out", str(tmp_path / "draft"))
    bare = wodmail(location, "render", "WKSHP-New", "--student", "5", "--out", str(tmp_path / "new"))
    missing = wodmail(location, "render", "WKSHP-Nowhere", "--student", "5")

    assert draft.returncode == 0, draft.stderr
    assert draft.stderr == "note: WKSHP-Draft is not served on location site: inactive\n"
    assert bare.returncode == 0, bare.stderr
    assert "WKSHP-New has no wod.yml and is not in the workshops file" in bare.stderr
    assert json.loads((tmp_path / "new/WKSHP-New/0-ReadMeFirst.ipynb").read_text())["x"] == "5"
    assert missing.returncode == 65
    assert missing.stderr.startswith("wodmail render: no workshop WKSHP-Nowhere on location site")


def test_wodmail_check_lists_what_is_not_served_and_the_warnings(tmp_path: Path) -> None:
    catalog = copy_catalog(tmp_path)
    location = write_location(tmp_path, notebooks=catalog / "notebooks")

    good = wodmail(location, "check")
    (catalog / "notebooks/WKSHP-React101/0-ReadMeFirst.ipynb").write_text('{"x": "{{ broken }"}')
    broken = wodmail(location, "check")

    assert good.returncode == 0, good.stderr
    assert "  WKSHP-Draft              not served: inactive\n" in good.stdout
    assert "warning: " + str(catalog / "notebooks/WKSHP-Draft/wod.yml") + ": capacity: capacity 50" in good.stdout
    # Rendered for the first student of its range: OVIP (the challenge's file) has no student31.
    assert (
        "warning: CHLG-Docker101: the CREATE of student31 would fail: WKSHP-Docker101/1-WKSHP-Docker-Basics.ipynb"
        " line 34: dict object has no element 31\n" in good.stdout
    )
    assert good.stdout.endswith("3 workshop(s) served, 2 known but not served, 6 warning(s), 0 with template errors\n")
    assert broken.returncode == 65
    assert "error: WKSHP-React101: WKSHP-React101/0-ReadMeFirst.ipynb line 1: template syntax error" in broken.stdout


def test_wodmail_check_renders_each_workshop_and_names_a_variable_nothing_defines(tmp_path: Path) -> None:
    # A notebook that uses a site key the location lacks: every CREATE of the workshop would
    # stop at its deploy step. `check` renders each served workshop for the first student of
    # its range (in memory) and says so, before the daemon serves it.
    catalog = copy_catalog(tmp_path)
    notebook = catalog / "notebooks/WKSHP-React101/0-ReadMeFirst.ipynb"
    document = json.loads(notebook.read_text())
    document["cells"][0]["source"] = ["Your lab is {{ LABHOST }}, port {{ 8000 + STDID }}\n"]
    notebook.write_text(json.dumps(document))
    location = write_location(tmp_path, notebooks=catalog / "notebooks")
    missing = wodmail(location, "check")

    # A create script may write it for each student (wodmail.scripts): then a warning only.
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    create = scripts / "create-WKSHP-React101.sh"
    create.write_text("#!/bin/bash\nexit 0\n")
    create.chmod(0o755)
    with_script = wodmail(write_location(tmp_path, notebooks=catalog / "notebooks", SCRIPTDIR=str(scripts)), "check")

    defined = wodmail(write_location(tmp_path, notebooks=catalog / "notebooks", LABHOST="lab.example.com"), "check")

    problem = "WKSHP-React101/0-ReadMeFirst.ipynb line 1: undefined variable 'LABHOST'"
    assert missing.returncode == 65, missing.stdout + missing.stderr
    assert f"error: WKSHP-React101: {problem}: every CREATE of it would fail\n" in missing.stdout
    assert missing.stdout.endswith("1 with template errors\n")
    assert with_script.returncode == 0, with_script.stdout + with_script.stderr
    assert f"warning: WKSHP-React101: {problem} (unless its create scripts write it" in with_script.stdout
    assert defined.returncode == 0, defined.stdout + defined.stderr
    assert "LABHOST" not in defined.stdout


def test_render_for_student_uses_the_same_variables_as_the_daemon(tmp_path: Path) -> None:
    location: Location = load_location(write_location(tmp_path))

    report = render_for_student(location, "WKSHP-Docker101", 12, out=tmp_path / "home", password="p4ss")

    assert report.dest == tmp_path / "home" / "WKSHP-Docker101"
    assert (report.templated, report.copied, report.notes) == (10, 7, ())
    assert "192.0.2.112" in (report.dest / "lab/app/config.yaml").read_text()
    outside = render_for_student(location, "WKSHP-React101", 50, out=tmp_path / "other", password="p4ss")
    assert outside.notes == ("student 50 is outside WKSHP-React101's range 21..30",)


# --- through the daemon -----------------------------------------------------------------


def catalog_site(site: Site, notebooks: Path = NOTEBOOKS, vars_root: Path = CATALOG) -> None:
    """The conftest site, pointed at a catalog with no workshop in its workshops file."""
    site.values.update(SITE_KEYS)
    site.values.update(
        WORKSHOPDIR=str(notebooks),
        VARDIR=str(vars_root / "vars"),
        VARPRIVDIR=str(vars_root / "vars-private"),
    )
    site.workshops = {}


def password_of(app: RegistrationApp, site: Site, stdid: int) -> str:
    app.wait_for(lambda a: "password" in a.state()["student"].get(str(stdid + 1000), {}))
    return str(app.state()["student"][str(stdid + 1000)]["password"])


def test_the_daemon_deploys_the_catalog_as_wodmail_render_does(
    site: Site, app: RegistrationApp, daemon_factory: Any, tmp_path: Path
) -> None:
    catalog_site(site)
    with_app(site, app)
    daemon: Daemon = daemon_factory()

    for stdid, workshop in ((7, "WKSHP-Docker101"), (21, "WKSHP-React101"), (33, "CHLG-Docker101")):
        assert daemon.send(f"CREATE {stdid} 5{stdid} s{stdid}@example.com", body=workshop)[0] == 250
    inactive = daemon.send("CREATE 16 516", body="WKSHP-Draft")
    jobs = site.wait_jobs(3)

    assert inactive == (554, b"unknown workshop 'WKSHP-Draft' on location site")

    assert [job[3] for job in jobs] == ["done"] * 3, jobs
    location = load_location(site.file)
    for stdid, workshop in ((7, "WKSHP-Docker101"), (21, "WKSHP-React101"), (33, "CHLG-Docker101")):
        password = password_of(app, site, stdid)
        home = site.home(stdid)
        expected = render_for_student(
            location, workshop, stdid, out=tmp_path / f"render{stdid}", password=password, customer=f"5{stdid}"
        )
        deployed = home / expected.dest.name
        assert tree(deployed) == tree(expected.dest), workshop  # the daemon and `wodmail render` agree
    readme, _ = cells(site.home(7) / "WKSHP-Docker101" / "0-ReadMeFirst.ipynb")
    assert same_secret(readme.split("your password is `")[1].split("`")[0], password_of(app, site, 7))
    for name in COPIED:
        assert digest(site.home(7) / "WKSHP-Docker101" / name) == digest(DOCKER / name), name
    logs = daemon.logs()
    assert "WKSHP-Draft/wod.yml: capacity: capacity 50 is larger than the range 15..25" in logs
    assert "WKSHP-Legacy/wod.yml: range: expected [first, last]" in logs


def test_the_daemon_picks_up_catalog_and_variable_changes_without_a_restart(
    site: Site, daemon_factory: Any, tmp_path: Path
) -> None:
    catalog = copy_catalog(tmp_path)
    catalog_site(site, catalog / "notebooks", catalog)
    daemon: Daemon = daemon_factory()

    assert daemon.send("CREATE 1 501", body="WKSHP-Docker101")[0] == 250
    site.wait_jobs(1)
    config = catalog / "notebooks/WKSHP-Docker101/lab/app/config.yaml"
    config.write_text(config.read_text() + "extra: {{ NEWKEY }}\n")
    private = catalog / "vars-private/variables_WKSHP-Docker101.yml"
    private.write_text("SHARED: changed\nNEWKEY: added while serving\n")
    time.sleep(1.2)  # the renderer looks at the catalog at most once a second
    assert daemon.send("CREATE 12 502", body="WKSHP-Docker101")[0] == 250
    jobs = site.wait_jobs(2)

    assert [job[3] for job in jobs] == ["done", "done"], jobs
    before = (site.home(1) / "WKSHP-Docker101/lab/app/config.yaml").read_text()
    after = (site.home(12) / "WKSHP-Docker101/lab/app/config.yaml").read_text()
    assert "shared: from the private file\n" in before and "extra" not in before
    assert "shared: changed\n" in after and after.endswith("extra: added while serving\n")
    assert os.path.exists(site.home(12) / "WKSHP-Docker101/Pictures/docker-logo.png")
