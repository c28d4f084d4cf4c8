"""wodmail.homes finding the host accounts whose homes it works in: real accounts made with
useradd, the system's own lookups counted (they still answer), nothing of wodmail's replaced."""

from __future__ import annotations

import grp
import logging
import pwd
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.students import make_accounts, remove_accounts, require_root
from wodmail import homes as homes_module
from wodmail.homes import Homes
from wodmail.identity import Identity

STUDENTS = range(7461, 7466)
LATER = 7466  # no account at first, made during the test
TTL = 0.2  # ACCOUNT_TTL, for the tests that wait it out


@pytest.fixture
def accounts() -> Iterator[dict[int, Identity]]:
    require_root()
    everyone = [*STUDENTS, LATER]
    remove_accounts(everyone)
    try:
        made = make_accounts(STUDENTS)
        yield {stdid: Identity(student.uid, student.gid) for stdid, student in made.items()}
    finally:
        remove_accounts(everyone)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the system was asked, by name and for its whole list (the calls go through)."""
    counts: Counter[str] = Counter()

    def counted(module: Any, name: str) -> None:
        real: Callable[..., Any] = getattr(module, name)

        def call(*args: Any) -> Any:
            counts[name] += 1
            return real(*args)

        monkeypatch.setattr(module, name, call)

    for module, name in ((pwd, "getpwnam"), (pwd, "getpwall"), (grp, "getgrgid"), (grp, "getgrall")):
        counted(module, name)
    return counts


def test_a_burst_of_students_lists_the_accounts_once(
    accounts: dict[int, Identity], lookups: Counter[str], tmp_path: Path
) -> None:
    homes = Homes(tmp_path / "students", owner="student")
    for stdid, identity in accounts.items():
        assert homes.identity(stdid) == identity
        assert homes._account_entry(stdid) == (identity, True)  # useradd --user-group: its own group
    assert lookups == Counter(getpwall=1, getgrall=1)

    # No account: the list does not name it, so it is asked for by name, once per ACCOUNT_TTL.
    assert homes.identity(LATER) is None
    assert homes.identity(LATER) is None
    assert lookups == Counter(getpwall=1, getgrall=1, getpwnam=1)

    # Made since (ACCOUNTCREATE tells the homes so): found by name before the next listing.
    made = make_accounts([LATER])[LATER]
    lookups.clear()
    homes.forget_account(LATER)
    assert homes.identity(LATER) == Identity(made.uid, made.gid)
    assert lookups == Counter(getpwnam=1, getgrgid=1)


def test_past_the_ttl_the_accounts_are_listed_again(
    accounts: dict[int, Identity], lookups: Counter[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(homes_module, "ACCOUNT_TTL", TTL)
    homes = Homes(tmp_path / "students", owner="student")
    first = min(accounts)
    assert homes.identity(first) == accounts[first]
    time.sleep(TTL * 1.5)
    for stdid, identity in accounts.items():
        assert homes.identity(stdid) == identity
    assert lookups == Counter(getpwall=2, getgrall=2)


def test_a_slow_listing_is_not_made_again(
    accounts: dict[int, Identity],
    lookups: Counter[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(homes_module, "LISTING_BOUND", 0.0)  # every listing is too slow
    monkeypatch.setattr(homes_module, "ACCOUNT_TTL", TTL)
    homes = Homes(tmp_path / "students", owner="student")
    with caplog.at_level(logging.INFO, logger="wodmail.homes"):
        for stdid, identity in accounts.items():
            assert homes.identity(stdid) == identity  # the one listing still answers
    assert "from now on each student's is asked for by name" in caplog.text
    time.sleep(TTL * 1.5)
    for stdid, identity in accounts.items():
        assert homes._account_entry(stdid) == (identity, True)
    assert lookups["getpwall"] == 1 and lookups["getpwnam"] == len(accounts)
    assert lookups["getgrgid"] == len(accounts)
