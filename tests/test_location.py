"""The location loader: a site's YAML file and its workshops file, read and checked.

Each test stages files from tests/data/locations/ into a tmp folder (with the workshop
content folders WKSHP-Alpha, WKSHP-Beta and WKSHP-Reset beside them) and loads them as
`wodmail` would at start-up.
"""

from __future__ import annotations

import os
import re
import shutil
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
import yaml

from wodmail import resources
from wodmail.errors import ConfigError
from wodmail.location import SECRET_KEYS, Location, Workshop, load_location

DATA = Path(__file__).parent / "data" / "locations"
LOCATIONS = resources.product_path("locations")
CONTENT = ("WKSHP-Alpha", "WKSHP-Beta", "WKSHP-Reset")


def stage(tmp_path: Path, location: str = "minimal.yaml", workshops: str = "workshops.yaml") -> Path:
    """Copy a location and a workshops file (as workshops.yaml) into tmp_path, with content."""
    target = tmp_path / Path(location).name
    shutil.copyfile(DATA / location, target)
    shutil.copyfile(DATA / workshops, tmp_path / "workshops.yaml")
    for name in CONTENT:
        (tmp_path / "content" / name).mkdir(parents=True, exist_ok=True)
    return target


def expected_error(case: Path) -> str:
    first = case.read_text().splitlines()[0] if case.read_text() else ""
    assert first.startswith("# expect: "), f"{case.name} starts with no '# expect: ' line"
    return first.removeprefix("# expect: ")


# --- the site format ----------------------------------------------------------------------


def test_the_articles_staging_location_loads_unchanged(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path, "staging-from-article.yaml"))

    article = yaml.safe_load((DATA / "staging-from-article.yaml").read_text())
    for key, value in article.items():
        if key != "JPHUBAPISRV":
            assert location.values[key] == value, key
    assert location.values["JPHUBAPISRV"] == "http://jupyter3.example.com:8000"
    assert location.hub_url == "http://jupyter3.example.com:8000"
    assert location.hub_token == "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    assert location.api_endpoint == "https://example.com/api"
    assert (location.api_user, location.api_password) == ("user", "password")
    assert location.base_stdid == 0
    assert location.name == "staging-from-article"
    assert location.file == tmp_path / "staging-from-article.yaml"


def test_free_keys_reach_templates_and_secrets_do_not(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path, "staging-from-article.yaml"))

    variables = location.template_variables()
    assert variables["STACKSTORMSRVNAME"] == "sta-stackstorm"
    assert variables["KIBANAPWD"] == "zzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
    assert variables["PBKDIR"] == "staging"
    assert variables["JPHUBAPISRV"] == "http://jupyter3.example.com:8000"
    assert not SECRET_KEYS & variables.keys()
    assert {"APIPWD", "JPHUBTOKEN"} <= location.values.keys()


