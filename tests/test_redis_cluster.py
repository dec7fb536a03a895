"""Redis Cluster as the store (issue 11): the URL and settings, the client, scripts on every
node (NOSCRIPT recovery, MOVED, ASK, TRYAGAIN), state-changing scripts sent once, and every
cluster fault answered as StoreUnavailable (UNAVAILABLE, STORE_UNAVAILABLE), never INTERNAL.

The shared test cluster (scripts/test.sh: 3 masters) serves the tests that break nothing;
tests that stop a master or move slots start a cluster of their own (`LocalCluster`).
Keys are tagged by the subject they protect (redis.py, docs/design/redis-cluster.md): a
number's challenges and state by its tag, which the challenge id carries. Numbers are picked
so that there is one on every master; one platform spreads over all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from grpc_health.v1._async import HealthServicer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from xacthuc.adapters.store.cached import CachedStore
from xacthuc.adapters.store.pair import PairStore
from xacthuc.adapters.store.postgres import Database
from xacthuc.adapters.store.redis_cluster import (
    ClusterClient,
    ClusterOnce,
    cluster_client,
    parse_cluster_url,
)
from xacthuc.domain.b64 import b64url_encode
from xacthuc.domain.errors import (
    SendLimitExceeded,
    StartInProgress,
    StoreUnavailable,
    XacthucError,
)
from xacthuc.domain.records import (
    CHALLENGE_CHARS,
    CHALLENGE_PREFIX,
    IdAttempt,
    Limits,
    PendingAttestation,
    challenge_head,
    challenge_record,
    number_tag,
)
from xacthuc.server.app import make_store
from xacthuc.server.config import ConfigError, Settings
from xacthuc.server.health import HealthMonitor

from .conftest import pair_store, sync_cluster
from .local_cluster import HOST, LocalCluster
from .test_redis_retries import LossyProxy
from .test_store_contract import CLIENT, LIMITS, NOW, check, cid, client_n, new, phone_n

DATABASE = "postgresql://x@127.0.0.1:5432/x"


# --------------------------------------------------------------------- URL and settings


def test_a_cluster_url_names_its_startup_nodes_credentials_and_options() -> None:
    nodes, options = parse_cluster_url(
        "rediss+cluster://app:p%40ss@r1.internal:7000,10.0.0.2:7001,[::1]:7002"
        "?socket_timeout=0.5&ssl_ca_certs=/etc/ca.pem"
    )
    assert [("r1.internal", 7000), ("10.0.0.2", 7001), ("::1", 7002)] == nodes
    assert {
        "username": "app",
        "password": "p@ss",
        "ssl": True,
        "socket_timeout": 0.5,
        "ssl_ca_certs": "/etc/ca.pem",
    } == options
    assert ([(HOST, 7000)], {}) == parse_cluster_url("redis+cluster://127.0.0.1:7000")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://127.0.0.1:7000", "redis+cluster://"),
        ("redis+cluster://127.0.0.1", "HOST:PORT"),
        ("redis+cluster://127.0.0.1:7000,:7001", "HOST:PORT"),
        ("redis+cluster://127.0.0.1:70000", "HOST:PORT"),
        ("redis+cluster://u:secret@127.0.0.1:7000/2", "no database number"),
        ("redis+cluster://u:secret@127.0.0.1:7000?db=1", "db"),
        ("redis+cluster://127.0.0.1:7000?read_from_replicas=yes", "read_from_replicas"),
        ("redis+cluster://127.0.0.1:7000?bogus=1", "bogus"),
    ],
)
def test_a_bad_cluster_url_is_refused_with_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as refused:
        parse_cluster_url(url)
    assert "secret" not in str(refused.value)


def test_settings_take_a_cluster_url_with_a_database_only() -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    assert url == Settings.load(store_url=url, database_url=DATABASE).store_url
    with pytest.raises(ConfigError, match="needs XACTHUC_DATABASE_URL"):
        Settings.load(store_url=url)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        Settings.load(store_url="redis+cluster://127.0.0.1", database_url=DATABASE)


async def test_a_cluster_store_is_the_pair_on_a_cluster_client() -> None:
    """make_store: the pair, its Redis half a cluster client, behind the state cache (fed by
    PostgreSQL, so its bound holds on a cluster too); no connection is made yet."""
    url = "redis+cluster://127.0.0.1:7000"
    cached = make_store(Settings.load(store_url=url, database_url=DATABASE))
    assert isinstance(cached, CachedStore)
    store = cached.backend
    assert isinstance(store, PairStore)
    assert store.clustered
    assert isinstance(store.client, ClusterClient)
    assert isinstance(store.once_client, ClusterOnce)
    assert store.client.load_balancing_strategy is None  # primaries only
    await cached.aclose()


# ------------------------------------------------------------- on the shared test cluster


PLATFORM = "alpha"


def number_slot(n: int) -> int:
    """The cluster slot of number `n`'s keys (phone_n(n)): its tag's."""
    return key_slot(f"{{n:{number_tag(phone_n(n))}}}".encode())


def service_id(name: str, phone: str) -> str:
    """A challenge id of the service's form for `phone` (its tag), from a test's name."""
    head = challenge_head(phone, "")
    body = b64url_encode(hashlib.sha256(name.encode()).digest())
    return head + body[: len(CHALLENGE_PREFIX) + CHALLENGE_CHARS - len(head)]


def numbers_by_node(client: ClusterClient | redis.RedisCluster) -> dict[str, int]:
    """A number for every primary (node name -> n of phone_n), whose keys live there."""
    found: dict[str, int] = {}
    primaries = {n.name for n in client.get_primaries()}
    for i in range(1000):
        node = client.get_node_from_key(f"{{n:{number_tag(phone_n(i))}}}")
        assert node is not None
        found.setdefault(node.name, i)
        if set(found) == primaries:
            return found
    raise AssertionError("no number found for some node")


@pytest.fixture
def spread(redis_cluster_url: str) -> dict[str, int]:
    with sync_cluster(redis_cluster_url) as client:
        return numbers_by_node(client)


async def phone_flow(
    store: PairStore, number: int, n: int = 1, platform: str = PLATFORM, client: str = CLIENT
) -> None:
    """Start, send and confirm a challenge for number `number` on `platform`: the
    attestation is there, and 4 records more in the platform's log."""
    phone, now = phone_n(number), NOW + 1000 * n  # past the cooldown of the number's last
    challenge = service_id(f"ch-{number}-{n}", phone)
    account = f"acc-{number}"
    before = len(await store.audit_records(platform))
    nc = new(challenge, now=now, platform=platform, account=account, phone=phone, client=client)
    await store.start_challenge(nc, LIMITS)
    await store.confirm_sent(platform, challenge, account, now)
    record = await store.check_code(
        check(challenge, now=now + 10, platform=platform, account=account), LIMITS
    )
    assert (record, None) == await store.account_state(platform, account)
    assert before + 4 == len(await store.audit_records(platform))


