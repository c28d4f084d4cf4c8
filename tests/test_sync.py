"""`wodmail workshops sync`: what the registration app says against the local workshops file.

The comparison is a pure function (wodmail/sync.py) tested on its own; the command is run
as the operator runs it, against the registration-app stand-in's GET /workshops.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import yaml

from tests.conftest import REPO, Site, with_app
from tests.ports import free_port
from tests.standins import RegistrationApp
from wodmail import sync
from wodmail.location import load_location

HERE = "nb.example.com"  # the Site's JPHOSTEXT: where the app places this backend's workshops
ELSEWHERE = "nb9.example.com"


def app_entry(notebook: str, first: int, last: int, **fields: Any) -> dict[str, Any]:
    """One workshop as wod-api-db lists it (a subset of its columns)."""
    entry: dict[str, Any] = {
        "id": fields.pop("id", None),
        "name": notebook.removeprefix("WKSHP-"),
        "notebook": notebook,
        "capacity": last - first + 1,
        "range": [first, last],
        "reset": False,
        "ldap": False,
        "varpass": False,
        "active": True,
        "location": HERE,
    }
    entry.update(fields)
    return entry


def matching_listing() -> list[dict[str, Any]]:
    """What the app would list if it agreed with the Site's workshops file."""
    return [
        app_entry("WKSHP-Sample", 1, 999, id=3, varpass=True),
        app_entry("CHLG-Sample", 1001, 1100, id=4, varpass=True),
        app_entry("WKSHP-SampleReset", 1101, 1200, id=7, reset=True, varpass=True),
    ]


def run_sync(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wodmail", "--location", str(site.file), "workshops", "sync", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=str(REPO),
    )


# -- the comparison ---------------------------------------------------------------------


def test_compare_names_every_difference(site: Site) -> None:
    location = load_location(site.write())
    listing = sync.parse_listing(
        [
            app_entry("WKSHP-Sample", 1, 40, id=3, varpass=False, ldap=True),  # range and two flags
            app_entry("WKSHP-SampleReset", 1101, 1200, id=8, reset="true", varpass="true"),  # id; flags as text
            app_entry("WKSHP-New", 1201, 1220, id=9, active=False),
            {"id": 10, "notebook": "WKSHP-Broken", "range": "1-3", "reset": "maybe", "location": HERE},
            {"id": 11, "name": "no notebook"},
        ]
    )
    differences = {(d.workshop, d.what): d for d in sync.compare(location.workshops, listing)}
    assert sorted(differences) == [
        ("CHLG-Sample", "missing in the app"),
        ("WKSHP-Broken", "missing locally"),
        ("WKSHP-New", "missing locally"),
        ("WKSHP-Sample", "id"),
        ("WKSHP-Sample", "ldap"),
        ("WKSHP-Sample", "range"),
        ("WKSHP-Sample", "varpass"),
        ("WKSHP-SampleReset", "id"),
    ]
    assert str(differences["WKSHP-Sample", "range"]) == "WKSHP-Sample: range: local 1..999, app 1..40"
    assert str(differences["WKSHP-Sample", "varpass"]) == "WKSHP-Sample: varpass: local true, app false"
    assert str(differences["WKSHP-Sample", "id"]) == "WKSHP-Sample: id: local none, app 3"
    assert str(differences["WKSHP-SampleReset", "id"]) == "WKSHP-SampleReset: id: local 7, app 8"
    assert "id 9, range 1201..1220, inactive" in str(differences["WKSHP-New", "missing locally"])
    assert "range 1001..1100" in str(differences["CHLG-Sample", "missing in the app"])
    assert "range unreadable" in str(differences["WKSHP-Broken", "missing locally"])


def test_compare_reports_unreadable_and_doubled_entries(site: Site) -> None:
    location = load_location(site.write())
    listing = sync.parse_listing(
        [
            *matching_listing()[1:],
            {"id": 3, "notebook": "WKSHP-Sample", "range": [1, "x"], "varpass": "yes"},
        ]
    )
    mine = [d for d in sync.compare(location.workshops, listing) if d.workshop == "WKSHP-Sample"]
    assert [d.what for d in mine] == ["unreadable", "id"]  # neither the range nor varpass is compared
    unreadable = mine[0]
    assert "varpass is 'yes'" in unreadable.app and "range is [1, 'x']" in unreadable.app

    doubled = sync.parse_listing([*matching_listing(), app_entry("CHLG-Sample", 1001, 1100, id=44)])
    (twice,) = [d for d in sync.compare(location.workshops, doubled) if d.workshop == "CHLG-Sample"]
    assert (twice.workshop, twice.what) == ("CHLG-Sample", "listed twice") and "ids 4, 44" in twice.app


def test_no_difference_when_the_app_agrees(site: Site) -> None:
    location = load_location(site.write())
    # An id the file does not give is a difference too: the file may add it.
    assert sync.compare(location.workshops, sync.parse_listing(matching_listing())) == [
        sync.Difference("CHLG-Sample", "id", "none", "4"),
        sync.Difference("WKSHP-Sample", "id", "none", "3"),
    ]
    site.workshops["WKSHP-Sample"]["id"] = 3
    site.workshops["CHLG-Sample"]["id"] = 4
    location = load_location(site.write())
    assert sync.compare(location.workshops, sync.parse_listing(matching_listing())) == []


