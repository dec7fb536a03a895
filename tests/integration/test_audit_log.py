"""The compliance audit log end to end: real server, real Redis, the shipped client and CLI
(issue 6; P9, P10): checkpoints, proofs, export, offline verification, tampering, reports.
Over the pair store: the audit log in PostgreSQL (issue 10: the reader side from
PostgreSQL's stored hashes and indexes)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from xacthuc.adapters.store.pg_audit import PostgresAuditLog, PostgresLogReader
from xacthuc.adapters.store.postgres import Database
from xacthuc.client import AsyncClient, Client
from xacthuc.domain import errors, merkle
from xacthuc.domain.checkpoint import Checkpoint, open_note, parse_vkey
from xacthuc.domain.clock import FixedClock
from xacthuc.server.app import build_app
from xacthuc.server.auth import ApiKeys, Role
from xacthuc.server.runtime import start_server

from ..conftest import emptied_database, pair_store
from .conftest import START, CapturingSms, Harness, make_keys, make_settings


@contextlib.asynccontextmanager
async def serving(
    redis_url: str,
    namespace: str,
    database: Database,
    keys: tuple[ApiKeys, dict[tuple[str, Role], str]] | None = None,
) -> AsyncIterator[Harness]:
    """A server over the pair store (Redis + `database`, closed after)."""
    api_keys, raw = keys or make_keys()
    clock = FixedClock(START)
    sms = CapturingSms()
    app = build_app(
        make_settings(),
        store=pair_store(redis_url, namespace, database),
        sms=sms,
        clock=clock,
        api_keys=api_keys,
        database=database,
    )
    server = await start_server(app, "127.0.0.1:0")
    h = Harness(app, server, sms, clock, raw)
    try:
        yield h
    finally:
        for c in h.clients:
            await c.close()
        await server.stop(grace=0)


@pytest.fixture
async def harness(
    redis_url: str, redis_namespace: str, database_url: str
) -> AsyncIterator[Harness]:
    async with serving(redis_url, redis_namespace, await emptied_database(database_url)) as h:
        yield h


@pytest.fixture
async def pg_harness(
    redis_url: str, redis_namespace: str, database_url: str
) -> AsyncIterator[Harness]:
    """The server with its audit log in PostgreSQL."""
    async with serving(redis_url, redis_namespace, await emptied_database(database_url)) as h:
        yield h


PHONE = "0912345678"
IP = "203.0.113.7"


async def verify_phone(
    h: Harness, account: str, phone: str = PHONE, platform: str = "alpha"
) -> None:
    """One successful phone verification: four audit records."""
    client = await h.client(platform)
    challenge = await client.start_phone_verification(
        account_id=account, phone_number=phone, client_ip=IP
    )
    await client.confirm_phone_verification(
        challenge_id=challenge.challenge_id,
        account_id=account,
        code=h.sms.code_for(challenge.challenge_id),
    )


async def records(auditor: AsyncClient) -> list[str]:
    """Every stored record of the auditor's platform, as stored, in index order."""
    raws: list[str] = []
    token = ""
    while True:
        page = await auditor.query_audit_records(page_size=1000, page_token=token)
        raws += [r.raw for r in page.records]
        token = page.next_page_token
        if not token:
            return raws


async def export_to(auditor: AsyncClient, path: Path, to_index: int = 0) -> list[bytes]:
    data = b"".join([c async for c in auditor.export_audit_records(to_index=to_index)])
    await asyncio.to_thread(path.write_bytes, data)
    return data.splitlines(keepends=True)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("XACTHUC_")}


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`xacthuc audit ...` as a subprocess, without blocking the loop the server runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xacthuc.cli",
        "audit",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or _env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def checkpoint_files(auditor: AsyncClient, tmp: Path, name: str = "cp") -> tuple[Path, Path]:
    cp = await auditor.get_checkpoint()
    (tmp / name).write_text(cp.signed_note)
    (tmp / "vkey").write_text(cp.verifier_key + "\n")
    return tmp / name, tmp / "vkey"


