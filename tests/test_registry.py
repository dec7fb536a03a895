"""The identity-registry port: name comparison, the sandbox registry and its shipped data."""

from __future__ import annotations

import datetime
import json
import unicodedata
from pathlib import Path

import pytest

from xacthuc.adapters.registry.sandbox import SANDBOX_CITIZENS_PATH, SandboxRegistry
from xacthuc.domain.personal_id import COUNTRY_CODES, Sex, parse_personal_id
from xacthuc.ports.registry import (
    IdentityRegistry,
    RegistryAnswer,
    RegistryQuery,
    clean_name,
    normalize_name,
)

D = datetime.date
TODAY = datetime.date(2025, 6, 15)

AN = {"personal_id": "001085336181", "full_name": "Nguyễn Văn An", "date_of_birth": "1985-03-14"}
HA = {"personal_id": "079195518144", "full_name": "Phạm Thị Thu Hà", "date_of_birth": "1995-01-30"}


def shipped_all() -> list[dict[str, str]]:
    lines = SANDBOX_CITIZENS_PATH.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def shipped_records() -> list[dict[str, str]]:
    """The shipped citizens (records without `id_type` or with `citizen`)."""
    return [r for r in shipped_all() if r.get("id_type", "citizen") == "citizen"]


def shipped_foreigners() -> list[dict[str, str]]:
    return [r for r in shipped_all() if r.get("id_type") == "foreigner"]


def age_on(born: datetime.date, day: datetime.date) -> int:
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


@pytest.fixture
def sandbox() -> SandboxRegistry:
    return SandboxRegistry.from_records([AN, HA])


# --- normalize_name ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Nguyễn Văn An", "NGUYỄN VĂN AN"),  # case
        ("Nguyễn Văn An", "nguyễn văn an"),
        ("Nguyễn Văn An", "  Nguyễn   Văn\tAn \n"),  # extra and odd whitespace
        ("Nguyễn Văn An", "Nguyễn\u00a0Văn An"),  # no-break space
        ("Nguyễn Văn An", unicodedata.normalize("NFD", "Nguyễn Văn An")),  # NFC vs NFD
        ("Đặng Quốc Bảo", unicodedata.normalize("NFD", "đặng quốc bảo")),
    ],
)
def test_normalize_name_equal_spellings(left: str, right: str) -> None:
    """Case, whitespace runs and NFC/NFD composition do not change the comparison key."""
    assert normalize_name(left) == normalize_name(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Nguyễn Văn An", "Nguyen Van An"),  # diacritics removed
        ("Nguyễn Văn An", "Nguyễn Văn Ân"),  # a different diacritic
        ("Đặng Quốc Bảo", "Dang Quoc Bao"),  # đ is not d
        ("Hồ Thị Mỹ Linh", "Hồ Thị Mỹlinh"),  # words run together
    ],
)
def test_normalize_name_keeps_diacritics(left: str, right: str) -> None:
    """Names that differ in diacritics or words stay different ("Nguyễn" != "Nguyen")."""
    assert normalize_name(left) != normalize_name(right)


def test_normalize_name_output_form() -> None:
    """The key is NFC, casefolded, single-spaced and trimmed."""
    key = normalize_name(unicodedata.normalize("NFD", "  NGUYỄN  Văn   AN "))

    assert "nguyễn văn an" == key
    assert True is unicodedata.is_normalized("NFC", key)


def test_clean_name_keeps_case_and_diacritics() -> None:
    """clean_name (the wire form) is NFC and single-spaced but keeps case and diacritics."""
    assert "Nguyễn Văn An" == clean_name(unicodedata.normalize("NFD", " Nguyễn  Văn An "))


# --- the port ----------------------------------------------------------------------------


def test_registry_answers_are_the_wire_strings() -> None:
    """MATCH and NO_MATCH are the strings "match" and "no_match"."""
    assert ["match", "no_match"] == [str(a) for a in RegistryAnswer]


def test_query_repr_is_redacted() -> None:
    """repr() and str() of a query show no number, name or date of birth."""
    query = RegistryQuery("001085336181", "Nguyễn Văn An", D(1985, 3, 14))

    assert "RegistryQuery(<redacted>)" == repr(query)
    assert "RegistryQuery(<redacted>)" == str(query)
    assert "RegistryQuery(<redacted>)" == f"{query}"


def test_sandbox_satisfies_the_port(sandbox: SandboxRegistry) -> None:
    """SandboxRegistry is usable where an IdentityRegistry is expected."""
    registry: IdentityRegistry = sandbox

    assert sandbox is registry


# --- the sandbox -------------------------------------------------------------------------