async def test_the_flows_run_on_every_node(
    redis_cluster_url: str, redis_cluster_namespace: str, spread: dict[str, int], database: Database
) -> None:
    assert 3 == len(spread)
    store = pair_store(redis_cluster_url, redis_cluster_namespace, database)
    for number in spread.values():
        await phone_flow(store, number)
    await store.ping()
    await store.aclose()


async def test_every_node_that_forgot_the_scripts_is_taught_them_again(
    redis_cluster_url: str, redis_cluster_namespace: str, spread: dict[str, int], database: Database
) -> None:
    """SCRIPT FLUSH on every primary: each node answers NOSCRIPT once per script, loads it,
    and the call (a state-changing one too) runs, once."""
    store = pair_store(redis_cluster_url, redis_cluster_namespace, database)
    for number in spread.values():
        await phone_flow(store, number, 1)
    with sync_cluster(redis_cluster_url) as admin:
        admin.script_flush()  # on every primary
        for number in spread.values():
            await phone_flow(store, number, 2)
        start_sha = store.redis_half._steps["start_number"].sha
        for node in admin.get_primaries():
            with redis.Redis(host=node.host, port=node.port) as direct:
                assert [True] == direct.script_exists(start_sha)
    await store.aclose()


@contextlib.asynccontextmanager
async def lossy_cluster(
    url: str, drops: int
) -> AsyncIterator[tuple[ClusterClient, list[LossyProxy]]]:
    """A retrying cluster client (3 retries) whose every node is reached through a
    LossyProxy: each node's first `drops` EVALSHA replies are cut off."""
    import asyncio

    proxies: dict[int, LossyProxy] = {}
    servers = []
    for host, port in parse_cluster_url(url)[0]:
        proxy = LossyProxy((host, port), drops)
        server = await asyncio.start_server(proxy.handle, HOST, 0)
        proxy.port = int(server.sockets[0].getsockname()[1])
        proxies[port] = proxy
        servers.append(server)
    first = next(iter(proxies.values()))
    client = cluster_client(
        f"redis+cluster://{HOST}:{first.port}",
        retry=Retry(NoBackoff(), 3),
        address_remap=lambda addr: (HOST, proxies[addr[1]].port),
    )
    try:
        yield client, list(proxies.values())
    finally:
        await client.aclose()
        for server in servers:
            server.close()
    # Closed, though its last command may have failed (redis-py 8.1 then closed nothing).
    assert not [c for n in client.get_nodes() for c in n._connections if c.is_connected]