async def test_checkpoint_and_inclusion_proof_of_every_record_verify(harness: Harness) -> None:
    """The checkpoint note opens with the log key; each record's inclusion proof verifies."""
    await verify_phone(harness, "acc-1")
    await verify_phone(harness, "acc-2", phone="0987654321")
    auditor = await harness.client("alpha", Role.AUDITOR)
    cp = await auditor.get_checkpoint()
    name, key = parse_vkey(cp.verifier_key)
    body = Checkpoint.parse(open_note(cp.signed_note, name, key))
    assert ("xacthuc.invalid/log/alpha", 8, 8, cp.root_hash) == (
        body.origin,
        cp.tree_size,
        body.tree_size,
        body.root_hash,
    )
    stored = (await records(auditor))[:8]
    for i, raw in enumerate(stored):
        proof = await auditor.get_inclusion_proof(index=i, tree_size=8)
        merkle.verify_inclusion(merkle.leaf_hash(raw.encode()), i, 8, proof, cp.root_hash)


async def test_consistency_proof_between_two_checkpoints_verifies(harness: Harness) -> None:
    """A later checkpoint extends the earlier one; none is re-signed within T seconds."""
    await verify_phone(harness, "acc-1")
    auditor = await harness.client("alpha", Role.AUDITOR)
    first = await auditor.get_checkpoint()
    await verify_phone(harness, "acc-2", phone="0987654321")
    assert first == await auditor.get_checkpoint()
    harness.clock.advance(61)
    second = await auditor.get_checkpoint()
    # 4 records of acc-1, 1 of the first GetCheckpoint, 4 of acc-2, 1 of the second.
    assert (4, 10) == (first.tree_size, second.tree_size)
    proof = await auditor.get_consistency_proof(from_size=4, to_size=10)
    merkle.verify_consistency(4, 10, proof, first.root_hash, second.root_hash)


async def test_export_verifies_offline_with_the_cli(harness: Harness, tmp_path: Path) -> None:
    """`xacthuc audit verify` accepts a fresh export against the newer and an older checkpoint."""
    await verify_phone(harness, "acc-1")
    auditor = await harness.client("alpha", Role.AUDITOR)
    older, vkey = await checkpoint_files(auditor, tmp_path, "older")
    await verify_phone(harness, "acc-2", phone="0987654321")
    harness.clock.advance(61)
    newer, _ = await checkpoint_files(auditor, tmp_path, "newer")
    await export_to(auditor, tmp_path / "log.jsonl", to_index=9)
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
    assert (0, "") == (code, err)
    assert "OK: xacthuc.invalid/log/alpha: records 0..8 match the checkpoint" == out.split(" (")[0]
    assert "older checkpoint of tree size 4: consistent with tree size 9" in out


def _changed_byte(lines: list[bytes]) -> list[bytes]:
    lines[3] = lines[3].replace(b'\\"account\\":\\"acc-1\\"', b'\\"account\\":\\"acc-7\\"', 1)
    return lines


def _removed(lines: list[bytes]) -> list[bytes]:
    del lines[3]
    return lines


def _swapped(lines: list[bytes]) -> list[bytes]:
    lines[3], lines[4] = lines[4], lines[3]
    return lines


def _truncated(lines: list[bytes]) -> list[bytes]:
    return lines[:3]


@pytest.mark.parametrize("tamper", [_changed_byte, _removed, _swapped, _truncated])
async def test_tampered_export_fails_naming_the_first_bad_record(
    harness: Harness, tmp_path: Path, tamper: Callable[[list[bytes]], list[bytes]]
) -> None:
    """A changed byte, a removed record, a swapped pair or a truncation: exit 1, index 3."""
    await verify_phone(harness, "acc-1")
    await verify_phone(harness, "acc-2", phone="0987654321")
    auditor = await harness.client("alpha", Role.AUDITOR)
    cp, vkey = await checkpoint_files(auditor, tmp_path)
    lines = await export_to(auditor, tmp_path / "log.jsonl")
    tampered = tamper(list(lines))
    assert lines != tampered
    (tmp_path / "bad.jsonl").write_bytes(b"".join(tampered))
    code, out, _ = await cli(
        "verify", str(tmp_path / "bad.jsonl"), "--checkpoint", str(cp), "--key", str(vkey)
    )
    found = re.search(r"first bad record index (\d+)", out)
    assert (1, "3") == (code, found.group(1) if found else out)


