"""README's settings tables name exactly the settings there are, with their true defaults."""

from __future__ import annotations

import re
from pathlib import Path

from xacthuc.server.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def _rows(readme: str) -> list[tuple[list[str], str]]:
    """(names, default cell) of every README table row that documents settings."""
    rows = []
    for line in readme.splitlines():
        if line.startswith("| `XACTHUC_"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append((re.findall(r"`XACTHUC_([A-Z0-9_]+)`", cells[0]), cells[1]))
    return rows


def _shown(value: object) -> str:
    """A default as README writes it: `true`, `60`, `json`."""
    value = getattr(value, "value", value)  # an enum member
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_is_documented_and_every_documented_one_exists() -> None:
    named = {name.lower() for names, _ in _rows((ROOT / "README.md").read_text()) for name in names}
    assert named == set(Settings.model_fields), named ^ set(Settings.model_fields)


def test_the_documented_defaults_are_the_defaults() -> None:
    checked = 0
    for names, default in _rows((ROOT / "README.md").read_text()):
        literal = re.fullmatch(r"`([^`]*)`", default)
        if literal is None or len(names) != 1:
            continue  # "unset", "generated (dev)", a row of several settings: prose
        field = Settings.model_fields[names[0].lower()]
        assert _shown(field.default) == literal.group(1), f"XACTHUC_{names[0]}"
        checked += 1
    assert checked > 40  # the tables were found