def test_a_minimal_location_takes_the_defaults(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path))

    assert (location.smtp_host, location.smtp_port, location.legacy_port) == (
        "127.0.0.1",
        8025,
        None,
    )
    assert location.state_dir == tmp_path / "state"
    assert location.student_dir == tmp_path / "students"
    assert location.workshop_dir == tmp_path / "content"
    assert location.playbook_dir == resources.product_path("playbooks")
    assert location.skel_dir is None
    assert (location.student_min, location.student_max, location.base_stdid) == (1, 100, 0)
    assert location.legacy_peers == (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
    assert location.trusted_peers == location.legacy_peers
    assert location.trust_local is True
    assert location.trusted_senders == ()
    assert (location.api_endpoint, location.api_user, location.api_password) == (None, None, None)
    assert (location.hub_url, location.hub_token, location.ldap_uri) == (None, None, None)
    assert (location.workers, location.jobs.hook_slots, location.max_message_size) == (64, os.cpu_count(), 65536)
    assert location.student_home(12) == tmp_path / "students" / "student12"


def test_every_wodmail_key_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    file = stage(tmp_path, "every-wodmail-key.yaml")
    (tmp_path / "booked").mkdir()
    (tmp_path / "workshops.yaml").rename(tmp_path / "booked" / "workshops.yaml")
    (tmp_path / "skel").mkdir()

    location = load_location(str(file))

    assert (location.smtp_host, location.smtp_port, location.legacy_port) == ("192.0.2.1", 2525, 0)
    assert location.state_dir == tmp_path / "home" / "wod" / "state"
    assert location.student_dir == Path("/srv/students")
    assert location.playbook_dir == tmp_path / "playbooks"
    assert location.skel_dir == tmp_path / "skel"
    assert (location.base_stdid, location.workers, location.max_message_size) == (3000, 32, 10000)
    assert location.jobs.hook_slots == 3
    assert location.ldap_uri == "ldap://ldap.example.com:389"
    assert location.values["LDAPBINDDN"] == "cn=admin,dc=example,dc=com"
    assert "LDAPBINDPW" not in location.template_variables()
    assert set(location.workshops) == {"WKSHP-Alpha", "CHLG-Alpha", "WKSHP-Reset", "WKSHP-Beta"}


# --- references and secrets ---------------------------------------------------------------


def test_references_resolve_recursively_and_keep_types(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path, "references-keep-types.yaml"))

    assert location.values["STUDENTMAX"] == 100
    assert location.student_max == 100
    assert location.values["HUBHOST"] == "hub.example.com"
    assert location.hub_url == "https://hub.example.com:8443"
    assert location.trusted_senders == ("wod@example.com", "@partner.example.com")
    assert location.values["BANNER"] == "[]"
    assert location.values["OPENS"] == "2024-05-01"


def test_text_tagged_unsafe_is_taken_as_written(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path, "literal-text-with-unsafe.yaml"))

    variables = location.template_variables()
    assert variables["BRANDING"] == 'Quote " {{ x }} {% raw %} é'
    assert type(variables["BRANDING"]) is str
    assert variables["MOTTO"] == "env:NOT_A_SECRET"
    assert variables["ECHO"] == "env:NOT_A_SECRET"
    assert variables["SAYS"] == "motto: env:NOT_A_SECRET"


def test_secrets_come_from_the_environment_and_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WODMAIL_TEST_APIPWD", "api {{ JPHOST }} secret")
    monkeypatch.setenv("WODMAIL_TEST_LDAPBINDPW", "ldap-secret")
    monkeypatch.setenv("WODMAIL_TEST_SIGNINGKEY", "key-one")
    monkeypatch.setenv("WODMAIL_TEST_KIBANAPWD", "kibana-secret")
    file = stage(tmp_path, "secrets-from-env-and-file.yaml")
    (tmp_path / "hub-token").write_text("hub-secret\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "signing-key").write_text("key-two\r\n")

    location = load_location(file)

    assert location.api_password == "api {{ JPHOST }} secret"  # a secret is never scanned
    assert location.api_endpoint == "https://example.com/api"
    assert location.hub_token == "hub-secret"
    assert location.values["LDAPBINDPW"] == "ldap-secret"
    assert location.values["LDAPBINDDN"] == "cn=wodmail,dc=example,dc=com"
    assert location.values["SIGNINGKEYS"] == ("key-one", "key-two")
    variables = location.template_variables()
    assert variables["KIBANAPWD"] == "kibana-secret"  # a free key: the templates need it
    assert not SECRET_KEYS & variables.keys()
    assert "secret" not in repr(variables.get("JPHUBAPISRV"))


# --- peers and senders --------------------------------------------------------------------


def test_peers_are_checked_against_the_listed_networks(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path, "peers-and-senders.yaml"))

    assert location.peer_is_legacy("192.0.2.10")
    assert not location.peer_is_legacy("192.0.2.11")
    assert not location.peer_is_legacy("127.0.0.1")
    assert location.peer_is_trusted("192.0.2.15")
    assert not location.peer_is_trusted("192.0.2.16")
    assert location.peer_is_trusted("2001:db8::25")
    assert location.peer_is_trusted("::ffff:192.0.2.1")  # as a dual-stack listener sees it
    assert not location.peer_is_trusted("127.0.0.1")
    assert not location.peer_is_trusted("not-an-address")
    assert not location.peer_is_trusted("")
    assert location.trust_local is False


