"""A registry of synthetic citizens for development, demos and tests (never production).

Data format: JSON Lines (UTF-8), one person per line, these three string fields and an
optional fourth, `id_type`:

    {"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "date_of_birth": "1985-03-14"}
    {"personal_id": "3920071154", "id_type": "foreigner", "full_name": "Tanaka Yuki",
     "date_of_birth": "1988-01-22"}

* `id_type`: `citizen` (the default) or `foreigner` (R9: a foreigner's identification number
  in the e-ID system). A number is looked up among its own kind only: the same digits may be
  a citizen's number and a foreigner's, two different people;
* `personal_id`: for a citizen 12 ASCII digits, for a foreigner 6-20 (not re-validated here
  beyond that; the shipped citizens are checked against `parse_personal_id` by the tests);
* `full_name`: any Unicode spelling; it is compared through `normalize_name`, so NFC and
  NFD spellings, case and extra spaces do not matter, diacritics do;
* `date_of_birth`: ISO 8601 calendar date `YYYY-MM-DD`.

Blank lines are skipped. A number may appear only once per kind. A bad line raises `ValueError`
naming the line number only (never its content).

The shipped `SANDBOX_CITIZENS_PATH` holds about thirty invented citizens whose numbers are
structurally valid and consistent with their dates of birth (adults of both sexes, children
born 2010-2015, births registered abroad, names with Vietnamese diacritics, one name stored
in NFD), and five invented foreigners (adults, a 16-17-year-old, a child under 16, and one
whose number has the same digits as the citizen Nguyễn Văn An's). The people are made up; a number may by chance belong to a real citizen, so the
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
_ID_TYPES = frozenset({"citizen", "foreigner"})
_LENGTHS = {"citizen": range(12, 13), "foreigner": range(6, 21)}


class SandboxRegistry:
    """An in-memory `IdentityRegistry` over a fixed set of synthetic citizens."""

    def __init__(self, citizens: Mapping[tuple[str, str] | str, tuple[str, datetime.date]]) -> None:
        # (id type, number) -> (normalised name, date of birth); a bare number is a citizen's.
        self._citizens = {
            (key if isinstance(key, tuple) else ("citizen", key)): value
            for key, value in citizens.items()
        }

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, object]]) -> SandboxRegistry:
        """Build from dicts shaped like the file's lines (see the module doc)."""
        citizens: dict[tuple[str, str] | str, tuple[str, datetime.date]] = {}
        for index, record in enumerate(records, start=1):
            id_type, number, name, born = _parse_record(record, index)
            if (id_type, number) in citizens:
                raise ValueError(f"sandbox citizens: record {index} repeats an earlier number")
            citizens[(id_type, number)] = (normalize_name(name), born)
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

    def numbers(self, id_type: str = "citizen") -> frozenset[str]:
        """The numbers of one kind on file (synthetic data; for tests and demos)."""
        return frozenset(number for kind, number in self._citizens if kind == id_type)

    async def match(self, query: RegistryQuery) -> RegistryAnswer:
        entry = self._citizens.get((query.id_type, query.number))
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


def _parse_record(record: Mapping[str, object], index: int) -> tuple[str, str, str, datetime.date]:
    if set(record) - {"id_type"} != _FIELDS:
        raise ValueError(
            f"sandbox citizens: record {index} must have exactly the fields {sorted(_FIELDS)}"
            " (and optionally id_type)"
        )
    id_type = record.get("id_type", "citizen")
    if not isinstance(id_type, str) or id_type not in _ID_TYPES:
        raise ValueError(f"sandbox citizens: record {index} id_type is not citizen or foreigner")
    number, name, born = record["personal_id"], record["full_name"], record["date_of_birth"]
    if not (
        isinstance(number, str)
        and len(number) in _LENGTHS[id_type]
        and number.isascii()
        and number.isdigit()
    ):
        expected = "12" if id_type == "citizen" else "6-20"
        raise ValueError(
            f"sandbox citizens: record {index} personal_id is not {expected} ASCII digits"
        )
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
    return id_type, number, name, date_of_birth
