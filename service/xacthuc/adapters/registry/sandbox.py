"""A registry of synthetic citizens for development, demos and tests (never production).

Data format: JSON Lines (UTF-8), one citizen per line, exactly these three string fields:

    {"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "date_of_birth": "1985-03-14"}

* `personal_id`: 12 ASCII digits (not re-validated here beyond that; the shipped file is
  checked against `parse_personal_id` by the tests);
* `full_name`: any Unicode spelling; it is compared through `normalize_name`, so NFC and
  NFD spellings, case and extra spaces do not matter, diacritics do;
* `date_of_birth`: ISO 8601 calendar date `YYYY-MM-DD`.

Blank lines are skipped. A number may appear only once. A bad line raises `ValueError`
naming the line number only (never its content).

The shipped `SANDBOX_CITIZENS_PATH` holds about thirty invented people whose numbers are
structurally valid and consistent with their dates of birth (adults of both sexes, children
born 2010-2015, births registered abroad, names with Vietnamese diacritics, one name stored
in NFD). The people are made up; a number may by chance belong to a real citizen, so the
file must never be used to make claims about real people.

Answers follow the port's contract: an unknown number and a mismatching name or date of
birth are both `NO_MATCH`.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from xacthuc.ports.registry import RegistryAnswer, RegistryQuery, normalize_name

__all__ = ["SANDBOX_CITIZENS_PATH", "SandboxRegistry"]

SANDBOX_CITIZENS_PATH = Path(__file__).resolve().parent / "data" / "sandbox_citizens.jsonl"

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_FIELDS = frozenset({"personal_id", "full_name", "date_of_birth"})


class SandboxRegistry:
    """An in-memory `IdentityRegistry` over a fixed set of synthetic citizens."""

    def __init__(self, citizens: Mapping[str, tuple[str, datetime.date]]) -> None:
        # number -> (normalised name, date of birth)
        self._citizens = dict(citizens)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, object]]) -> SandboxRegistry:
        """Build from dicts shaped like the file's lines (see the module doc)."""
        citizens: dict[str, tuple[str, datetime.date]] = {}
        for index, record in enumerate(records, start=1):
            number, name, born = _parse_record(record, index)
            if number in citizens:
                raise ValueError(f"sandbox citizens: record {index} repeats an earlier number")
            citizens[number] = (normalize_name(name), born)
        return cls(citizens)

    @classmethod
    def from_file(cls, path: Path | str = SANDBOX_CITIZENS_PATH) -> SandboxRegistry:
        """Load a JSON Lines file (see the module doc); the default is the shipped file."""
        records: list[Mapping[str, object]] = []
        with Path(path).open(encoding="utf-8") as lines:
            for line_no, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"sandbox citizens: line {line_no} is not JSON") from None
                if not isinstance(record, dict):
                    raise ValueError(f"sandbox citizens: line {line_no} is not a JSON object")
                records.append(record)
        return cls.from_records(records)

    def __len__(self) -> int:
        return len(self._citizens)

    def numbers(self) -> frozenset[str]:
        """The numbers on file (synthetic data; for tests and demos)."""
        return frozenset(self._citizens)

    async def match(self, query: RegistryQuery) -> RegistryAnswer:
        entry = self._citizens.get(query.number)
        if entry is None:
            return RegistryAnswer.NO_MATCH
        name, born = entry
        if name == normalize_name(query.full_name) and born == query.date_of_birth:
            return RegistryAnswer.MATCH
        return RegistryAnswer.NO_MATCH

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"SandboxRegistry({len(self._citizens)} citizens)"


def _parse_record(record: Mapping[str, object], index: int) -> tuple[str, str, datetime.date]:
    if set(record) != _FIELDS:
        raise ValueError(
            f"sandbox citizens: record {index} must have exactly the fields {sorted(_FIELDS)}"
        )
    number, name, born = record["personal_id"], record["full_name"], record["date_of_birth"]
    if not (
        isinstance(number, str) and len(number) == 12 and number.isascii() and number.isdigit()
    ):
        raise ValueError(f"sandbox citizens: record {index} personal_id is not 12 ASCII digits")
    if not (isinstance(name, str) and name.strip()):
        raise ValueError(f"sandbox citizens: record {index} full_name is empty")
    if not isinstance(born, str):
        raise ValueError(f"sandbox citizens: record {index} date_of_birth is not a string")
    try:
        # fromisoformat alone would also take "20240101" and week dates like "2024-W01-1".
        if not _ISO_DATE.fullmatch(born):
            raise ValueError
        date_of_birth = datetime.date.fromisoformat(born)
    except ValueError:
        raise ValueError(
            f"sandbox citizens: record {index} date_of_birth is not YYYY-MM-DD"
        ) from None
    return number, name, date_of_birth
