"""wodmail: the mail-driven backend of a Workshops-on-Demand platform."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# The verb modules live in the top-level verbs/ folder of a source checkout, and in
# wodmail/verbs inside the wheel. Letting the package also search the checkout's top level
# makes `wodmail.verbs` import the same way in both.
_here = Path(__file__).resolve().parent
if not (_here / "verbs").is_dir() and (_here.parent / "verbs").is_dir():
    __path__.append(str(_here.parent))