async def test_cli_fetches_the_checkpoint_and_export_it_verifies(
    harness: Harness, tmp_path: Path
) -> None:
    """`audit checkpoint`, then `audit export --checkpoint` (auditor key from the environment)
    cut at the checkpoint's tree size however much was appended since: `verify` passes."""
    await verify_phone(harness, "acc-1")
    env = _env() | {"XACTHUC_API_KEY": harness.keys[("alpha", Role.AUDITOR)]}
    target = ("--target", harness.target)
    fetched = [await cli("checkpoint", *target, "--out", str(tmp_path / "cp"), env=env)]
    await verify_phone(harness, "acc-2", phone="0987654321")
    cut = ("--checkpoint", str(tmp_path / "cp"))
    fetched.append(
        await cli("export", *target, *cut, "--out", str(tmp_path / "log.jsonl"), env=env)
    )
    assert [0, 0] == [code for code, _, _ in fetched]
    assert "wrote 4 records (0..3, cut at the checkpoint's tree size 4)" in fetched[1][2]
    vkey = re.search(r"verifier key as (\S+)", fetched[0][2])
    assert vkey is not None
    (tmp_path / "vkey").write_text(vkey.group(1))
    code, out, _ = await cli(
        "verify", str(tmp_path / "log.jsonl"), *cut, "--key", str(tmp_path / "vkey")
    )
    assert (0, True) == (code, out.startswith("OK: xacthuc.invalid/log/alpha: records 0..3 match"))
    assert [] == [word for word in ("UNVERIFIED", "not covered") if word in out]


async def test_export_cut_at_an_empty_checkpoint_holds_no_record(
    harness: Harness, tmp_path: Path
) -> None:
    """A checkpoint of the empty tree cuts the export to nothing (not to the whole log)."""
    auditor = await harness.client("alpha", Role.AUDITOR)
    cp, vkey = await checkpoint_files(auditor, tmp_path)
    await verify_phone(harness, "acc-1")
    env = _env() | {"XACTHUC_API_KEY": harness.keys[("alpha", Role.AUDITOR)]}
    code, _, err = await cli(
        "export",
        "--target",
        harness.target,
        "--checkpoint",
        str(cp),
        "--out",
        str(tmp_path / "log.jsonl"),
        env=env,
    )
    assert (0, b"") == (code, (tmp_path / "log.jsonl").read_bytes()), err
    code, out, _ = await cli(
        "verify", str(tmp_path / "log.jsonl"), "--checkpoint", str(cp), "--key", str(vkey)
    )
    assert (0, "OK: xacthuc.invalid/log/alpha: the checkpoint is of the empty tree\n") == (
        code,
        out,
    )


