"""Erasure of an account's audit records end to end (P10; Law 91/2025): a real server over
Redis with its audit log in PostgreSQL, the shipped client, `xacthuc admin erase` and
`xacthuc audit verify` as subprocesses. The log still verifies against checkpoints signed
before and after, the erased leaves marked; the erasure is itself a record naming no
account; other accounts and platforms keep everything; retention runs in worker 0 only."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from xacthuc.adapters.metrics import PrometheusLogMetrics
from xacthuc.adapters.store.checkpoints import PostgresCheckpointStore
from xacthuc.adapters.store.memory import MemoryStore
from xacthuc.adapters.store.pg_audit import PostgresLogReader
from xacthuc.adapters.store.postgres import Database
from xacthuc.client import AsyncClient
from xacthuc.domain import errors
from xacthuc.domain.clock import FixedClock
from xacthuc.server.app import build_app
from xacthuc.server.auth import Role
from xacthuc.server.runtime import start_server
from xacthuc.verifiers.auditlog import AuditLog

from ..conftest import pair_store
from .conftest import START, CapturingSms, Harness, make_keys, make_settings
from .test_audit_log import _env, checkpoint_files, cli, export_to, verify_phone


@pytest.fixture
async def pg_harness(
    redis_url: str, redis_namespace: str, database: Database
) -> AsyncIterator[Harness]:
    """The integration harness with the audit log in PostgreSQL (the production pairing)."""
    keys, raw = make_keys()
    clock = FixedClock(START)
    sms = CapturingSms()
    app = build_app(
        make_settings(),
        store=pair_store(redis_url, redis_namespace, database),
        sms=sms,
        clock=clock,
        api_keys=keys,
        database=database,
    )
    server = await start_server(app, "127.0.0.1:0")
    h = Harness(app, server, sms, clock, raw)
    yield h
    for c in h.clients:
        await c.close()
    await server.stop(grace=0)


async def admin(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """`xacthuc admin ...` as a subprocess, without blocking the server's loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xacthuc.cli",
        "admin",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def parsed(lines: list[bytes]) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines]


async def erased_export_verifies(
    h: Harness, auditor: AsyncClient, tmp_path: Path, older: Path, erased: int
) -> list[dict[str, object]]:
    """A checkpoint signed after the erasure, the export up to it and `xacthuc audit verify`
    of it against that checkpoint and the one signed before: exit 0, the erased records
    counted. The export's lines."""
    h.clock.advance(61)
    newer, vkey = await checkpoint_files(auditor, tmp_path, "newer")
    size = (await auditor.get_checkpoint()).tree_size
    lines = await export_to(auditor, tmp_path / "log.jsonl", to_index=size)
    code, out, err = await cli(
        "verify",
        str(tmp_path / "log.jsonl"),
        "--checkpoint",
        str(newer),
        "--key",
        str(vkey),
        "--older-checkpoint",
        str(older),
    )
    assert (0, "") == (code, err), out
    assert out.startswith(f"OK: xacthuc.invalid/log/alpha: records 0..{size - 1} match"), out
    assert f"{erased} erased record(s)" in out, out
    return parsed(lines)


async def test_an_erasure_by_rpc_keeps_the_log_verifiable_and_names_no_account(
    pg_harness: Harness, tmp_path: Path
) -> None:
    h = pg_harness
    await verify_phone(h, "acc-1")
    await verify_phone(h, "acc-2", phone="0987654321")
    await verify_phone(h, "acc-1", platform="beta")
    auditor = await h.client("alpha", Role.AUDITOR)
    await auditor.query_audit_records(account_id="acc-1")  # a record naming acc-1 too
    older, _ = await checkpoint_files(auditor, tmp_path, "older")
    platform = await h.client("alpha")

    erasure = await platform.erase_account_records(
        account_id="acc-1", request_reference="DSR-2027/01.5"
    )
    assert (5, START) == (erasure.erased_records, erasure.erased_at.timestamp())
    again = await platform.erase_account_records(
        account_id="acc-1", request_reference="DSR-2027/01.5"
    )
    assert 0 == again.erased_records  # nothing left; no second record

    lines = await erased_export_verifies(h, auditor, tmp_path, older, 5)
    erased = [line for line in lines if line.get("erased") is True]
    assert 5 == len(erased)
    assert all(set(line) == {"index", "leaf_hash", "erased"} for line in erased)
    assert "acc-1" not in (tmp_path / "log.jsonl").read_text()
    records = [json.loads(str(line["record"])) for line in lines if "record" in line]
    assert 4 == sum(r["account"] == "acc-2" for r in records)  # another account: kept
    (done,) = [r for r in records if r["event"] == "records_erased"]
    assert {
        "account": "",
        "count": 5,
        "request": "DSR-2027/01.5",
        "by": "platform",
        "key_id": h.keys[("alpha", Role.PLATFORM)].split("_")[1],  # xk_<key id>_<secret>
    }.items() <= done.items()
    # `report` counts what is left, with and without the checkpoint (the erased lines skipped).
    newer, vkey = tmp_path / "newer", tmp_path / "vkey"
    counted = []
    for extra in ((), ("--checkpoint", str(newer), "--key", str(vkey))):
        code, out, err = await cli("report", str(tmp_path / "log.jsonl"), *extra)
        assert 0 == code, err
        counted.append(json.loads(out)["counts"]["records"])
    assert [len(records), len(records)] == counted
    beta = await h.client("beta", Role.AUDITOR)
    kept = (await beta.query_audit_records(account_id="acc-1")).records
    assert 4 == len(kept)  # the same account id on another platform: untouched

    # A new process (nothing cached) reads the erased records' stored leaf hashes: its tree
    # is the signed one, and it would sign on top of it.
    assert h.app.database is not None
    fresh = AuditLog(
        PostgresLogReader(h.app.database),
        PostgresCheckpointStore(h.app.database),
        h.app.audit_log._key,
        h.clock,
        metrics=PrometheusLogMetrics(),
    )
    latest = await fresh.checkpoint("alpha")
    assert latest is not None
    assert await fresh.root("alpha", latest.tree_size) == latest.root_hash
    assert fresh.problem("alpha") is None


