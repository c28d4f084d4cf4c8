"""Where the product's own folders are: verbs/, templates/, locations/, playbooks/.

In a source checkout they sit beside the `wodmail` package (the layout DESIGN.md fixes);
the wheel carries them inside it. Both resolve here, and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def product_path(folder: str) -> Path:
    """The shipped folder `folder` (templates, locations, playbooks, verbs)."""
    inside = PACKAGE_DIR / folder
    if inside.is_dir():
        return inside
    return PACKAGE_DIR.parent / folder


def default_location_file() -> Path:
    """The embedded default location: locations/local.yaml."""
    return product_path("locations") / "local.yaml"