def test_the_default_peers_are_loopback_only(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path))

    for address in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
        assert location.peer_is_trusted(address), address
        assert location.peer_is_legacy(address), address
    assert not location.peer_is_trusted("192.0.2.10")
    assert not location.peer_is_legacy("10.0.0.1")


def test_senders_match_an_address_or_a_domain_whatever_the_case(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path, "peers-and-senders.yaml"))

    assert location.trusted_senders == ("wod@example.com", "@wod.example.com")
    assert location.sender_is_trusted("wod@example.com")
    assert location.sender_is_trusted("WOD@EXAMPLE.COM")
    assert location.sender_is_trusted("<wod@example.com>")
    assert location.sender_is_trusted("anyone@Wod.Example.com")
    assert not location.sender_is_trusted("other@example.com")
    assert not location.sender_is_trusted("anyone@sub.wod.example.com")
    assert not location.sender_is_trusted("wod.example.com")
    assert not location.sender_is_trusted("@wod.example.com")
    assert not location.sender_is_trusted("")


def test_no_trusted_senders_means_any_sender(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path))

    assert location.sender_is_trusted("anyone@example.org")
    assert location.sender_is_trusted("")


# --- workshops ----------------------------------------------------------------------------


def test_workshops_are_read_with_their_flags_and_ranges(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path))

    alpha = location.workshop("WKSHP-Alpha")
    assert alpha == Workshop(
        name="WKSHP-Alpha",
        first=1,
        last=40,
        content=tmp_path / "content" / "WKSHP-Alpha",
        varpass=True,
        app_id=3,
    )
    assert alpha.mode == "WKSHP"
    assert alpha.holds(1) and alpha.holds(40)
    assert not alpha.holds(0) and not alpha.holds(41)
    reset = location.workshops["WKSHP-Reset"]
    assert (reset.reset, reset.varpass, reset.ldap, reset.app_id) == (True, True, False, None)
    beta = location.workshops["WKSHP-Beta"]
    assert dict(beta.variables) == {
        "DOCKERHOST": "docker.example.com",
        "SEATS": 20,
        "OPTIONAL": None,
    }
    assert location.workshop("WKSHP-Unknown") is None


def test_a_challenge_uses_its_workshops_content(tmp_path: Path) -> None:
    location = load_location(stage(tmp_path))

    challenge = location.workshops["CHLG-Alpha"]
    assert challenge.mode == "CHLG"
    assert challenge.content_name == "WKSHP-Alpha"
    assert challenge.content == tmp_path / "content" / "WKSHP-Alpha"
    assert (challenge.first, challenge.last) == (41, 60)


def test_hooks_are_found_by_convention_unless_named(tmp_path: Path) -> None:
    file = stage(tmp_path, "minimal.yaml", "workshops-with-hooks.yaml")
    with file.open("a") as text:
        text.write("PLAYBOOKDIR: playbooks\n")
    for verb in ("create", "reset"):
        playbook = tmp_path / "playbooks" / "WKSHP-Alpha" / f"{verb}.yml"
        playbook.parent.mkdir(parents=True, exist_ok=True)
        playbook.write_text("- hosts: localhost\n")
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "alpha-reset.yml").write_text("- hosts: localhost\n")

    location = load_location(file)

    convention = tmp_path / "playbooks" / "WKSHP-Alpha"
    assert dict(location.workshops["WKSHP-Alpha"].hooks) == {
        "create": convention / "create.yml",
        "reset": tmp_path / "hooks" / "alpha-reset.yml",
    }
    assert dict(location.workshops["CHLG-Alpha"].hooks) == {
        "create": convention / "create.yml",
        "reset": convention / "reset.yml",
    }
    assert dict(location.workshops["WKSHP-Beta"].hooks) == {}