def _forge_attestation(lines: list[bytes], size: int) -> list[bytes]:
    """The export cut at `size`, plus a forged `attestation_issued` record numbered `size`
    whose leaf hash is correct: self-consistent, but covered by no signature."""
    template = json.loads(json.loads(lines[size - 1])["record"])
    forged = json.dumps(
        {
            "account": "acc-forged",
            "event": "attestation_issued",
            "expires": 1_900_000_000,
            "method": "phone_otp",
            "outcome": "ok",
            "platform": "alpha",
            "reason": "",
            "seq": size,
            "time": template["time"],
            "token_id": "tok-forged",
            "v": template["v"],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    leaf = merkle.leaf_hash(forged.encode()).hex()
    line = json.dumps({"index": size, "leaf_hash": leaf, "record": forged}) + "\n"
    return [*lines[:size], line.encode()]


async def test_a_forged_record_past_the_checkpoint_is_neither_verified_nor_counted(
    harness: Harness, tmp_path: Path
) -> None:
    """Issue 13: a forged attestation appended after the checkpoint's records, with a correct
    leaf hash: `verify` fails naming its index (or lists it as UNVERIFIED when allowed), and
    `report --checkpoint` does not count it; `report` without one warns its figures are not
    verified."""
    await verify_phone(harness, "acc-1")
    auditor = await harness.client("alpha", Role.AUDITOR)
    cp, vkey = await checkpoint_files(auditor, tmp_path)
    lines = await export_to(auditor, tmp_path / "log.jsonl")
    size = Checkpoint.parse(cp.read_text().split("\n\n")[0] + "\n").tree_size
    assert (4, 5) == (size, len(lines))
    (tmp_path / "forged.jsonl").write_bytes(b"".join(_forge_attestation(lines, size)))
    args = (str(tmp_path / "forged.jsonl"), "--checkpoint", str(cp), "--key", str(vkey))
    strict = await cli("verify", *args)
    allowed = await cli("verify", *args, "--allow-unverified-tail")
    assert (1, 0) == (strict[0], allowed[0])
    assert strict[1].startswith("FAILED: record 4 is not covered by the checkpoint (tree size 4)")
    assert allowed[1].startswith("OK: xacthuc.invalid/log/alpha: records 0..3 match")
    assert "UNVERIFIED record 4: attestation_issued" in allowed[1]

    verified = await cli("report", *args)
    unverified = await cli("report", args[0])
    assert (0, 0) == (verified[0], unverified[0])
    checked, unchecked = json.loads(verified[1]), json.loads(unverified[1])
    assert (True, [0, 3], [4, 4], 1) == (
        checked["verified"],
        checked["counted"],
        checked["not_counted"],
        checked["counts"]["attestations"],
    )
    assert "records 0..3 of xacthuc.invalid/log/alpha" in verified[2]
    assert (False, [0, 4], 2) == (
        unchecked["verified"],
        unchecked["counted"],
        unchecked["counts"]["attestations"],
    )
    assert unverified[2].startswith("xacthuc audit: WARNING: UNVERIFIED figures")


async def test_log_times_never_go_backwards_and_verify_checks_them(
    harness: Harness, tmp_path: Path
) -> None:
    """A clock that steps back (another replica, NTP) never makes a record older than the one
    before it; a backdated record in an export is reported with its index."""
    await verify_phone(harness, "acc-1")
    harness.clock.advance(-30)
    await verify_phone(harness, "acc-2", phone="0987654321")
    auditor = await harness.client("alpha", Role.AUDITOR)
    cp, vkey = await checkpoint_files(auditor, tmp_path)
    lines = await export_to(auditor, tmp_path / "log.jsonl", to_index=8)
    times = [json.loads(json.loads(line)["record"])["time"] for line in lines]
    assert sorted(times) == times
    code, out, _ = await cli(
        "verify", str(tmp_path / "log.jsonl"), "--checkpoint", str(cp), "--key", str(vkey)
    )
    assert 0 == code, out
    obj = json.loads(lines[5])
    record = json.loads(obj["record"])
    record["time"] = "2027-01-15T07:59:00.000Z"
    obj["record"] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    obj["leaf_hash"] = merkle.leaf_hash(obj["record"].encode()).hex()
    lines[5] = (json.dumps(obj) + "\n").encode()
    (tmp_path / "backdated.jsonl").write_bytes(b"".join(lines))
    code, out, _ = await cli(
        "verify", str(tmp_path / "backdated.jsonl"), "--checkpoint", str(cp), "--key", str(vkey)
    )
    assert (1, True) == (
        code,
        out.startswith("FAILED: first bad record index 5: record 5 has time 2027-01-15T07:59:00"),
    )


async def test_platform_keys_may_not_call_audit_rpcs(harness: Harness) -> None:
    """Every audit RPC refuses a platform key with ROLE_NOT_ALLOWED, the export stream too."""
    platform = await harness.client("alpha", Role.PLATFORM)
    calls = [
        platform.get_checkpoint(),
        platform.get_inclusion_proof(index=0, tree_size=1),
        platform.get_consistency_proof(from_size=1, to_size=1),
        platform.get_report(),
        platform.query_audit_records(),
    ]
    refused = []
    for call in calls:
        with pytest.raises(errors.RoleNotAllowed) as e:
            await call
        refused.append(e.value.reason)
    with pytest.raises(errors.RoleNotAllowed) as e:
        [c async for c in platform.export_audit_records()]
    refused.append(e.value.reason)
    assert ["ROLE_NOT_ALLOWED"] * 6 == refused


async def test_beta_auditor_never_sees_alpha_records(harness: Harness) -> None:
    """Another platform's auditor gets only its own log: export, checkpoint and proofs."""
    await verify_phone(harness, "acc-1")
    await verify_phone(harness, "acc-1", platform="beta")
    await verify_phone(harness, "acc-2", phone="0987654321")
    beta = await harness.client("beta", Role.AUDITOR)
    cp = await beta.get_checkpoint()
    exported = b"".join([c async for c in beta.export_audit_records()]).splitlines()
    platforms = {json.loads(json.loads(line)["record"])["platform"] for line in exported}
    assert ({"beta"}, 4, "xacthuc.invalid/log/beta") == (
        platforms,
        cp.tree_size,
        Checkpoint.parse(cp.signed_note.split("\n\n")[0] + "\n").origin,
    )
    with pytest.raises(errors.FieldInvalid) as e:
        await beta.get_inclusion_proof(index=0, tree_size=8)
    assert "tree_size" == e.value.metadata["field"]


async def test_every_auditor_call_is_audited(harness: Harness) -> None:
    """Each audit RPC, served or refused, leaves an `auditor_*` record with the caller's key id."""
    await verify_phone(harness, "acc-1")
    auditor = await harness.client("alpha", Role.AUDITOR)
    await auditor.get_checkpoint()
    await auditor.get_inclusion_proof(index=1, tree_size=4)
    await auditor.get_consistency_proof(from_size=2, to_size=4)
    with pytest.raises(errors.FieldInvalid):
        await auditor.get_inclusion_proof(index=4, tree_size=4)
    await auditor.get_report()
    [c async for c in auditor.export_audit_records()]
    await auditor.query_audit_records(event="check_ok")
    mine = [json.loads(r) for r in (await records(auditor))[4:]]
    key_id = harness.keys[("alpha", Role.AUDITOR)].split("_")[1]
    assert [
        ("auditor_get_checkpoint", "ok", ""),
        ("auditor_get_inclusion_proof", "ok", ""),
        ("auditor_get_consistency_proof", "ok", ""),
        ("auditor_get_inclusion_proof", "refused", "FIELD_INVALID"),
        ("auditor_get_report", "ok", ""),
        ("auditor_export_audit_records", "ok", ""),
        ("auditor_query_audit_records", "ok", ""),
    ] == [(r["event"], r["outcome"], r["reason"]) for r in mine]
    assert {key_id} == {r["key_id"] for r in mine}
    assert {""} == {r["account"] for r in mine}
    assert (4, 4, "check_ok", 1) == (
        mine[3]["index"],
        mine[3]["tree_size"],
        mine[6]["query_event"],
        mine[6]["returned"],
    )


async def test_leaves_hold_pseudonyms_only(harness: Harness) -> None:
    """No raw phone number, client IP or code appears in any exported leaf (P9)."""
    await verify_phone(harness, "acc-1")
    codes = [harness.sms.code_for(m.message_id) for m in harness.sms.messages]
    auditor = await harness.client("alpha", Role.AUDITOR)
    exported = b"".join([c async for c in auditor.export_audit_records()]).decode()
    phones = {
        json.loads(json.loads(line)["record"]).get("phone") for line in exported.splitlines()
    } - {None}
    assert [] == [s for s in ("912345678", "0912345678", IP, *codes) if s in exported]
    assert 1 == len(phones)
    assert [True] == [p.startswith("ph_") for p in phones]


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"account_id": "Nguyễn Văn An 0912345678"}, "account_id"),
        ({"account_id": "acc\x00"}, "account_id"),
        ({"event": "dob 1985-03-14"}, "event"),
        ({"event": "*"}, "event"),
    ],
    ids=["account-name-phone", "account-nul", "event-dob", "event-star"],
)
async def test_a_query_filter_that_is_no_account_id_or_event_is_refused_and_stays_out_of_the_log(
    harness: Harness, filters: dict[str, str], field: str
) -> None:
    """The filters of QueryAuditRecords are written into the (append-only) log with the call's
    record, so only an account id or an event name may be one: anything else (a name, a
    number, a date, control characters) is FIELD_INVALID naming the field, audited as refused
    with the field only, and its value is in no leaf."""
    await verify_phone(harness, "acc-1")
    auditor = await harness.client("alpha", Role.AUDITOR)
    with pytest.raises(errors.FieldInvalid) as e:
        await auditor.query_audit_records(**filters)  # type: ignore[arg-type]
    assert field == e.value.metadata["field"]
    exported = b"".join([c async for c in auditor.export_audit_records()]).decode()
    value = next(iter(filters.values()))
    assert value not in exported
    assert json.dumps(value)[1:-1] not in exported
    last = json.loads(json.loads(exported.splitlines()[-1])["record"])
    assert ("auditor_query_audit_records", "refused", "FIELD_INVALID", field) == (
        last["event"],
        last["outcome"],
        last["reason"],
        last["field"],
    )


