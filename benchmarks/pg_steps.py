"""PostgreSQL's own CPU per durable step of the pair store (issue 10/11: where Confirm's time goes).

    .venv/bin/python benchmarks/pg_steps.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
        [--calls 4000] [--concurrency 32] [--steps confirm,start,verify]

Runs the pair store's PostgreSQL half alone (`PairStore` with its Redis half replaced by a
stub that accepts every code: no Redis, no gRPC) in a scratch database, `--concurrency` calls
in flight as the benchmark's server has them, and reports per call:

* `pg_ms`: CPU of the scratch database's backends (utime + stime from /proc, so PostgreSQL
  must run on this machine), the figure that shares the cores with the server in run.py;
* `client_ms`: CPU of this process (the batcher, asyncpg, the op's encoding);
* `trips`: statements sent (the batcher's commits) per call, `ops/trip` the batch size.

Steps: `confirm` (check_code: xacthuc_issue_phone of a new account), `start` (the facts, the
start's record, code_sent's record: three trips, as StartPhoneVerification makes),
`verify` (the ID attempt's facts, then finish_id_check: xacthuc_issue_id).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("service", "verifiers")]

from xacthuc.adapters.store.pair import PairStore  # noqa: E402
from xacthuc.adapters.store.postgres import Database, migrate  # noqa: E402
from xacthuc.domain.records import (  # noqa: E402
    CodeCheck,
    IdAttempt,
    Limits,
    PendingAttestation,
)

PLATFORM = "bench"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class _Eph:
    """The Redis half, accepting everything (no Redis)."""

    def __init__(self, store: PairStore) -> None:
        self._store = store

    async def check_code(self, check: CodeCheck, limits: Limits) -> str | None:
        return "ph_" + check.account_id

    async def start_challenge(self, new: Any, limits: Limits, **facts: Any) -> None:
        # The Lua step's records: the start, then (confirm_sent) code_sent.
        await self._store.audit.append_audit(
            new.platform,
            new.now,
            account=new.account_id,
            event="verification_started",
            outcome="ok",
            challenge=new.challenge_id,
            phone=new.phone,
            client=new.client,
            method="phone_otp",
        )

    async def begin_id_check(self, attempt: IdAttempt, limits: Limits, **facts: Any) -> None:
        return None

    async def finish_id_check(self, attempt: IdAttempt, answer: str, limits: Limits) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _pending(now: float, method: str = "phone_otp", id_type: str = "") -> PendingAttestation:
    return PendingAttestation(
        token_id=secrets.token_hex(16),
        issued_at=now,
        expires_at=now + 86_400 * 365,
        method=method,
        age_band="adult" if id_type else "",
        id_type=id_type,
    )


async def _confirm(store: PairStore, n: int) -> None:
    now = time.time()
    account = f"acct-{n:09d}-" + "x" * 100
    check = CodeCheck(
        PLATFORM, f"ch_{n:012d}{secrets.token_hex(8)}", account, ("00",), now, _pending(now)
    )
    await store.check_code(check, Limits())


async def _start(store: PairStore, n: int) -> None:
    from xacthuc.domain.records import NewChallenge

    now = time.time()
    account = f"acct-{n:09d}-" + "y" * 100
    new = NewChallenge(
        PLATFORM,
        f"ch_{n:012d}{secrets.token_hex(8)}",
        account,
        f"ph_{n % 5000:040d}",
        "cl_" + "0" * 40,
        "00" * 32,
        "",
        now,
        now + 300,
    )
    await store.start_challenge(new, Limits())
    await store.audit.append_audit(
        PLATFORM, now, account=account, event="code_sent", outcome="ok", challenge=new.challenge_id
    )


async def _verify(store: PairStore, n: int) -> None:
    now = time.time()
    account = f"acct-{n:09d}-" + "z" * 100
    attempt = IdAttempt(
        platform=PLATFORM,
        attempt_id=f"id_{n:012d}{secrets.token_hex(8)}",
        account_id=account,
        subject=f"id_{n:040d}",
        client="cl_" + "0" * 40,
        purpose="commercial_livestream",
        now=now,
        id_type="citizen",
    )
    await store.begin_id_check(attempt, Limits())
    await store.finish_id_check(attempt, "match", _pending(now, "personal_id", "citizen"), Limits())


STEPS = {"confirm": _confirm, "start": _start, "verify": _verify}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", required=True)
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--steps", default="confirm,start,verify")
    p.add_argument(
        "--track-functions", action="store_true", help="print pg_stat_user_functions at the end"
    )
    p.add_argument(
        "--set", action="append", default=[], help="a setting of the scratch database (k=v)"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = p.parse_args()
    name = f"pg_steps_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(args.database_url)._replace(path="/" + name))
    try:
        conn = await asyncpg.connect(url)
        await migrate(conn)
        await conn.close()
        if args.track_functions:
            await admin.execute(f"ALTER DATABASE \"{name}\" SET track_functions = 'all'")
        db = Database(url, max_size=10)
        store = PairStore("redis://127.0.0.1:1/0", db)
        store._eph = _Eph(store)  # type: ignore[assignment]
        counter = iter(range(10**9))
        for step in args.steps.split(","):
            fn = STEPS[step]

            async def worker(calls: int) -> None:
                for _ in range(calls):
                    await fn(store, next(counter))  # noqa: B023

            per = max(1, args.calls // args.concurrency)
            await asyncio.gather(*(worker(max(1, per // 4)) for _ in range(args.concurrency)))
            pids = [
                r["pid"]
                for r in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1", name
                )
            ]
            pg0 = sum(cpu_seconds(pid) for pid in pids)
            me0 = time.process_time()
            commits0, ops0 = store._batch.commits, store._batch.batched_ops
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(per) for _ in range(args.concurrency)))
            wall = time.perf_counter() - t0
            calls = per * args.concurrency
            pg = sum(cpu_seconds(pid) for pid in pids) - pg0
            me = time.process_time() - me0
            trips = store._batch.commits - commits0
            ops = store._batch.batched_ops - ops0
            print(
                f"{step:8} calls {calls:6}  {calls / wall:7,.0f}/s  pg_ms {1000 * pg / calls:.3f}"
                f"  client_ms {1000 * me / calls:.3f}  trips {trips / calls:.2f}"
                f"  ops/trip {ops / max(1, trips):.1f}  backends {len(pids)}"
            )
        await db.aclose()
        if args.track_functions:
            await asyncio.sleep(1)
            conn = await asyncpg.connect(url)
            rows = await conn.fetch(
                "SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions"
                " ORDER BY self_time DESC"
            )
            await conn.close()
            print(f"{'function':32}{'calls':>9}{'total_ms':>10}{'self_ms':>10}  (whole run)")
            for r in rows:
                print(
                    f"{r['funcname']:32}{r['calls']:9}{r['total_time']:10.0f}{r['self_time']:10.0f}"
                )
    finally:
        if not args.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