async def test_a_script_is_sent_once_on_a_retrying_cluster_client(
    redis_cluster_url: str, redis_cluster_namespace: str, spread: dict[str, int], database: Database
) -> None:
    """The reply to a start's first script (the number's step) is cut off on every node in
    turn: StoreUnavailable, and the script ran once (one send counted on the number; the
    cluster client retries 3 times otherwise), nothing after it was sent."""
    async with lossy_cluster(redis_cluster_url, drops=10) as (client, proxies):
        store = pair_store(redis_cluster_url, redis_cluster_namespace, database, client=client)
        for n, number in enumerate(spread.values(), start=1):
            phone = phone_n(number)
            with pytest.raises(StoreUnavailable):
                await store.start_challenge(new(service_id(f"ch-{n}", phone), phone=phone), LIMITS)
            assert n == sum(p.dropped for p in proxies)
    with sync_cluster(redis_cluster_url) as direct:
        for number in spread.values():
            phone = phone_n(number)
            state = f"{redis_cluster_namespace}:{PLATFORM}:{{n:{number_tag(phone)}}}:p:{phone}"
            assert 17 == direct.strlen(state)  # no lock state, the last send, one send
        assert 0 == direct.llen(f"{redis_cluster_namespace}:{PLATFORM}:{{pl:{PLATFORM}}}:pl")


# ------------------------------------------------------- on a cluster of the test's own


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """3 masters for one test. node-timeout 60 s: a stopped master is not declared failed
    (by the others, turning the whole cluster down) while the test runs."""
    cluster = LocalCluster.started(tmp_path / "cluster", node_timeout_ms=60_000)
    yield cluster
    cluster.stop()


def own_numbers(cluster: LocalCluster) -> dict[int, int]:
    """A number for every master (port -> n of phone_n)."""
    found: dict[int, int] = {}
    for i in range(1000):
        found.setdefault(cluster.owner(number_slot(i)), i)
        if len(found) == cluster.masters:
            return found
    raise AssertionError("no number found for some node")


def shared_keys_owner(cluster: LocalCluster) -> tuple[int, str]:
    """The master of the platform's send budget, and an address whose sends' bucket it holds
    too: the keys every start of the platform (from that address) needs besides its number's."""
    owner = cluster.owner(key_slot(f"{{pl:{PLATFORM}}}".encode()))
    for i in range(1000):
        client = client_n(i)
        bucket = hashlib.sha1(client.encode()).hexdigest()[:2]  # noqa: S324  (redis.py _ip_key)
        if cluster.owner(key_slot(f"{{i:{bucket}}}".encode())) == owner:
            return owner, client
    raise AssertionError("no address found")


