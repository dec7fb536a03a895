"""Synthetic citizens for the VerifyPersonalId phase: a temporary sandbox registry file.

The benchmark's xacthuc server runs in dev mode, whose identity registry is the in-process
`SandboxRegistry`; its `registry_sandbox_file` setting points it at a JSON Lines file of
`{"personal_id", "full_name", "date_of_birth"}` (see `xacthuc.adapters.registry.sandbox`).
The shipped file holds about thirty people, and the service limits attempts per number, so
the benchmark writes its own file of many made-up people and verifies each once.

Every number is structurally valid (`xacthuc.domain.personal_id`): a province code from
`PROVINCE_CODES`, the century/sex digit and two-digit year of the declared date of birth,
then six random digits. Everyone is born 1960-2000, so an adult. The people are invented
(a fixed seed makes the file the same on every run); a number may by chance be a real
citizen's, which is why the file is temporary and never leaves the benchmark.
"""

from __future__ import annotations

import datetime
import json
import random
from dataclasses import dataclass
from pathlib import Path

from xacthuc.domain.personal_id import PROVINCE_CODES

FIRST_YEAR, LAST_YEAR = 1960, 2000  # adults, of both centuries' digits (19xx and 2000)

_FAMILY = (
    "Nguyễn",
    "Trần",
    "Lê",
    "Phạm",
    "Hoàng",
    "Huỳnh",
    "Phan",
    "Vũ",
    "Võ",
    "Đặng",
    "Bùi",
    "Đỗ",
    "Hồ",
    "Ngô",
    "Dương",
    "Lý",
)
_MIDDLE = {
    False: ("Văn", "Đức", "Minh", "Quang", "Hữu", "Thành"),
    True: ("Thị", "Ngọc", "Thu", "Thanh", "Mai", "Kim"),
}
_GIVEN = {
    False: (
        "An",
        "Bình",
        "Cường",
        "Dũng",
        "Hùng",
        "Khoa",
        "Long",
        "Nam",
        "Phúc",
        "Quân",
        "Sơn",
        "Tuấn",
        "Việt",
    ),
    True: (
        "Anh",
        "Chi",
        "Dung",
        "Hà",
        "Hằng",
        "Hương",
        "Lan",
        "Linh",
        "Ngân",
        "Oanh",
        "Phương",
        "Trang",
        "Yến",
    ),
}


@dataclass(frozen=True, slots=True)
class Citizen:
    personal_id: str
    full_name: str
    date_of_birth: datetime.date


def make_citizens(count: int, seed: int = 2026) -> list[Citizen]:
    """`count` distinct synthetic adults with structurally valid numbers."""
    rng = random.Random(seed)
    provinces = sorted(PROVINCE_CODES)
    seen: set[str] = set()
    people: list[Citizen] = []
    while len(people) < count:
        year = rng.randint(FIRST_YEAR, LAST_YEAR)
        female = rng.random() < 0.5
        century_sex = 2 * (year // 100 - 19) + female  # DOMAIN C: odd = female
        number = f"{rng.choice(provinces)}{century_sex}{year % 100:02d}{rng.randrange(10**6):06d}"
        if number in seen:
            continue
        seen.add(number)
        days = (datetime.date(year + 1, 1, 1) - datetime.date(year, 1, 1)).days
        born = datetime.date(year, 1, 1) + datetime.timedelta(days=rng.randrange(days))
        name = f"{rng.choice(_FAMILY)} {rng.choice(_MIDDLE[female])} {rng.choice(_GIVEN[female])}"
        people.append(Citizen(number, name, born))
    return people


def write_citizens(path: Path, people: list[Citizen]) -> None:
    """The sandbox registry's JSON Lines format."""
    with path.open("w", encoding="utf-8") as f:
        for p in people:
            f.write(
                json.dumps(
                    {
                        "personal_id": p.personal_id,
                        "full_name": p.full_name,
                        "date_of_birth": p.date_of_birth.isoformat(),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