@pytest.mark.parametrize(
    "token",
    [
        "i:99999999999999999998:99999999999999999999",  # beyond Redis's 64-bit integers
        "i:9223372036854775000:9223372036854775807",  # an index + a batch would overflow
        "i:0:18446744073709551616",
    ],
)
async def test_a_forged_page_token_past_any_log_is_field_invalid(
    harness: Harness, token: str
) -> None:
    """A page token naming indexes no log can reach is FIELD_INVALID `page_token`, not
    INTERNAL (Redis refused the out-of-range integers)."""
    await verify_phone(harness, "acc-1")
    auditor = await harness.client("alpha", Role.AUDITOR)
    forged = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    with pytest.raises(errors.FieldInvalid) as e:
        await auditor.query_audit_records(page_token=forged)
    assert "page_token" == e.value.metadata["field"]


async def test_a_query_window_that_ends_before_it_starts_is_field_invalid(
    harness: Harness,
) -> None:
    """QueryAuditRecords refuses `to_time` not after `from_time`, as GetReport does, instead
    of answering an empty page as if no record matched."""
    await verify_phone(harness, "acc-1")
    auditor = await harness.client("alpha", Role.AUDITOR)
    t = datetime.fromtimestamp(START, UTC)
    for later in (t, t.replace(year=t.year - 1)):
        with pytest.raises(errors.FieldInvalid) as e:
            await auditor.query_audit_records(from_time=t, to_time=later)
        assert "to_time" == e.value.metadata["field"]


