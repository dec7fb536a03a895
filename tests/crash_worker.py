"""The processes the crash tests kill (tests/test_pair_kill.py, tests/test_checkpoint_kill.py).

`python -m tests.crash_worker` is a zygote: it imports the service once, then, for each
command (one JSON line on stdin), forks a process that runs it on a fresh pool and a fresh
store of its own, nothing shared with the zygote or any other command (the zygote opens no
connection and runs no event loop, so a fork starts clean). A command is one call of the
pair store (`store`: the method, `args`: the pickled arguments) or of a checkpointer
(`log`: "checkpoint", or "replica": append and sign in a loop), against the PostgreSQL
database `db` whose connections carry `application_name` = `tag` (the test finds the
process's backend by it) and, with `check_ms`, `client_connection_check_interval` (the
backend then notices a client that died while it waits for a lock, and rolls back).

* by default the zygote answers the call's outcome once the process exited:
  `{"ok": <pickled result>}`, `{"refused": <reason>}` (a domain refusal), or `{"crash": ...}`;
* `"detach": true`: it answers the process id at once, while the call runs; the test may
  SIGKILL it (no cleanup of any kind: the kernel closes its sockets), and asks the zygote to
  `reap` it: the outcome then (none when it was killed) and the signal that ended it.

Forking from one zygote instead of starting an interpreter per process keeps the tests fast
(an interpreter start and the imports cost about a second on a loaded machine).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pickle
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xacthuc.adapters.metrics import PrometheusLogMetrics
from xacthuc.adapters.store.checkpoints import PostgresCheckpointStore
from xacthuc.adapters.store.pg_audit import PostgresAuditLog, PostgresLogReader
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.audit_verify import verify_export
from xacthuc.domain.checkpoint import Checkpoint, open_note
from xacthuc.domain.clock import FixedClock, SystemClock
from xacthuc.domain.errors import XacthucError
from xacthuc.domain.merkle import verify_consistency
from xacthuc.ports.checkpoints import StoredCheckpoint
from xacthuc.verifiers.auditlog import AuditLog

from .conftest import pair_store

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "xacthuc.test/log"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def pack(value: Any) -> str:
    return base64.b64encode(pickle.dumps(value)).decode()


def unpack(text: str) -> Any:
    # Only ever what this test run pickled itself (zygote and tests, over a pipe).
    return pickle.loads(base64.b64decode(text))  # noqa: S301


def tagged(url: str, tag: str, check_ms: int = 0) -> str:
    """`url` with the connection's application_name (and client check interval) as server
    settings (asyncpg passes unknown DSN query parameters on as such)."""
    settings = {"application_name": tag}
    if check_ms:
        settings["client_connection_check_interval"] = str(check_ms)
    return f"{url}{'&' if '?' in url else '?'}{urlencode(settings)}"


def audit_log(db: Database, at: float | None, *, every_records: int = 1) -> AuditLog:
    """A checkpointer as a replica runs it (its clock stopped at `at`; None: the system
    clock), signing with LOG_KEY a checkpoint every `every_records` records."""
    return AuditLog(
        PostgresLogReader(db),
        PostgresCheckpointStore(db),
        LOG_KEY,
        SystemClock() if at is None else FixedClock(at),
        origin=ORIGIN,
        every_records=every_records,
        every_seconds=3600,
        metrics=PrometheusLogMetrics(),
    )


async def _run(cmd: dict[str, Any]) -> Any:
    # A long command timeout: a call may wait for the test's locks while a loaded machine
    # runs the test's next steps.
    url = tagged(cmd["db"], cmd["tag"], cmd.get("check_ms", 0))
    db = Database(url, min_size=0, max_size=2, timeout=60)
    try:
        if "store" in cmd:
            store = pair_store(cmd["redis"], cmd["ns"], db)
            try:
                return await getattr(store, cmd["store"])(*unpack(cmd["args"]))
            finally:
                await store.aclose()
        platform, at = cmd["platform"], cmd.get("at")
        if cmd["log"] == "checkpoint":
            return await audit_log(db, at).checkpoint(platform, on_demand=True)
        assert "replica" == cmd["log"]
        # Append one record and ask for a checkpoint, `rounds` times: what each of several
        # replicas serving one platform does (the system clock: theirs is one machine's).
        # Returns every checkpoint it was answered.
        log, seen = PostgresAuditLog(db), []
        for i in range(cmd["rounds"]):
            await log.append_audit(
                platform, time.time(), account=f"{cmd['tag']}-{i}", event="code_sent", outcome="ok"
            )
            seen.append(await audit_log(db, None).checkpoint(platform, on_demand=True))
        return seen
    finally:
        await db.aclose()


def _child(cmd: dict[str, Any], out: int) -> None:
    try:
        reply = {"ok": pack(asyncio.run(_run(cmd)))}
    except XacthucError as e:
        reply = {"refused": e.reason}
    except BaseException as e:
        reply = {"crash": repr(e)}
    with os.fdopen(out, "wb") as f:
        f.write(json.dumps(reply).encode())
    os._exit(0)


def main() -> None:
    pipes: dict[int, int] = {}
    while line := sys.stdin.readline():
        cmd = json.loads(line)
        if "reap" in cmd:  # a detached process: its end (it exited, or was killed)
            pid = cmd["reap"]
            reply: dict[str, Any] = _reply(pipes.pop(pid))
            _, status = os.waitpid(pid, 0)
            reply["signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        else:
            sys.stdout.flush()
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(cmd, w)
            os.close(w)
            if cmd.get("detach"):
                pipes[pid] = r
                reply = {"pid": pid}
            else:
                reply = _reply(r)
                os.waitpid(pid, 0)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def _reply(fd: int) -> dict[str, Any]:
    """What the process wrote before it ended (nothing when it was killed)."""
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    return dict(json.loads(data)) if data else {}


# ---- the test side ------------------------------------------------------------------------


class Worker:
    """The zygote process and its commands (`send` blocks: `run` sends from a thread)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            text=True,
        )

    def send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the crash worker died"
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def run(self, **cmd: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.send, cmd)

    async def result(self, **cmd: Any) -> Any:
        """The outcome of a call run to its end in a process of its own: its result, or
        the reason of its refusal."""
        reply = await self.run(**cmd)
        assert "crash" not in reply, reply["crash"]
        return unpack(reply["ok"]) if "ok" in reply else reply["refused"]

    async def kill(self, pid: int) -> dict[str, Any]:
        """SIGKILL a detached process; what it answered before (if anything)."""
        os.kill(pid, signal.SIGKILL)
        reply = await self.run(reap=pid)
        assert signal.SIGKILL == reply.pop("signal"), reply
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def started() -> Iterator[Worker]:
    worker = Worker()
    try:
        yield worker
    finally:
        worker.close()


