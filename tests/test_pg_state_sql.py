"""Migration 0002's plpgsql building blocks agree with the Python they mirror: the
status-index permutation (status_index.py) over many counters and block sizes, audit
records rendered byte for byte as audit_record() renders them (Unicode accounts, extras,
"" extras left out, integers bare), and the record format version. Against a real
PostgreSQL (the session's database)."""

from __future__ import annotations

import json
import random

import pytest

from xacthuc.adapters.store.pg_state import time_j
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.records import AUDIT_FORMAT_VERSION, audit_record
from xacthuc.domain.status_index import permuted_index

T0 = 1_764_403_200.1234


@pytest.mark.parametrize("block", [8, 16, 64, 1024, 131072])
async def test_the_status_index_permutation_is_status_index_py(
    database: Database, block: int
) -> None:
    rng = random.Random(block)
    key = f"{rng.getrandbits(256):064x}"
    counters = [*range(40), *(rng.randrange(0, 10**7) for _ in range(40))]
    async with database.connection() as conn:
        got = await conn.fetch(
            "SELECT c, xacthuc_permuted_index($1, c, $2) AS i FROM unnest($3::bigint[]) AS c",
            key,
            block,
            counters,
        )
    assert [permuted_index(key, c, block) for c in counters] == [r["i"] for r in got]


async def test_a_block_is_a_permutation_of_itself(database: Database) -> None:
    key = "a7" * 32
    async with database.connection() as conn:
        got = await conn.fetch(
            "SELECT xacthuc_permuted_index($1, c, 64) AS i FROM generate_series(128, 191) c", key
        )
    assert list(range(128, 192)) == sorted(r["i"] for r in got)


@pytest.mark.parametrize(
    "account", ["acc-1", 'tài khoản 😀 "q"\n\\/', "", "\u0001\u007f\u00ff\ud7ff\ue000\U0010ffff"]
)
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"token_id": "tok_x", "status_idx": 5, "phone": ""},
        {"zz": "ü", "attempts_remaining": 0, "aa": "ph_0a"},
        {"commercial_livestream": 1, "expires": 1_800_000_000, "reason_x": "tiếng việt"},
    ],
)
async def test_records_are_rendered_as_audit_record_renders_them(
    database: Database, account: str, extra: dict[str, str | int]
) -> None:
    async with database.connection() as conn:
        idx = await conn.fetchval(
            "SELECT xacthuc_audit($1, $2, $3, $4, $5, $6, $7::jsonb)",
            "pl",
            time_j(T0),
            account,
            "ev",
            "ok",
            "R",
            json.dumps(extra),
        )
        body = await conn.fetchval(
            "SELECT body FROM audit_records WHERE platform = 'pl' AND idx = $1", idx
        )
    want = audit_record(
        seq=idx,
        now=T0,
        platform="pl",
        account=account,
        event="ev",
        outcome="ok",
        reason="R",
        **extra,
    )
    assert want == body


async def test_the_record_format_version_is_records_py(database: Database) -> None:
    async with database.connection() as conn:
        assert AUDIT_FORMAT_VERSION == await conn.fetchval("SELECT xacthuc_audit_version()")


async def test_the_json_of_a_string_is_json_dumps(database: Database) -> None:
    texts = ["", "plain", 'q"\\/\b\f\n\r\t', "\u0000x", "ü😀\U0001f600\u2028", "\x7f\x80"]
    async with database.connection() as conn:
        got = await conn.fetch(
            "SELECT xacthuc_json(t) AS j FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n)"
            " ORDER BY n",
            [t for t in texts if "\u0000" not in t],
        )
    assert [json.dumps(t) for t in texts if "\u0000" not in t] == [r["j"] for r in got]