async def test_a_stopped_master_takes_its_slots_only_and_health_follows(
    own_cluster: LocalCluster, database: Database
) -> None:
    """A master that holds neither the platform's budget nor the address's sends is killed:
    calls of the numbers whose keys it held are StoreUnavailable, the other masters' numbers
    are served, health says NOT_SERVING. Restarted (empty, its scripts forgotten),
    everything is served again and health is SERVING. (Killing the budget's master would
    stop every start of the platform: docs/design/redis-cluster.md.)"""
    numbers = own_numbers(own_cluster)
    shared, client = shared_keys_owner(own_cluster)
    store = pair_store(own_cluster.url, "t", database)
    monitor = HealthMonitor(
        HealthServicer(), ["xacthuc.v1.VerificationService"], {"store": store.ping},
        interval=1, timeout=5,
    )  # fmt: skip
    for number in numbers.values():
        await phone_flow(store, number, client=client)
    assert await monitor.update()

    down = next(port for port in own_cluster.ports if port != shared)
    own_cluster.stop_node(down)
    phone = phone_n(numbers[down])
    challenge = service_id("ch-9", phone)
    with pytest.raises(StoreUnavailable):
        await store.start_challenge(new(challenge, phone=phone, client=client), LIMITS)
    with pytest.raises(StoreUnavailable):
        await store.check_code(check(challenge, now=NOW + 1), LIMITS)
    for port, number in numbers.items():
        if port != down:
            await phone_flow(store, number, 2, client=client)
    assert {"store": "StoreUnavailable (ConnectionError)"} == await monitor.probe()
    assert not await monitor.update()

    own_cluster.start_node(down)
    own_cluster.wait_ok()
    assert await monitor.update()
    await phone_flow(store, numbers[down], 3, client=client)  # its data went; NOSCRIPT answered
    await store.aclose()


async def test_clusterdown_and_an_unserved_slot_are_unavailable(
    own_cluster: LocalCluster, database: Database
) -> None:
    """A slot its master stops serving (CLUSTER DELSLOTS): that master says CLUSTERDOWN,
    reported as StoreUnavailable to a script (sent once), and health is NOT_SERVING; served again, all is well. The slot taken from every node's
    table: the client cannot learn a full layout, and every call is StoreUnavailable."""
    numbers = own_numbers(own_cluster)
    number = numbers[own_cluster.ports[0]]
    slot = number_slot(number)
    store = pair_store(own_cluster.url, "t", database)
    await phone_flow(store, number)

    owner = own_cluster.client(own_cluster.ports[0])
    owner.cluster("DELSLOTS", slot)
    phone = phone_n(number)
    with pytest.raises(StoreUnavailable) as write:
        await store.start_challenge(
            new(service_id("ch-9", phone), now=NOW + 5000, phone=phone), LIMITS
        )
    assert isinstance(write.value.__cause__, redis.exceptions.ClusterDownError)
    with pytest.raises(StoreUnavailable):
        await store.ping()

    owner.cluster("ADDSLOTS", slot)
    own_cluster.wait_ok()
    await phone_flow(store, number, 2)
    await store.ping()

    for port in own_cluster.ports:
        with own_cluster.client(port) as node:
            node.cluster("DELSLOTS", slot)
    for n, other in enumerate(numbers.values()):
        with pytest.raises(StoreUnavailable):
            await store.confirm_sent(PLATFORM, service_id(f"ch-x{n}", phone_n(other)), "acc-1", NOW)
    owner.cluster("ADDSLOTS", slot)
    own_cluster.wait_ok()
    await phone_flow(store, number, 3)
    owner.close()
    await store.aclose()


def twin_of(number: int) -> int:
    """Another number of the same tag: its keys hash to the same slot."""
    tag = number_tag(phone_n(number))
    return next(i for i in itertools.count(number + 1) if number_tag(phone_n(i)) == tag)