async def test_report_counts_match_the_log_and_the_offline_report(
    harness: Harness, tmp_path: Path
) -> None:
    """GetReport counts attestations by method, lockouts and events; the CLI agrees offline."""
    await verify_phone(harness, "acc-1")
    await verify_phone(harness, "acc-2", phone="0987654321")
    client = await harness.client()
    for round_ in range(2):  # 10 wrong codes over two challenges lock the number (P2)
        if round_:
            harness.clock.advance(61)
        ch = await client.start_phone_verification(
            account_id="acc-3", phone_number="0911111111", client_ip=IP
        )
        wrong = f"{(int(harness.sms.code_for(ch.challenge_id)) + 1) % 1_000_000:06d}"
        for _ in range(5):
            with pytest.raises(errors.XacthucError):
                await client.confirm_phone_verification(
                    challenge_id=ch.challenge_id, account_id="acc-3", code=wrong
                )
    auditor = await harness.client("alpha", Role.AUDITOR)
    since = datetime.fromtimestamp(START, UTC)
    until = datetime.fromtimestamp(START + 3600, UTC)
    counts = await auditor.get_report(from_time=since, to_time=until)
    assert {
        "attestations": 2,
        "commercial_livestream": 0,
        "event:attestation_issued": 2,
        "event:check_failed": 10,
        "event:check_ok": 2,
        "event:code_sent": 4,
        "event:phone_locked": 1,
        "event:verification_started": 4,
        "guardian_managed": 0,
        "lockouts": 1,
        "method:phone_otp": 2,
        "outcome:failed": 10,
        "outcome:locked": 1,
        "outcome:ok": 12,
        "records": 23,
    } == counts
    before = await auditor.get_report(
        from_time=datetime.fromtimestamp(START - 60, UTC), to_time=since
    )
    assert (
        dict.fromkeys(
            ("attestations", "commercial_livestream", "guardian_managed", "lockouts", "records"), 0
        )
        == before
    )
    await export_to(auditor, tmp_path / "log.jsonl", to_index=23)
    code, out, _ = await cli(
        "report",
        str(tmp_path / "log.jsonl"),
        "--from",
        since.isoformat(),
        "--to",
        until.isoformat(),
    )
    assert (0, counts) == (code, json.loads(out)["counts"])


