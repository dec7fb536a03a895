"""The two servers the benchmark measures, each run as its own OS process by `run.py`.

    python benchmarks/servers.py echo
    python benchmarks/servers.py xacthuc CONFIG_JSON
    python benchmarks/servers.py ceiling REDIS_URL [DATABASE_URL]

`echo` is a bare grpc.aio server with one generic unary method, `/bench.Echo/Echo`, that
returns the request bytes unchanged: no protobuf, no auth, no store. It is the ceiling a
Python grpc.aio service can reach on this machine, the yardstick for the xacthuc numbers.

`ceiling` is the same bare server whose one method does the irreducible work of a confirm:
one EVALSHA through redis-py (a small script writing one key with an expiry) and one Ed25519
signature of a token-sized payload (issue 11's definition): what a handler with nothing of
ours around it reaches on this stack, so the gap between it and ConfirmPhoneVerification is
what the service itself costs. With DATABASE_URL it is the durable ceiling: between the two,
the call also waits for its row to be committed in PostgreSQL, group-committed as the
service commits its steps (the rows of the calls that arrive while a commit is in flight go
in the next one: one INSERT of a batch, one round trip, one commit). One commit per call
would be no ceiling: the service commits many calls' steps in one transaction.

`xacthuc` builds the real service exactly as production does (`build_app` + `start_server`)
from the Settings overrides, API key entry and SMS gateway URL given in CONFIG_JSON. With
`"worker": {"index": i, "port": p}` in CONFIG_JSON it is one of several processes sharing
port p (SO_REUSEPORT), started as `xacthuc serve --workers N` starts its workers: only
index 0 runs the background jobs. The supervisor itself is not on the call path, so the
driver starts the workers directly and measures their CPU.

Each prints `READY <port>` on stdout once it serves, and stops on SIGTERM or SIGINT or when
its stdin reaches end-of-file, which happens when the parent dies however it dies, so a
killed benchmark never leaves servers behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

import grpc

from xacthuc.server.runtime import MAX_MESSAGE_BYTES

ECHO_METHOD = "/bench.Echo/Echo"

# The options `xacthuc.server.runtime.start_server` gives its server, so both servers are alike.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


def _stop_event() -> asyncio.Event:
    """Set on SIGTERM/SIGINT or when the parent closes our stdin."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        # The raw descriptor, not sys.stdin: a thread blocked inside the buffered reader would
        # make interpreter shutdown abort when the server exits on an error.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):  # b"" at EOF: the parent is gone or wants us to stop
                pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    return stop


def _ready(port: int) -> None:
    print(f"READY {port}", flush=True)


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve_echo() -> None:
    stop = _stop_event()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _ready(port)
    await stop.wait()
    await server.stop(0)


# A token-sized signing input (header.claims of an attestation is ~400 bytes).
CEILING_PAD = b"x" * 300
CEILING_SCRIPT = "redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000) return 1"


class _GroupCommit:
    """The least a durable step costs: each caller's row waits for one INSERT of the batch it
    joined; one batch in flight, the next gathering meanwhile (as `DurableBatcher` does)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._rows: list[tuple[int, bytes, asyncio.Future[None]]] = []
        self._flushing = False

    async def commit(self, serial: int, body: bytes) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rows.append((serial, body, done))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await done

    async def _flush(self) -> None:
        try:
            while self._rows:
                rows, self._rows = self._rows, []
                try:
                    await self._conn.execute(
                        "INSERT INTO bench_ceiling SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                        [r[0] for r in rows],
                        [r[1] for r in rows],
                    )
                except Exception as e:  # every caller of the batch gets the failure
                    for _, _, done in rows:
                        done.set_exception(e)
                else:
                    for _, _, done in rows:
                        done.set_result(None)
        finally:
            self._flushing = False


async def serve_ceiling(redis_url: str, database_url: str | None = None) -> None:
    import redis.asyncio as aioredis
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stop = _stop_event()
    client = aioredis.Redis.from_url(redis_url)
    sha = await client.script_load(CEILING_SCRIPT)
    key = Ed25519PrivateKey.generate()
    serial = itertools.count()
    group: _GroupCommit | None = None
    if database_url is not None:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_ceiling (id bigint, body bytea)")
        group = _GroupCommit(conn)

    async def work(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        n = next(serial)
        await client.evalsha(sha, 1, f"bench_ceiling:{{{n}}}", request)
        if group is not None:
            await group.commit(n, request)
        return key.sign(request + CEILING_PAD)

    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(work)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _ready(port)
    await stop.wait()
    await server.stop(0)
    await client.aclose()


async def serve_xacthuc(config: dict[str, Any]) -> None:
    from xacthuc.server.app import build_app
    from xacthuc.server.auth import ApiKeys, KeyEntry, Role
    from xacthuc.server.config import Settings
    from xacthuc.server.runtime import start_server, tune_gc

    stop = _stop_event()
    settings = Settings.load(**config["settings"])
    entry = KeyEntry(**{**config["api_key_entry"], "role": Role(config["api_key_entry"]["role"])})
    app = build_app(settings, api_keys=ApiKeys([entry]))
    worker = config.get("worker")  # {"index": i, "port": p}: one of several sharing a port
    if worker is None:
        server = await start_server(app, "127.0.0.1:0")
    else:  # as `xacthuc serve --workers N` starts each worker (xacthuc.server.workers)
        server = await start_server(
            app,
            f"127.0.0.1:{worker['port']}",
            reuse_port=True,
            background=worker["index"] == 0,
        )
    tune_gc()  # as `xacthuc serve` does once it serves
    _ready(server.port)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if argv[:1] == ["echo"]:
        asyncio.run(serve_echo())
    elif argv[:1] == ["ceiling"] and len(argv) in (2, 3):
        asyncio.run(serve_ceiling(*argv[1:]))
    elif argv[:1] == ["xacthuc"] and len(argv) == 2:
        asyncio.run(serve_xacthuc(json.loads(argv[1])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