T = TypeVar("T")


async def until(probe: Callable[[], Awaitable[T | None]], what: str, seconds: float = 30) -> T:
    """The first answer of `probe` that is not None, asked every 5 ms: a wait for a state of
    PostgreSQL (a backend waiting for a lock, a backend gone), which tells no one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (found := await probe()) is None:
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)
    return found


async def waiting_backend(db: Database, tag: str, *blockers: int) -> tuple[int, bool]:
    """The backend of the process tagged `tag` once it waits for a lock one of the backends
    `blockers` holds (or waits for first), and whether its transaction wrote anything
    before (it has a transaction id)."""

    async def probe() -> tuple[int, bool] | None:
        async with db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT pid, backend_xid IS NOT NULL AS wrote,"
                " pg_blocking_pids(pid) && $2::int[] AS blocked"
                " FROM pg_stat_activity WHERE application_name = $1",
                tag,
                blockers,
            )
        return (int(row["pid"]), bool(row["wrote"])) if row is not None and row["blocked"] else None

    return await until(probe, f"{tag} to wait for a lock of {blockers}")


async def backend_gone(db: Database, pid: int) -> None:
    async def probe() -> bool | None:
        async with db.connection() as conn:
            alive = await conn.fetchval("SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid)
        return True if alive is None else None

    await until(probe, f"backend {pid} to end")


@dataclass
class Killed:
    """How a process was killed: whether its transaction had written anything then, and
    what `meanwhile` returned."""

    wrote: bool
    meanwhile: Any = None


async def killed_while_waiting(
    worker: Worker,
    db: Database,
    hold: tuple[str, Sequence[Any]],
    cmd: dict[str, Any],
    *,
    notice: bool,
    meanwhile: Callable[[int, int], Awaitable[Any]] | None = None,
) -> Killed:
    """Run `cmd` in a process of its own while the test holds a lock (`hold`: SQL run in a
    transaction left open); once the process's PostgreSQL step waits for that lock (the
    call sent, its transaction open: the writes made before it are in, uncommitted),
    SIGKILL the process. Then, `notice`: its backend checks for a lost client
    (client_connection_check_interval) and ends, rolling back, before the lock is released;
    otherwise the lock is released and the backend runs the call to its end, with no
    client to answer. `meanwhile(holder, orphan)` runs before the lock is released (after
    the orphaned backend `orphan` is gone, with `notice`). Returns once that backend is
    gone."""
    tag = "crash-" + secrets.token_hex(4)
    async with db.connection() as holder:
        tx = holder.transaction()
        await tx.start()
        try:
            await holder.execute(hold[0], *hold[1])
            pid = (await worker.run(**cmd, tag=tag, detach=True, check_ms=20 if notice else 0))[
                "pid"
            ]
            try:
                backend, wrote = await waiting_backend(db, tag, holder.get_server_pid())
            finally:
                left = await worker.kill(pid)
            assert {} == left, left  # it was killed waiting, with nothing to say
            if notice:
                await backend_gone(db, backend)
            killed = Killed(wrote)
            if meanwhile is not None:
                killed.meanwhile = await meanwhile(holder.get_server_pid(), backend)
        finally:
            await tx.rollback()
    await backend_gone(db, backend)
    return killed


async def snapshot(db: Database) -> dict[str, list[str]]:
    """Every row of every table (the audit log's partitions through their parent)."""
    async with db.connection() as conn:
        tables = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " AND c.relname <> 'schema_migrations'"
        )
        found = {}
        for t in tables:
            # The names come from the catalog, not from any input.
            rows = await conn.fetch(f'SELECT * FROM "{t["relname"]}"')  # noqa: S608
            found[t["relname"]] = sorted(repr(tuple(r.values())) for r in rows)
    return found