async def test_sandbox_match(sandbox: SandboxRegistry) -> None:
    """The exact number, name and date of birth on file is MATCH."""
    query = RegistryQuery("001085336181", "Nguyễn Văn An", D(1985, 3, 14))

    assert RegistryAnswer.MATCH == await sandbox.match(query)


async def test_sandbox_match_ignores_case_spaces_and_composition(
    sandbox: SandboxRegistry,
) -> None:
    """The name is compared through normalize_name: case, spaces and NFD do not matter."""
    name = unicodedata.normalize("NFD", "  PHẠM thị  THU hà ")
    query = RegistryQuery("079195518144", name, D(1995, 1, 30))

    assert RegistryAnswer.MATCH == await sandbox.match(query)


@pytest.mark.parametrize(
    ("number", "name", "dob"),
    [
        ("001085336181", "Nguyen Van An", D(1985, 3, 14)),  # name without diacritics
        ("001085336181", "Nguyễn Văn Anh", D(1985, 3, 14)),  # another name
        ("001085336181", "Nguyễn Văn An", D(1985, 3, 15)),  # another date
        ("001085336181", "Phạm Thị Thu Hà", D(1995, 1, 30)),  # another person's details
        ("001085999999", "Nguyễn Văn An", D(1985, 3, 14)),  # unknown number
    ],
)
async def test_sandbox_no_match_and_unknown_number_are_the_same(
    sandbox: SandboxRegistry, number: str, name: str, dob: datetime.date
) -> None:
    """A mismatching name or date and an unknown number all give NO_MATCH (no oracle)."""
    assert RegistryAnswer.NO_MATCH == await sandbox.match(RegistryQuery(number, name, dob))


async def test_sandbox_aclose_is_harmless(sandbox: SandboxRegistry) -> None:
    """aclose() does nothing and the sandbox still answers."""
    await sandbox.aclose()

    query = RegistryQuery("001085336181", "Nguyễn Văn An", D(1985, 3, 14))
    assert RegistryAnswer.MATCH == await sandbox.match(query)


def test_sandbox_repr_shows_only_the_count(sandbox: SandboxRegistry) -> None:
    """repr() of the sandbox names its size, not its citizens."""
    assert "SandboxRegistry(2 citizens)" == repr(sandbox)


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({**AN, "sex": "male"}, "exactly the fields"),
        ({"personal_id": "001085336181", "full_name": "An"}, "exactly the fields"),
        ({**AN, "personal_id": "00108533618"}, "personal_id"),
        ({**AN, "personal_id": "٠٠١٠٨٥٣٣٦١٨١"}, "personal_id"),
        ({**AN, "full_name": "   "}, "full_name"),
        ({**AN, "date_of_birth": "14/03/1985"}, "date_of_birth"),
        ({**AN, "date_of_birth": "19850314"}, "date_of_birth"),
        ({**AN, "date_of_birth": "1985-02-30"}, "date_of_birth"),
        ({**AN, "date_of_birth": 19850314}, "date_of_birth"),
    ],
)
def test_sandbox_rejects_bad_records_without_echoing_them(
    record: dict[str, object], problem: str
) -> None:
    """A bad record fails with ValueError naming the record index and field, not the value."""
    with pytest.raises(ValueError, match=problem) as caught:
        SandboxRegistry.from_records([HA, record])

    assert "record 2" in str(caught.value)
    assert [] == [v for v in record.values() if str(v) in str(caught.value)]


def test_sandbox_rejects_a_repeated_number() -> None:
    """The same number twice is a data error."""
    with pytest.raises(ValueError, match="repeats"):
        SandboxRegistry.from_records([AN, {**AN, "full_name": "Someone Else"}])


def test_sandbox_file_errors_name_the_line(tmp_path: Path) -> None:
    """A non-JSON line is reported by line number; blank lines are skipped."""
    path = tmp_path / "citizens.jsonl"
    path.write_text(json.dumps(AN) + "\n\n" + "not json 001085336181\n", encoding="utf-8")

    with pytest.raises(ValueError, match="line 3 is not JSON") as caught:
        SandboxRegistry.from_file(path)

    assert "001085336181" not in str(caught.value)


async def test_sandbox_from_file_with_own_data(tmp_path: Path) -> None:
    """from_file reads any JSON Lines file in the documented format."""
    path = tmp_path / "citizens.jsonl"
    path.write_text(json.dumps(AN, ensure_ascii=False) + "\n", encoding="utf-8")
    registry = SandboxRegistry.from_file(path)

    query = RegistryQuery("001085336181", "Nguyễn Văn An", D(1985, 3, 14))
    assert 1 == len(registry)
    assert RegistryAnswer.MATCH == await registry.match(query)


# --- the shipped data file ---------------------------------------------------------------