async def test_the_operator_erases_with_the_cli_and_the_log_still_verifies(
    pg_harness: Harness, tmp_path: Path, database_url: str
) -> None:
    h = pg_harness
    await verify_phone(h, "acc-1")
    await verify_phone(h, "acc-2", phone="0987654321")
    auditor = await h.client("alpha", Role.AUDITOR)
    older, _ = await checkpoint_files(auditor, tmp_path, "older")
    env = _env() | {"XACTHUC_DATABASE_URL": database_url}

    code, out, err = await admin(
        "erase", "--platform", "alpha", "--account", "acc-1", "--reference", "T-1", env=env
    )
    assert (0, "erased 4 audit record(s) of platform alpha (request T-1)\n", "") == (
        code,
        out,
        err,
    )

    lines = await erased_export_verifies(h, auditor, tmp_path, older, 4)
    assert [0, 1, 2, 3] == [line["index"] for line in lines if line.get("erased")]
    records = [json.loads(str(line["record"])) for line in lines if "record" in line]
    (done,) = [r for r in records if r["event"] == "records_erased"]
    assert ("", 4, "T-1", "operator") == (
        done["account"],
        done["count"],
        done["request"],
        done["by"],
    )
    # Refusals: no database, a malformed account or reference (nothing erased, exit 2).
    for args, environment, message in (
        (("--account", "acc-2", "--reference", "T-2"), _env(), "no database"),
        (("--account", "acc 2", "--reference", "T-2"), env, "--account: must be"),
        (("--account", "acc-2", "--reference", "T 2"), env, "--reference: must be"),
    ):
        code, out, err = await admin("erase", "--platform", "alpha", *args, env=environment)
        assert (2, "") == (code, out)
        assert message in err
    assert 4 == sum(r["account"] == "acc-2" for r in records)


@pytest.fixture
async def memory_harness() -> AsyncIterator[Harness]:
    """The integration harness over the embedded store (no database)."""
    keys, raw = make_keys()
    clock = FixedClock(START)
    sms = CapturingSms()
    app = build_app(make_settings(), store=MemoryStore(), sms=sms, clock=clock, api_keys=keys)
    server = await start_server(app, "127.0.0.1:0")
    h = Harness(app, server, sms, clock, raw)
    yield h
    for c in h.clients:
        await c.close()
    await server.stop(grace=0)


async def test_without_a_database_an_erasure_is_refused_precisely(
    memory_harness: Harness,
) -> None:
    """The audit log in memory cannot keep an erased record's hash: the call says so
    (FAILED_PRECONDITION, ERASURE_NEEDS_DATABASE) after checking its fields."""
    harness = memory_harness
    await verify_phone(harness, "acc-1")
    platform = await harness.client("alpha")
    with pytest.raises(errors.ErasureNeedsDatabase) as refused:
        await platform.erase_account_records(account_id="acc-1", request_reference="DSR-1")
    assert isinstance(refused.value, errors.FailedPrecondition)
    with pytest.raises(errors.FieldInvalid) as bad:
        await platform.erase_account_records(account_id="acc-1", request_reference="tên người")
    assert "request_reference" == bad.value.metadata["field"]
    auditor = await harness.client("alpha", Role.AUDITOR)
    with pytest.raises(errors.RoleNotAllowed):
        await auditor.erase_account_records(account_id="acc-1", request_reference="DSR-1")
    assert 4 == len((await auditor.query_audit_records(account_id="acc-1")).records)


async def test_the_retention_job_runs_in_worker_0_only(
    redis_url: str, redis_namespace: str, database: Database
) -> None:
    keys, _ = make_keys()
    for background in (False, True):
        app = build_app(
            make_settings(listen="127.0.0.1:0"),
            store=pair_store(redis_url, redis_namespace, database),
            clock=FixedClock(START),
            api_keys=keys,
            database=database,
        )
        server = await start_server(app, background=background)
        try:
            assert app.retention is not None
            assert background == app.retention.running
        finally:
            await server.stop(0)
