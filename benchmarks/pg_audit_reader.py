"""The audit log's reader side from PostgreSQL (issue 10): what a proof, a query, an export
and a report cost on a big log, and what a fresh process paid before.

    .venv/bin/python benchmarks/pg_audit_reader.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
        [--records 1000000]

Creates a scratch database on the server at --url (dropped at the end), applies the
migrations and fills one platform's log with --records records (in SQL: each with its
leaf hash, an account among records/20, one event in 1000 `rare`, one record a second),
then measures:

1. `PostgresMerkle.extend` over the whole log (once, by whichever process comes first;
   after that each extension reads only the new leaf hashes);
2. a fresh process (`PostgresLogReader`, nothing cached): inclusion and consistency proofs
   for the full tree size, per proof, and the stored hashes each reads;
3. `QueryAuditRecords`' query (page of 100): by account, by a rare event deep in the log,
   by a one-hour window;
4. the export of the whole log through `AuditLog.export` (server-side cursor): time and the
   process's peak memory growth (ru_maxrss);
5. a report over one day (`AuditLog.report`): time and records read;
6. for comparison, what a fresh process did before (the in-process tree over the records:
   `StoreLogReader` over `PostgresAuditLog.audit_records`): time to its first proof.

Measured on the 2-core development machine (shared with other work, so the ranges of two
runs are wide), PostgreSQL 15 on loopback, 1,000,000 records, 2026-12-01:

    extend over the whole log, once (then only new leaves)    15-26 s
    sign a checkpoint (nothing new to extend; the root)        10-39 ms
    fresh process, inclusion proof at size 10^6                2.0-2.6 ms, 24 hashes, 0 records
    fresh process, consistency proof                           1.3-1.5 ms, 24 hashes, 0 records
    query, page of 100: by account / rare event / one hour     2-11 / 2-6 / 2.5-5 ms
    export of the whole log (cursor)                           13-28 s, peak RSS +0-0.3 MiB
    report over one day (86,400 records read of 10^6)          1.8-2.9 s
    before: a fresh process's first proof (reads the log)      12 s, peak RSS +62 MiB

A fresh process answers a proof in milliseconds instead of reading the log first (and
holding 64 bytes per record), and an export's memory stays flat however long the log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xacthuc.adapters.store.checkpoints import PostgresCheckpointStore
from xacthuc.adapters.store.pg_audit import PostgresAuditLog, PostgresLogReader
from xacthuc.adapters.store.postgres import Database, migrate
from xacthuc.domain.clock import FixedClock
from xacthuc.ports.audit_log import LogFilter
from xacthuc.verifiers.auditlog import AuditLog
from xacthuc.verifiers.log_reader import StoreLogReader

P = "bench"
T0 = 1_800_000_000

FILL = """
INSERT INTO audit_records (platform, idx, recorded_at, event, account, body, leaf_hash)
SELECT $1, i, to_timestamp($2 + i), e, a, b, sha256('\\x00'::bytea || convert_to(b, 'UTF8'))
FROM (
  SELECT i, e, a, '{"account":"' || a || '","event":"' || e || '","outcome":"ok","platform":"'
      || $1 || '","reason":"","seq":' || i || ',"time":"'
      || to_char(to_timestamp($2 + i) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
      || '","v":1}' AS b
  FROM (
    SELECT i, CASE WHEN i % 1000 = 7 THEN 'rare' WHEN i % 3 = 0 THEN 'code_sent'
                   ELSE 'check_ok' END AS e,
           'acc-' || (i % ($4 / 20)) AS a
    FROM generate_series($3::bigint, $4 - 1) AS i
  ) x
) y
"""


def rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def per_call(n: int, call: Any) -> float:
    start = time.perf_counter()
    for i in range(n):
        await call(i)
    return round((time.perf_counter() - start) / n * 1e3, 3)


async def bench(url: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"records": n}
    conn = await asyncpg.connect(url)
    step = 200_000
    start = time.perf_counter()
    for lo in range(0, n, step):
        await conn.execute(FILL, P, T0, lo, min(lo + step, n))
    await conn.execute("INSERT INTO log_heads (platform, size) VALUES ($1, $2)", P, n)
    await conn.execute("ANALYZE audit_records")
    await conn.close()
    out["fill_s"] = round(time.perf_counter() - start, 1)

    db = Database(url, min_size=1, max_size=4)
    await db.open()
    key = Ed25519PrivateKey.generate()

    def audit_log(reader: Any) -> AuditLog:
        return AuditLog(reader, PostgresCheckpointStore(db), key, FixedClock(T0 + n + 60))

    first = PostgresLogReader(db)
    start = time.perf_counter()
    await first.extend(P)
    out["extend_whole_log_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    signed = await audit_log(first).current_checkpoint(P)
    out["sign_checkpoint_ms"] = round((time.perf_counter() - start) * 1e3, 1)

    fresh = PostgresLogReader(db)
    log = audit_log(fresh)
    size = signed.tree_size
    stride = size // 211

    async def inclusion(i: int) -> None:
        await log.tree_size(P, size)
        await log.inclusion_proof(P, (i * stride) % size, size)

    out["fresh_inclusion_proof_ms"] = await per_call(200, inclusion)
    out["fresh_inclusion_hashes_per_proof"] = fresh.tree.hashes_read / 200
    fresh.tree.hashes_read = 0

    async def consistency(i: int) -> None:
        await log.consistency_proof(P, 1 + (i * stride) % (size - 1), size)

    out["fresh_consistency_proof_ms"] = await per_call(200, consistency)
    out["fresh_consistency_hashes_per_proof"] = fresh.tree.hashes_read / 200
    out["fresh_records_read_by_proofs"] = fresh.log.rows_read

    for name, where in (
        ("account", LogFilter(account="acc-7")),
        ("rare_event", LogFilter(event="rare")),
        ("one_hour", LogFilter(since=T0 + n // 2, until=T0 + n // 2 + 3600)),
    ):
        tokens = [""]

        async def page(i: int, where: LogFilter = where, tokens: list[str] = tokens) -> None:
            _, token = await log.query(P, where, page_size=100, page_token=tokens[-1])
            tokens.append(token)

        out[f"query_{name}_ms_per_page"] = await per_call(5, page)

    before = rss_kib()
    start = time.perf_counter()
    lines = 0
    async for chunk in log.export(P, 0, size):
        lines += chunk.count(b"\n")
    out["export_whole_log_s"] = round(time.perf_counter() - start, 1)
    out["export_lines"] = lines
    out["export_peak_rss_growth_mib"] = round((rss_kib() - before) / 1024, 1)

    fresh.log.rows_read = 0
    start = time.perf_counter()
    counts = await log.report(P, T0 + n // 2, T0 + n // 2 + 86_400)
    out["report_one_day_ms"] = round((time.perf_counter() - start) * 1e3, 1)
    out["report_one_day_records_read"] = fresh.log.rows_read
    out["report_one_day_records"] = counts["records"]

    before_log = audit_log(StoreLogReader(PostgresAuditLog(db)))  # type: ignore[arg-type]
    before = rss_kib()
    start = time.perf_counter()
    await before_log.tree_size(P, size)
    await before_log.inclusion_proof(P, 0, size)
    out["before_fresh_first_proof_s"] = round(time.perf_counter() - start, 1)
    out["before_peak_rss_growth_mib"] = round((rss_kib() - before) / 1024, 1)
    await db.aclose()
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--records", type=int, default=1_000_000)
    args = ap.parse_args()
    name = "xacthuc_bench_" + secrets.token_hex(4)
    admin = await asyncpg.connect(args.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(args.url)._replace(path="/" + name))
    try:
        conn = await asyncpg.connect(url)
        await migrate(conn)
        await conn.close()
        report = await bench(url, args.records)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