async def log_verifies(db: Database, platform: str, at: float) -> list[StoredCheckpoint]:
    """The platform's audit log holds records 0..n-1 without a gap, each numbered by its
    index; a checkpointer of a fresh process (clock `at`) signs a checkpoint of it; every
    pair of stored checkpoints is consistent (an RFC 9162 proof verifies), their sizes go
    up as they were signed, and the export verifies offline (`xacthuc audit verify`'s
    function) against the newest with every older one. Returns the stored checkpoints."""
    log = audit_log(db, at)
    records = PostgresAuditLog(db)
    size = await records.size(platform)
    texts = await records.audit_records(platform)
    assert list(range(size)) == [json.loads(t)["seq"] for t in texts]
    newest = await log.checkpoint(platform, on_demand=True)
    assert newest is not None
    assert (size, None) == (newest.tree_size, log.problem(platform))
    history = await log.checkpoint_history(platform)
    assert newest == history[-1]
    assert sorted(c.signed_at for c in history) == [c.signed_at for c in history]
    for i, a in enumerate(history):
        assert Checkpoint(log.origin(platform), a.tree_size, a.root_hash) == Checkpoint.parse(
            open_note(a.note, log.origin(platform), LOG_KEY.public_key())
        )
        assert a.root_hash == await log.root(platform, a.tree_size)
        for b in history[i + 1 :]:
            assert a.tree_size < b.tree_size
            proof = await log.consistency_proof(platform, a.tree_size, b.tree_size)
            verify_consistency(a.tree_size, b.tree_size, proof, a.root_hash, b.root_hash)
    export = b"".join([chunk async for chunk in log.export(platform, 0, size)])
    verdict = verify_export(
        export.splitlines(keepends=True),
        newest.note,
        log.verifier_key(platform),
        [c.note for c in history[:-1]],
    )
    assert verdict.ok, verdict.text()
    return history


if __name__ == "__main__":
    main()