def test_an_empty_workshops_file_books_nothing(tmp_path: Path) -> None:
    file = stage(tmp_path)
    (tmp_path / "workshops.yaml").write_text("# nothing booked yet\n")

    assert load_location(file).workshops == {}


# --- mistakes: one line naming the file, the key and the reason ---------------------------


@pytest.mark.parametrize("case", sorted((DATA / "bad-location").glob("*.yaml")), ids=lambda case: case.stem)
def test_a_wrong_location_is_refused_in_one_line(case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WODMAIL_TEST_UNSET", raising=False)
    monkeypatch.setenv("WODMAIL_TEST_HUNTER2", "hunter2")
    file = stage(tmp_path, f"bad-location/{case.name}")

    with pytest.raises(ConfigError) as caught:
        load_location(file)

    expected = expected_error(case).replace("{dir}", str(tmp_path))
    assert str(caught.value) == f"{file}: {expected}"
    assert "\n" not in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("case", sorted((DATA / "bad-workshops").glob("*.yaml")), ids=lambda case: case.stem)
def test_a_wrong_workshops_file_is_refused_in_one_line(case: Path, tmp_path: Path) -> None:
    file = stage(tmp_path, "minimal.yaml", f"bad-workshops/{case.name}")

    with pytest.raises(ConfigError) as caught:
        load_location(file)

    expected = expected_error(case).replace("{dir}", str(tmp_path))
    assert str(caught.value) == f"{tmp_path / 'workshops.yaml'}: {expected}"
    assert "\n" not in str(caught.value)


def test_a_missing_location_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_location(tmp_path / "nowhere.yaml")

    assert str(caught.value) == f"{tmp_path / 'nowhere.yaml'}: no such file"


def test_a_password_in_a_wrong_value_is_never_shown(tmp_path: Path) -> None:
    file = stage(tmp_path)
    with file.open("a") as text:
        text.write("APIENDPOINT: https://example.com/api\nAPIUSER: u\nAPIPWD: [hunter2]\n")

    with pytest.raises(ConfigError) as caught:
        load_location(file)

    assert str(caught.value) == f"{file}: APIPWD: expected a string, found a list (quote it)"


# --- the shipped site examples ------------------------------------------------------------


def load_site_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site: str) -> Location:
    """Load locations/<site>.yaml as shipped, with its folders and secrets moved into tmp_path."""
    text = (LOCATIONS / f"{site}.yaml").read_text()
    for key in ("STATEDIR", "STUDENTDIR", "WORKSHOPDIR", "PLAYBOOKDIR", "SKELDIR"):
        folder = tmp_path / key.lower()
        folder.mkdir()
        text = re.sub(rf"^{key}:.*$", f"{key}: {folder}", text, flags=re.MULTILINE)
    for name in re.findall(r"\benv:(\w+)", text):
        monkeypatch.setenv(name, f"secret-{name.lower()}")
    for number, path in enumerate(re.findall(r"\bfile:(\S+)", text)):
        secret = tmp_path / f"secret-{number}"
        secret.write_text(f"secret-from-file-{number}\n")
        text = text.replace(f"file:{path}", f"file:{secret}")
    workshops_name = re.search(r"^WORKSHOPS: (\S+)", text, flags=re.MULTILINE)
    assert workshops_name, f"{site}.yaml names no WORKSHOPS file"
    shutil.copyfile(LOCATIONS / workshops_name.group(1), tmp_path / workshops_name.group(1))
    booked = yaml.safe_load((LOCATIONS / workshops_name.group(1)).read_text())
    for name in booked:
        (tmp_path / "workshopdir" / name.replace("CHLG-", "WKSHP-", 1)).mkdir(exist_ok=True)
    file = tmp_path / f"{site}.yaml"
    file.write_text(text)
    return load_location(file)