def test_shipped_file_loads() -> None:
    """The shipped file holds about thirty citizens and five foreigners; it loads by default."""
    registry = SandboxRegistry.from_file()

    assert len(shipped_all()) == len(registry)
    assert True is (25 <= len(shipped_records()) <= 40)
    assert 5 == len(shipped_foreigners())


def test_every_shipped_citizen_passes_structural_validation() -> None:
    """Each shipped number is structurally valid and consistent with its own DOB."""
    failures = []
    for record in shipped_records():
        born = D.fromisoformat(record["date_of_birth"])
        try:
            parse_personal_id(record["personal_id"], date_of_birth=born, sex=None, today=TODAY)
        except Exception as exc:
            failures.append((record["full_name"], repr(exc)))

    assert [] == failures


def test_shipped_file_covers_the_required_cases() -> None:
    """Adults of both sexes, under-16 children, a birth abroad and an NFD-stored name."""
    parsed = []
    for record in shipped_records():
        born = D.fromisoformat(record["date_of_birth"])
        number = parse_personal_id(record["personal_id"], date_of_birth=born, sex=None, today=TODAY)
        parsed.append((record, born, number))

    adults = [(b, n.sex) for _, b, n in parsed if age_on(b, TODAY) >= 18]
    children = [b for _, b, _ in parsed if 2010 <= b.year <= 2015]
    assert {Sex.MALE, Sex.FEMALE} == {sex for _, sex in adults}
    assert True is all(1950 <= b.year <= 2005 for b, _ in adults)
    assert True is (len(children) >= 3)
    assert True is all(age_on(b, TODAY) < 16 for b in children)
    assert True is any(n.born_abroad and n.place_code in COUNTRY_CODES for _, _, n in parsed)
    names = [r["full_name"] for r, _, _ in parsed]
    assert True is any(not unicodedata.is_normalized("NFC", name) for name in names)
    assert True is any(not name.isascii() for name in names)


async def test_every_shipped_citizen_matches_itself() -> None:
    """Each shipped citizen is MATCH with their own details, even typed in NFC upper case."""
    registry = SandboxRegistry.from_file()
    answers = set()
    for record in shipped_records():
        name = unicodedata.normalize("NFC", record["full_name"]).upper()
        query = RegistryQuery(record["personal_id"], name, D.fromisoformat(record["date_of_birth"]))
        answers.add(await registry.match(query))

    assert {RegistryAnswer.MATCH} == answers


# --- foreigners (R9) ----------------------------------------------------------------------


async def test_every_shipped_foreigner_matches_only_as_a_foreigner() -> None:
    """Each shipped foreigner is MATCH with id_type foreigner and NO_MATCH as a citizen; the
    foreigner whose digits equal the citizen An's is a different person (kinds are apart)."""
    registry = SandboxRegistry.from_file()
    as_foreigner, as_citizen = set(), set()
    for record in shipped_foreigners():
        born = D.fromisoformat(record["date_of_birth"])
        number, name = record["personal_id"], record["full_name"]
        as_foreigner.add(await registry.match(RegistryQuery(number, name, born, "foreigner")))
        as_citizen.add(await registry.match(RegistryQuery(number, name, born, "citizen")))
    assert ({RegistryAnswer.MATCH}, {RegistryAnswer.NO_MATCH}) == (as_foreigner, as_citizen)
    an = RegistryQuery(AN["personal_id"], AN["full_name"], D(1985, 3, 14), "foreigner")
    assert RegistryAnswer.NO_MATCH == await registry.match(an)
    assert AN["personal_id"] in registry.numbers("foreigner") & registry.numbers("citizen")


def test_shipped_foreigners_cover_the_age_cases() -> None:
    """Adults, one aged 16-17 and one child under 16 on the integration tests' date."""
    day = D(2027, 1, 15)
    ages = sorted(age_on(D.fromisoformat(r["date_of_birth"]), day) for r in shipped_foreigners())
    assert (True, True, True) == (ages[0] < 16, any(16 <= a < 18 for a in ages), ages[-1] >= 18)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({**AN, "id_type": "tourist"}, "id_type"),
        ({**AN, "id_type": "foreigner", "personal_id": "12345"}, "6-20 ASCII digits"),
        ({**AN, "id_type": "foreigner", "personal_id": "1" * 21}, "6-20 ASCII digits"),
        ({**AN, "id_type": "foreigner", "personal_id": "12345x"}, "6-20 ASCII digits"),
        ({**AN, "personal_id": "1234567890"}, "12 ASCII digits"),
    ],
)
def test_sandbox_checks_the_form_of_each_kind(record: dict[str, str], message: str) -> None:
    """A foreigner's number is 6-20 ASCII digits, a citizen's 12; the type is one of two."""
    with pytest.raises(ValueError, match=message):
        SandboxRegistry.from_records([record])
