"""The audit log is never forked (issue 10): no two signed checkpoints are inconsistent,
across signers killed mid-signature, restarts, replicas signing at once and Redis lost.

Real processes (tests/crash_worker.py) sign against the real PostgreSQL; the pair store
appends through both its Redis and its PostgreSQL steps. A signer is SIGKILLed while it
extends the stored tree (`extend`: its new subtree hashes written, uncommitted) or while it
stores its checkpoint (`store`: the compare-and-set cell moved, the checkpoint row next),
its backend rolling back at once (`rolled_back`) or after running its statement to its end
(`finished`); Redis is flushed; a restarted signer goes on. Two replica processes race to
sign one platform's log, held at the compare-and-set so that both signed before either
stored, then sign and append freely side by side. After each: every stored checkpoint and
every one a process was answered is consistent with every other (RFC 9162 proofs verify),
sizes only go up, and the export verifies offline against them (`log_verifies`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.postgres import Database
from xacthuc.ports.checkpoints import StoredCheckpoint

from .crash_worker import (
    Worker,
    killed_while_waiting,
    log_verifies,
    snapshot,
    started,
    unpack,
    waiting_backend,
)
from .test_pair_crash import flush
from .test_store_contract import LIMITS, NOW, PLATFORM, check, new, phone_n, sent


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    yield from started()


async def grow(pair: PairStore, n: int, records: int) -> None:
    """A confirmation (`n`: its challenge, account and number; a Redis step and a
    PostgreSQL step, four records) and `records` records more."""
    at = NOW + 1000 * n
    await sent(pair, new(f"ch-{n}", now=at, account=f"acc-{n}", phone=phone_n(n)))
    await pair.check_code(check(f"ch-{n}", now=at + 1, account=f"acc-{n}"), LIMITS)
    for i in range(records):
        await pair.append_audit(PLATFORM, at + 2 + i, account=f"acc-{n}", event="x", outcome="ok")


WHERE = {
    "extend": "LOCK TABLE merkle_nodes IN SHARE MODE",
    "store": "LOCK TABLE checkpoints IN SHARE MODE",
}


@pytest.mark.parametrize("mode", ["rolled_back", "finished"])
@pytest.mark.parametrize("where", list(WHERE))
async def test_a_signer_killed_mid_signature_and_restarted_never_forks_the_log(
    worker: Worker, pair: PairStore, database: Database, database_url: str, where: str, mode: str
) -> None:
    await grow(pair, 1, 3)
    first = await log_verifies(database, PLATFORM, NOW + 10_000)
    await grow(pair, 2, 5)
    before = await snapshot(database)
    signer = {"db": database_url, "log": "checkpoint", "platform": PLATFORM}

    wrote = await killed_while_waiting(
        worker,
        database,
        (WHERE[where], ()),
        signer | {"at": NOW + 20_000},
        notice=mode == "rolled_back",
    )
    await flush(pair)

    assert wrote  # killed with its transaction's writes made, uncommitted
    after = await snapshot(database)
    if where == "store":  # the tree it extended first, in a transaction of its own, stays
        assert before["merkle_heads"] != after["merkle_heads"]
        for table in ("merkle_heads", "merkle_nodes"):
            del before[table], after[table]
    assert before == after  # nothing of the transaction it was killed in is left
    await grow(pair, 3, 2)
    restarted: StoredCheckpoint = await worker.result(**signer, at=NOW + 30_000, tag="restarted")
    await grow(pair, 4, 1)
    history = await log_verifies(database, PLATFORM, NOW + 40_000)
    assert [*first, restarted] == history[:-1]
    assert [7, 22, 27] == [c.tree_size for c in history]


async def test_two_replicas_that_both_signed_before_either_stored_never_fork(
    worker: Worker, pair: PairStore, database: Database, database_url: str
) -> None:
    """Replica A signs the log at 9 records, replica B at 13; both are held at the
    compare-and-set (the test holds the platform's checkpoint head), then let go: the first
    stores its checkpoint, the other finds the head moved and checks the stored checkpoint
    against its own tree before it signs again on top of it."""
    await grow(pair, 1, 1)
    (first,) = await log_verifies(database, PLATFORM, NOW + 10_000)
    replica = {"db": database_url, "log": "checkpoint", "platform": PLATFORM}
    pids = []
    async with database.connection() as holder:
        tx = holder.transaction()
        await tx.start()
        try:
            await holder.execute(
                "SELECT 1 FROM checkpoint_heads WHERE platform = $1 FOR UPDATE", PLATFORM
            )
            blockers = [holder.get_server_pid()]  # B waits behind A, first in line
            for n, tag in ((2, "replica-a"), (3, "replica-b")):
                await grow(pair, n, 0)
                cmd = replica | {"at": NOW + 10_000 * n, "tag": tag, "detach": True}
                pids.append((await worker.run(**cmd))["pid"])
                blockers.append((await waiting_backend(database, tag, *blockers))[0])
        finally:
            await tx.rollback()
    answered = []
    for pid in pids:
        reply = await worker.run(reap=pid)
        assert (0, True) == (reply["signal"], "ok" in reply), reply
        answered.append(unpack(reply["ok"]))

    history = await log_verifies(database, PLATFORM, NOW + 40_000)
    assert first == history[0]
    assert all(c in history for c in answered)  # each was answered a stored checkpoint
    assert [5, 9, 13] == [c.tree_size for c in history]


async def test_replicas_appending_and_signing_side_by_side_never_fork(
    worker: Worker, pair: PairStore, database: Database, database_url: str
) -> None:
    await grow(pair, 1, 0)
    replica = {"db": database_url, "log": "replica", "platform": PLATFORM, "rounds": 15}
    pids = [(await worker.run(**replica, tag=f"replica-{i}", detach=True))["pid"] for i in range(3)]
    answered: list[list[StoredCheckpoint]] = []
    for pid in pids:
        reply = await worker.run(reap=pid)
        assert (0, True) == (reply["signal"], "ok" in reply), reply
        answered.append(unpack(reply["ok"]))

    history = await log_verifies(database, PLATFORM, NOW + 40_000)
    assert 4 + 45 == history[-1].tree_size
    for seen in answered:
        assert all(c in history for c in seen)
        sizes = [c.tree_size for c in seen]
        assert sorted(sizes) == sizes  # never a smaller one after a larger one
