"""The standard door reads MAIL FROM / RCPT TO paths exactly as aiosmtpd does.

`_LimitedSMTP._getaddr` answers plain `<a@b> params` itself (aiosmtpd's RFC 5322 parser
cost a third of a mail's time at the door); whatever it answers must be what aiosmtpd's own
`SMTP._getaddr` answers, for any argument, including every one it hands back to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from wodmail.smtp import SmtpLimits, _LimitedSMTP, _PeerCounter

# Characters that matter to the path grammar: atext, specials, quotes, comments, spaces.
ALPHABET = "aZ09.@<>[]()\"\\ \t:;,!#$%&'*+/=?^_`{|}~-é"


@pytest.fixture(scope="module")
def door() -> Iterator[_LimitedSMTP]:
    loop = asyncio.new_event_loop()
    try:
        yield _LimitedSMTP(object(), peers=_PeerCounter(SmtpLimits()), session_timeout=60, loop=loop)
    finally:
        loop.close()


SAMPLES = [
    "<a@b>",
    "<a@b> SIZE=1",
    "  <a.b@c.d>  BODY=8BITMIME  ",
    "<a@b>\tX",
    "<a@b>X",
    "<>",
    "a@b",
    "<a@[1.2.3.4]>",
    "<a..b@c>",
    '<"q"@b>',
    "<a@b.>",
    " <a@b>(comment) X",
    "<A+x@B-c.D>",
    "<" + "l" * 70 + "@example.com>",
]


@pytest.mark.parametrize("arg", SAMPLES)
def test_plain_and_odd_paths_read_as_aiosmtpd_reads_them(door: _LimitedSMTP, arg: str) -> None:
    assert door._getaddr(arg) == SMTP._getaddr(door, arg)


def test_the_local_part_limit_still_holds(door: _LimitedSMTP) -> None:
    door.local_part_limit = 64
    try:
        arg = "<" + "l" * 65 + "@example.com>"
        assert door._getaddr(arg) == (None, None) == SMTP._getaddr(door, arg)
    finally:
        door.local_part_limit = 0


@settings(max_examples=3000, derandomize=True, database=None)
@given(
    st.one_of(
        st.text(alphabet=ALPHABET, max_size=40),
        st.builds(
            lambda lead, local, domain, tail: f"{lead}<{local}@{domain}>{tail}",
            st.text(alphabet=" \t", max_size=2),
            st.text(alphabet=ALPHABET, min_size=1, max_size=12),
            st.text(alphabet=ALPHABET, min_size=1, max_size=12),
            st.text(alphabet=ALPHABET, max_size=12),
        ),
    )
)
def test_any_path_reads_as_aiosmtpd_reads_it(door: _LimitedSMTP, arg: str) -> None:
    assert outcome(door._getaddr, arg) == outcome(lambda a: SMTP._getaddr(door, a), arg)


def outcome(getaddr: Callable[[str], object], arg: str) -> object:
    """What `getaddr` answers, or the type of what it raises (aiosmtpd raises IndexError on
    a lone "<", and its session answers 500 for it: the same must happen)."""
    try:
        return getaddr(arg)
    except Exception as exc:  # noqa: BLE001
        return type(exc)