@pytest.mark.parametrize("site", ["production", "staging", "sandbox"])
def test_the_site_examples_load(site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    location = load_site_example(tmp_path, monkeypatch, site)

    assert location.name == site
    assert location.values["PBKDIR"] == site
    assert location.hub_url == f"http://{location.values['JPHOST']}:8000"
    assert location.hub_token == "secret-wod_jphubtoken"
    assert location.api_password == "secret-wod_apipwd"
    assert location.api_endpoint is not None and location.api_user is not None
    assert location.peer_is_legacy("192.0.2.10")
    assert location.peer_is_trusted("192.0.2.10")
    # Students have shells on these hosts: only the registration app is trusted.
    assert location.trusted_peers == location.legacy_peers == (IPv4Network("192.0.2.10/32"),)
    assert not location.trust_local and not location.peer_is_trusted("127.0.0.1")
    assert location.sender_is_trusted("wod@example.com")
    assert not location.sender_is_trusted("mallory@example.org")
    assert location.workshops
    for workshop in location.workshops.values():
        assert location.student_min <= workshop.first <= workshop.last <= location.student_max
        assert workshop.content.is_dir()
    if any(workshop.ldap for workshop in location.workshops.values()):
        assert location.values["LDAPBINDPW"] == "secret-from-file-0"
        assert location.values["LDAPBINDDN"] == "cn=wodmail,ou=services,dc=example,dc=com"


# --- the embedded default (last: it needs the shipped sample workshop) --------------------


def test_local_yaml_holds_the_embedded_defaults(tmp_path: Path) -> None:
    for name in ("WKSHP-Sample", "WKSHP-SampleReset"):
        (tmp_path / "workshops" / name).mkdir(parents=True)
    shutil.copyfile(LOCATIONS / "workshops.yaml", tmp_path / "workshops.yaml")
    text = (LOCATIONS / "local.yaml").read_text()
    text = re.sub(r"^WORKSHOPDIR:.*$", "WORKSHOPDIR: workshops", text, flags=re.MULTILINE)
    (tmp_path / "local.yaml").write_text(text)

    location = load_location(tmp_path / "local.yaml")

    assert (location.smtp_host, location.smtp_port, location.legacy_port) == (
        "127.0.0.1",
        8025,
        8026,
    )
    assert location.state_dir == Path("~/.wodmail/state").expanduser()
    assert location.student_dir == Path("~/.wodmail/students").expanduser()
    assert (location.student_min, location.student_max, location.base_stdid) == (1, 100, 0)
    assert location.peer_is_legacy("127.0.0.1") and location.peer_is_legacy("::1")
    assert not location.peer_is_legacy("192.0.2.10")
    assert location.peer_is_trusted("127.0.0.1") and location.trust_local
    assert (location.api_endpoint, location.hub_url, location.ldap_uri) == (None, None, None)
    assert location.template_variables()["BRANDING"] == "Workshops-on-Demand"
    assert location.template_variables()["JPHOSTEXT"] == "localhost"
    sample, challenge, reset = (
        location.workshops[name] for name in ("WKSHP-Sample", "CHLG-Sample", "WKSHP-SampleReset")
    )
    assert (sample.first, sample.last, sample.varpass, sample.reset) == (1, 40, True, False)
    assert (challenge.first, challenge.last, challenge.mode) == (41, 60, "CHLG")
    assert challenge.content == tmp_path / "workshops" / "WKSHP-Sample"
    assert (reset.first, reset.last, reset.varpass, reset.reset) == (61, 80, True, True)


def test_the_embedded_default_loads_with_the_shipped_sample() -> None:
    location = load_location()

    assert location.file == resources.default_location_file()
    assert location.name == "local"
    assert set(location.workshops) == {"WKSHP-Sample", "CHLG-Sample", "WKSHP-SampleReset"}
    for workshop in location.workshops.values():
        assert workshop.content.is_dir()