async def test_ask_and_moved_are_followed_and_tryagain_is_unavailable(
    own_cluster: LocalCluster, database: Database
) -> None:
    """A number's slot migrates from master A to master B (whose scripts are flushed).
    While it migrates, a one-key call on a challenge of the same tag that has no keys yet is
    asked to B (ASK followed, NOSCRIPT answered there; sent once). A step of several keys
    not all on A gets TRYAGAIN (from A when some are there, from B when none is) until the
    client gives up: StoreUnavailable, nothing run. Once moved, a client whose slot table
    still says A is redirected (MOVED) and finds the state on B."""
    a, b = own_cluster.ports[0], own_cluster.ports[1]
    number = own_numbers(own_cluster)[a]
    twin = twin_of(number)
    slot = number_slot(number)
    store = pair_store(own_cluster.url, "t", database)
    await phone_flow(store, number)
    stale = pair_store(own_cluster.url, "t", database)
    await stale.ping()  # its slot table: the slot is A's
    node_a, node_b = own_cluster.client(a), own_cluster.client(b)
    id_a, id_b = node_a.cluster("MYID"), node_b.cluster("MYID")
    node_b.script_flush()

    node_b.cluster("SETSLOT", slot, "IMPORTING", id_a)
    node_a.cluster("SETSLOT", slot, "MIGRATING", id_b)
    # A new client: one connection per node (redis-py 8.1 sends ASKING on any idle pooled
    # connection of the node, so with several the command may miss it: then MOVED back to
    # A, and after 16 bounces StoreUnavailable; docs/design/redis-cluster.md).
    asker = pair_store(own_cluster.url, "t", database)
    missing = service_id("ch-t", phone_n(twin))
    await asker.confirm_sent(PLATFORM, missing, "acc-1", NOW)  # one key, missing on A: ASK
    record = f"t:{PLATFORM}:{{n:{number_tag(phone_n(twin))}}}:c:{challenge_record(missing)[0]}"
    with pytest.raises(redis.exceptions.AskError):  # A has no such key: it asks B
        node_a.get(record)
    phone = phone_n(number)
    with pytest.raises(StoreUnavailable) as tryagain:  # the number's state is on A, not the rest
        await store.start_challenge(
            new(service_id("ch-2", phone), now=NOW + 5000, account="acc-2", phone=phone), LIMITS
        )
    assert isinstance(tryagain.value.__cause__, redis.exceptions.ClusterError)  # TTL spent
    twin_phone = phone_n(twin)
    with pytest.raises(StoreUnavailable) as tryagain:  # no key on A: B says TRYAGAIN
        await asker.start_challenge(new(service_id("ch-3", twin_phone), phone=twin_phone), LIMITS)
    assert isinstance(tryagain.value.__cause__, redis.exceptions.ClusterError)

    keys = node_a.cluster("GETKEYSINSLOT", slot, 1000)
    assert keys
    node_a.migrate(HOST, b, keys, 0, 5000)
    for port in own_cluster.ports:
        with own_cluster.client(port) as node:
            node.cluster("SETSLOT", slot, "NODE", id_b)
    own_cluster.wait_ok()
    assert b == own_cluster.owner(slot)

    node_b.script_flush()
    await phone_flow(stale, number, 2)  # MOVED, then NOSCRIPT on B; the log goes on
    assert 8 == len(await stale.audit_records(PLATFORM))  # the refused starts wrote nothing
    node_a.close()
    node_b.close()
    for s in (store, stale, asker):
        await s.aclose()


# --------------------------------------------------- the layout by subject (issue 11 item 1)