async def test_bad_sizes_and_ranges_name_the_field(harness: Harness) -> None:
    """Out-of-range sizes, indexes and times are FIELD_INVALID naming the field."""
    await verify_phone(harness, "acc-1")
    auditor = await harness.client("alpha", Role.AUDITOR)
    t = datetime.fromtimestamp(START, UTC)
    calls = [
        auditor.get_inclusion_proof(index=4, tree_size=4),
        auditor.get_inclusion_proof(index=0, tree_size=0),
        auditor.get_inclusion_proof(index=0, tree_size=99),
        auditor.get_consistency_proof(from_size=0, to_size=2),
        auditor.get_consistency_proof(from_size=3, to_size=2),
        auditor.get_consistency_proof(from_size=1, to_size=99),
        auditor.get_report(from_time=t, to_time=t),
    ]
    fields = []
    for call in calls:
        with pytest.raises(errors.FieldInvalid) as e:
            await call
        fields.append(e.value.metadata["field"])
    for kwargs in ({"to_index": 999}, {"from_index": 5, "to_index": 2}):
        with pytest.raises(errors.FieldInvalid) as e:
            [c async for c in auditor.export_audit_records(**kwargs)]
        fields.append(e.value.metadata["field"])
    assert [
        "index",
        "tree_size",
        "tree_size",
        "from_size",
        "to_size",
        "to_size",
        "to_time",
        "to_index",
        "from_index",
    ] == fields


async def test_blocking_client_speaks_the_audit_api(harness: Harness) -> None:
    """The sync Client fetches a checkpoint, proofs, a report and the export like AsyncClient."""
    await verify_phone(harness, "acc-1")
    key = harness.keys[("alpha", Role.AUDITOR)]

    def flow() -> tuple[int, int, int, int]:
        with Client.connect(harness.target, api_key=key) as c:
            cp = c.get_checkpoint()
            proof = c.get_inclusion_proof(index=0, tree_size=cp.tree_size)
            consistency = c.get_consistency_proof(from_size=1, to_size=cp.tree_size)
            lines = b"".join(c.export_audit_records(to_index=cp.tree_size)).splitlines()
            first = json.loads(lines[0])["record"]
            merkle.verify_inclusion(
                merkle.leaf_hash(first.encode()), 0, cp.tree_size, proof, cp.root_hash
            )
            return cp.tree_size, len(consistency), len(lines), c.get_report()["attestations"]

    assert (4, 2, 4, 1) == await asyncio.to_thread(flow)


# ------------------------------------------------------------ the audit log in PostgreSQL