def test_for_backend_keeps_this_backends_workshops() -> None:
    listing = sync.parse_listing(
        [app_entry("WKSHP-Sample", 1, 999), app_entry("WKSHP-Other", 1, 50, location=ELSEWHERE)]
    )
    kept, note = sync.for_backend(listing, [HERE, "jupyter.example.com"])
    assert [item.notebook for item in kept] == ["WKSHP-Sample"] and "1 of the app's 2" in note
    kept, note = sync.for_backend(listing, None)
    assert len(kept) == 2
    kept, note = sync.for_backend(listing, ["nowhere.example.com"])
    assert kept == [] and ELSEWHERE in note and HERE in note
    unplaced = sync.parse_listing([{"notebook": "WKSHP-Sample", "range": [1, 2]}])
    kept, note = sync.for_backend(unplaced, [HERE])
    assert len(kept) == 1 and "none names its location" in note


def test_propose_keeps_local_settings_and_takes_the_apps() -> None:
    raw: dict[str, dict[str, Any]] = {
        "WKSHP-Sample": {"range": [1, 999], "varpass": True, "hooks": {"create": "x.yml"}, "variables": {"A": 1}},
        "CHLG-Sample": {"range": [1001, 1100]},
    }
    listing = sync.parse_listing(
        [
            app_entry("WKSHP-Sample", 1, 40, id=3, varpass=False, ldap=True),
            app_entry("WKSHP-New", 1201, 1220, id=9, reset=True),
        ]
    )
    proposed = sync.propose(raw, listing)
    assert proposed == {
        "WKSHP-Sample": {
            "range": [1, 40],
            "ldap": True,
            "varpass": False,
            "id": 3,
            "hooks": {"create": "x.yml"},
            "variables": {"A": 1},
        },
        "CHLG-Sample": {"range": [1001, 1100]},
        "WKSHP-New": {"range": [1201, 1220], "reset": True, "id": 9},
    }
    assert raw["WKSHP-Sample"]["range"] == [1, 999], "propose must not change what it was given"


# -- the command --------------------------------------------------------------------------


def test_sync_shows_the_differences_and_leaves_the_file_alone(site: Site) -> None:
    listing = [
        app_entry("WKSHP-Sample", 1, 40, id=3, varpass=True),
        app_entry("CHLG-Sample", 1001, 1100, id=4, ldap=False, varpass=True),
        app_entry("WKSHP-SampleReset", 1101, 1200, id=7, reset=True, varpass=True),
        app_entry("WKSHP-Other", 1, 50, id=12, location=ELSEWHERE),  # another backend's
    ]
    with RegistrationApp(workshops=listing) as app:
        with_app(site, app)
        site.write()
        before = site.workshops_file.read_bytes()
        result = run_sync(site)
        assert app.logins == 1
        assert [call.path for call in app.calls] == ["/login", "/workshops"]
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert f"3 of the app's 4 workshops, those located on jupyter.example.com, {HERE}" in out
    assert "WKSHP-Sample: range: local 1..999, app 1..40" in out
    assert "WKSHP-Sample: id: local none, app 3" in out
    assert "CHLG-Sample: id: local none, app 4" in out
    assert "WKSHP-Other" not in out
    assert "3 difference(s)" in out and "is unchanged" in out
    assert site.workshops_file.read_bytes() == before
    assert app.password not in out + result.stderr


def test_sync_writes_a_proposal_elsewhere_that_then_agrees(site: Site) -> None:
    listing = [
        app_entry("WKSHP-Sample", 1, 40, id=3, varpass=True),
        app_entry("CHLG-Sample", 1001, 1100, id=4),
        app_entry("WKSHP-SampleReset", 1101, 1150, id=7, reset=True, varpass=True, ldap=False),
    ]
    with RegistrationApp(workshops=listing) as app:
        with_app(site, app)
        site.write()
        before = site.workshops_file.read_bytes()
        proposal = site.root / "proposed.yaml"
        result = run_sync(site, "--write", str(proposal))
        assert result.returncode == 1, result.stderr
        assert f"proposed workshops file written to {proposal}" in result.stdout
        assert site.workshops_file.read_bytes() == before
        text = proposal.read_text()
        assert text.startswith("# proposed by `wodmail workshops sync`")
        assert yaml.safe_load(text)["WKSHP-SampleReset"] == {
            "range": [1101, 1150],
            "reset": True,
            "varpass": True,
            "id": 7,
        }

        # The operator reviews it and puts it in place: now the two agree.
        site.workshops_file.write_text(text)
        again = run_sync(site)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "0 difference(s)" in again.stdout

        refused = run_sync(site, "--write", str(site.workshops_file))
        assert refused.returncode == 65 and "another file than the workshops file" in refused.stderr
        assert site.workshops_file.read_text() == text


def test_sync_without_an_app_or_with_an_app_down(site: Site) -> None:
    site.write()
    result = run_sync(site)
    assert result.returncode == 78 and "APIENDPOINT" in result.stderr

    site.values.update(APIENDPOINT=f"http://127.0.0.1:{free_port()}/api", APIUSER="wod", APIPWD="pw-never-shown")
    site.write()
    result = run_sync(site)
    assert result.returncode == 75, result.stdout + result.stderr
    assert "cannot read" in result.stderr and "/workshops" in result.stderr
    assert "pw-never-shown" not in result.stdout + result.stderr