class ScriptLog:
    """Every script the store sends through its cluster client: the step (by SHA), its keys,
    and the round it went in (scripts sent while another of the call is in flight share a
    round: they were sent together)."""

    def __init__(self, store: PairStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.store = store
        self.calls: list[tuple[str, list[str], int]] = []
        self.rounds = 0
        self._in_flight = 0
        once = store.redis_half.once_client
        evalsha = once.evalsha

        async def logged(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            if self._in_flight == 0:
                self.rounds += 1
            self._in_flight += 1
            try:
                self.calls.append((sha, [str(k) for k in keys_and_args[:numkeys]], self.rounds))
                return await evalsha(sha, numkeys, *keys_and_args)
            finally:
                self._in_flight -= 1

        monkeypatch.setattr(once, "evalsha", logged)

    def clear(self) -> None:
        self.calls.clear()
        self.rounds = 0

    def steps(self) -> list[str]:
        names = {s.sha: name for name, s in self.store.redis_half._steps.items()}
        names |= {s.sha: name for name, s in self.store.redis_half._scripts.items()}
        return sorted(names[sha] for sha, _, _ in self.calls)


async def test_one_platform_spreads_over_every_master(
    redis_cluster_url: str, redis_cluster_namespace: str, database: Database
) -> None:
    """A few hundred starts of one platform (distinct numbers, a few addresses): every
    primary then holds keys of `<ns>:<platform>:`, the platform is no longer one slot."""
    store = pair_store(redis_cluster_url, redis_cluster_namespace, database)
    limits = Limits(sends_per_platform_hour=1_000, sends_per_client_ip_hour=1_000)
    for i in range(300):
        phone = phone_n(i)
        nc = new(service_id(f"s{i}", phone), phone=phone, account=f"a{i}", client=client_n(i % 20))
        await store.start_challenge(nc, limits)
    await store.aclose()
    with sync_cluster(redis_cluster_url) as admin:
        held = {}
        for node in admin.get_primaries():
            with redis.Redis(host=node.host, port=node.port) as direct:
                match = f"{redis_cluster_namespace}:{PLATFORM}:*"
                held[node.name] = sum(1 for _ in direct.scan_iter(match=match, count=1000))
    assert 3 == len(held)
    assert all(n > 50 for n in held.values()), held


async def test_every_script_touches_one_slot_and_the_round_trips_are_the_designs(
    redis_cluster_url: str,
    redis_cluster_namespace: str,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each operation's scripts on a cluster, their keys all in one slot per script, and
    their rounds (scripts sent together count once): start 2 (3 with an idempotency key),
    confirm 1, check 1, abort 2, begin an ID check 2, finish it 1; a start refused by the
    platform's budget 3 (its undoing sent together)."""
    store = pair_store(redis_cluster_url, redis_cluster_namespace, database)
    log = ScriptLog(store, monkeypatch)
    phone, other = phone_n(1), phone_n(2)
    plain, keyed = service_id("plain", phone), cid("keyed", "k-1", other)
    id_attempt = IdAttempt(
        platform=PLATFORM, attempt_id="at-1", account_id="acc-1",
        subject="id_" + "d" * 32, client=CLIENT, purpose="no_vietnamese_mobile", now=NOW,
    )  # fmt: skip
    pending = PendingAttestation(
        token_id="tok-id", issued_at=NOW, expires_at=NOW + 86_400, method="personal_id"
    )
    tight = Limits(sends_per_platform_hour=2)
    operations: list[tuple[str, Callable[[], Awaitable[object]], list[str], int]] = [
        (
            "start",
            lambda: store.start_challenge(new(plain, phone=phone), LIMITS),
            ["reserve_ip", "reserve_platform", "start_number"],
            2,
        ),
        ("confirm", lambda: store.confirm_sent(PLATFORM, plain, "acc-1", NOW), ["confirm_sent"], 1),
        (
            "check",
            lambda: store.check_code(check(plain, now=NOW + 1), LIMITS),
            ["check_code"],
            1,
        ),
        (
            "keyed start",
            lambda: store.start_challenge(new("keyed", phone=other, key="k-1"), tight),
            ["claim_start", "reserve_ip", "reserve_platform", "start_number"],
            3,
        ),
        (
            "abort",
            lambda: store.abort_challenge(PLATFORM, keyed, "acc-1", NOW + 2),
            ["abort_number", "claim_release", "release_ip", "release_platform"],
            2,
        ),
        (
            "refused start",
            lambda: store.start_challenge(
                new(service_id("x", phone_n(3)), phone=phone_n(3), client=client_n(3)),
                Limits(sends_per_platform_hour=1),
            ),
            ["release_ip", "reserve_ip", "reserve_platform", "start_number", "unstart_number"],
            3,
        ),
        (
            "begin ID",
            lambda: store.begin_id_check(id_attempt, LIMITS),
            ["id_begin_account", "id_begin_number"],
            2,
        ),
        (
            "finish ID",
            lambda: store.finish_id_check(id_attempt, "no_match", pending, LIMITS),
            ["id_finish", "id_finish"],
            1,
        ),
    ]
    for _, operation, _, _ in operations:  # every script made once, then loaded everywhere
        with contextlib.suppress(XacthucError):
            await operation()
    with sync_cluster(redis_cluster_url) as admin:
        half = store.redis_half
        for script in [*half._steps.values(), *half._scripts.values()]:
            for node in admin.get_primaries():
                with redis.Redis(host=node.host, port=node.port) as direct:
                    direct.script_load(script.source)
    await store.aclose()
    store = pair_store(redis_cluster_url, f"{redis_cluster_namespace}-2", database)
    store.redis_half._steps.update(half._steps)
    log = ScriptLog(store, monkeypatch)
    seen = {}
    for name, operation, _, _ in operations:
        log.clear()
        with contextlib.suppress(XacthucError):
            await operation()
        seen[name] = (log.steps(), log.rounds)
        for _, keys, _ in log.calls:
            assert len({key_slot(k.encode()) for k in keys}) == 1, (name, keys)
    await store.aclose()
    assert {name: (steps, rounds) for name, _, steps, rounds in operations} == seen


async def test_concurrent_starts_never_exceed_a_small_platform_budget(
    redis_cluster_url: str, redis_cluster_namespace: str, database: Database
) -> None:
    """40 starts at once (distinct numbers and addresses) against a platform budget of 5:
    exactly 5 are admitted (a reservation is checked and counted in one step; none was
    undone, so none was under-admitted), the others refused SEND_LIMIT_EXCEEDED (platform)
    and undone on their numbers: the platform's log holds 5 sends."""
    store = pair_store(redis_cluster_url, redis_cluster_namespace, database)
    limits = Limits(sends_per_platform_hour=5)

    async def start(i: int) -> str:
        phone = phone_n(100 + i)
        nc = new(service_id(f"c{i}", phone), phone=phone, account=f"a{i}", client=client_n(i))
        try:
            await store.start_challenge(nc, limits)
        except SendLimitExceeded as e:
            return str(e.metadata["scope"])
        return "ok"

    outcomes = await asyncio.gather(*(start(i) for i in range(40)))
    assert {"ok": 5, "platform_hour": 35} == {o: outcomes.count(o) for o in set(outcomes)}
    with pytest.raises(SendLimitExceeded):
        await store.start_challenge(new(service_id("late", phone_n(99)), phone=phone_n(99)), limits)
    records = [json.loads(r) for r in await store.audit_records(PLATFORM)]
    assert 5 == sum(r["outcome"] == "ok" for r in records)
    assert 36 == sum(r["reason"] == "SEND_LIMIT_EXCEEDED" for r in records)
    await store.aclose()
    with sync_cluster(redis_cluster_url) as direct:
        assert 5 == direct.llen(f"{redis_cluster_namespace}:{PLATFORM}:{{pl:{PLATFORM}}}:pl")
        # The refused starts' numbers were given back: no cooldown left on them.
        tag = number_tag(phone_n(100))
        assert direct.exists(
            f"{redis_cluster_namespace}:{PLATFORM}:{{n:{tag}}}:p:{phone_n(100)}"
        ) in (0, 1)


async def test_concurrent_starts_with_one_key_create_one_challenge(
    redis_cluster_url: str, redis_cluster_namespace: str, database: Database
) -> None:
    """Five starts at once with one idempotency key (the same request retried): the key's
    claim is atomic, so one challenge is created and the others are START_IN_PROGRESS, also
    those whose number's step runs before the first's (the claim is younger than the send
    lease); once its code is sent, a retry replays it."""
    store = pair_store(redis_cluster_url, redis_cluster_namespace, database)
    phone = phone_n(7)
    limits = Limits(resend_cooldown_seconds=0)

    async def start(i: int) -> str:
        try:
            view = await store.start_challenge(new(f"r{i}", phone=phone, key="k-race"), limits)
        except StartInProgress:
            return "in progress"
        return view.challenge_id

    outcomes = await asyncio.gather(*(start(i) for i in range(5)))
    created = [o for o in outcomes if o != "in progress"]
    assert (1, 4) == (len(created), outcomes.count("in progress"))
    await store.confirm_sent(PLATFORM, created[0], "acc-1", NOW)
    replay = await store.start_challenge(new("r9", now=NOW + 1, phone=phone, key="k-race"), limits)
    assert (created[0], True) == (replay.challenge_id, replay.replayed)
    await store.aclose()