async def test_with_a_database_an_export_with_erased_records_verifies_with_the_cli(
    pg_harness: Harness, tmp_path: Path
) -> None:
    """Law 91/2025 end to end: one account's records erased in PostgreSQL, the CLI fetches a
    checkpoint and the export: each erased record is its leaf hash and the marker, `audit
    verify` passes against that checkpoint and one signed before the erasure and counts
    them, and `audit report` leaves them out."""
    h = pg_harness
    await verify_phone(h, "acc-1")  # records 0..3
    await verify_phone(h, "acc-2", phone="0987654321")  # 4..7
    auditor = await h.client("alpha", Role.AUDITOR)
    older, _ = await checkpoint_files(auditor, tmp_path, "older")  # size 8, then its record
    assert h.app.database is not None
    assert 4 == await PostgresAuditLog(h.app.database).erase_account(
        "alpha", "acc-1", START, request="T-1"
    )
    env = _env() | {"XACTHUC_API_KEY": h.keys[("alpha", Role.AUDITOR)]}
    target = ("--target", h.target)
    h.clock.advance(61)
    fetched = await cli("checkpoint", *target, "--out", str(tmp_path / "cp"), env=env)
    cut = ("--checkpoint", str(tmp_path / "cp"))
    exported = await cli("export", *target, *cut, "--out", str(tmp_path / "log.jsonl"), env=env)
    assert (0, 0) == (fetched[0], exported[0]), (fetched, exported)
    vkey = re.search(r"verifier key as (\S+)", fetched[2])
    assert vkey is not None
    (tmp_path / "vkey").write_text(vkey.group(1))
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert 10 == len(lines)  # ... 8: auditor_get_checkpoint, 9: records_erased
    assert [0, 1, 2, 3] == [e["index"] for e in lines if e.get("erased") is True]
    assert [] == [e for e in lines[:4] if "record" in e]
    assert "acc-1" not in (tmp_path / "log.jsonl").read_text()
    assert "records_erased" == json.loads(lines[9]["record"])["event"]
    code, out, err = await cli(
        "verify",
        str(tmp_path / "log.jsonl"),
        *cut,
        "--key",
        str(tmp_path / "vkey"),
        "--older-checkpoint",
        str(older),
    )
    assert 0 == code, out + err
    assert out.startswith("OK: xacthuc.invalid/log/alpha: records 0..9 match the checkpoint")
    assert "4 erased record(s)" in out
    assert "older checkpoint of tree size 8: consistent with tree size 10" in out
    code, out, _ = await cli("report", str(tmp_path / "log.jsonl"))
    counts = json.loads(out)["counts"]
    assert (0, 6, 1, 1) == (
        code,
        counts["records"],
        counts["attestations"],
        counts["event:records_erased"],
    )


async def test_with_a_database_a_fresh_server_answers_proofs_reading_no_record(
    pg_harness: Harness, redis_url: str, redis_namespace: str, database_url: str
) -> None:
    """A second server started on the same PostgreSQL (a fresh process: nothing cached)
    answers inclusion and consistency proofs for the checkpoints the first one signed from
    O(log n) stored hashes: it reads no record, from PostgreSQL or through the store, and
    the proofs verify."""
    h = pg_harness
    for i in range(5):
        await verify_phone(h, f"acc-{i}", phone=f"09{i}1234567")
    auditor = await h.client("alpha", Role.AUDITOR)
    older = await auditor.get_checkpoint()  # 20 records
    await verify_phone(h, "acc-9", phone="0999999999")
    h.clock.advance(61)
    newer = await auditor.get_checkpoint()  # 25
    stored = await records(auditor)
    database = Database(database_url, min_size=0, max_size=2)
    keys = (h.app.api_keys, h.keys)
    async with serving(redis_url, redis_namespace, database, keys) as fresh:
        await fresh.app.audit_log.stop()  # no background checkpointing: proofs only
        store = fresh.app.store

        async def no_reading(*args: object, **kwargs: object) -> list[str]:
            raise AssertionError("a proof reads no record")

        store.audit_records = no_reading  # type: ignore[method-assign]
        reader = fresh.app.audit_log._reader
        assert isinstance(reader, PostgresLogReader)
        client = await fresh.client("alpha", Role.AUDITOR)
        for index, cp in ((0, older), (13, older), (19, older), (24, newer), (7, newer)):
            proof = await client.get_inclusion_proof(index=index, tree_size=cp.tree_size)
            leaf = merkle.leaf_hash(stored[index].encode())
            merkle.verify_inclusion(leaf, index, cp.tree_size, proof, cp.root_hash)
        proof = await client.get_consistency_proof(from_size=20, to_size=25)
        merkle.verify_consistency(20, 25, proof, older.root_hash, newer.root_hash)
        assert (20, 25) == (older.tree_size, newer.tree_size)
        assert 0 == reader.log.rows_read
        assert reader.tree.hashes_read <= 6 * 2 * (25).bit_length()  # six proofs, O(log n) each
