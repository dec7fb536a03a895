"""Redis Cluster as the store (issue 11): the URL and settings, the client, scripts on every
node (NOSCRIPT recovery, MOVED, ASK, TRYAGAIN), state-changing scripts sent once, and every
cluster fault answered as StoreUnavailable (UNAVAILABLE, STORE_UNAVAILABLE), never INTERNAL.

The shared test cluster (scripts/test.sh: 3 masters) serves the tests that break nothing;
tests that stop a master or move slots start a cluster of their own (`LocalCluster`).
Platforms are picked so that there is one on every master: today a platform's keys share
one hash tag, `{platform}` (redis.py), so a platform lives on one node.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

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
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.server.app import make_store
from xacthuc.server.config import ConfigError, Settings
from xacthuc.server.health import HealthMonitor

from .conftest import pair_store, sync_cluster
from .local_cluster import HOST, LocalCluster
from .test_redis_retries import LossyProxy
from .test_store_contract import LIMITS, NOW, check, client_n, new, phone_n

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


def platforms_by_node(client: ClusterClient | redis.RedisCluster) -> dict[str, str]:
    """A platform for every primary (node name -> platform), whose keys live there."""
    found: dict[str, str] = {}
    primaries = {n.name for n in client.get_primaries()}
    for i in range(1000):
        platform = f"plat{i}"
        node = client.get_node_from_key(f"{{{platform}}}")
        assert node is not None
        found.setdefault(node.name, platform)
        if set(found) == primaries:
            return found
    raise AssertionError("no platform found for some node")


@pytest.fixture
def spread(redis_cluster_url: str) -> dict[str, str]:
    with sync_cluster(redis_cluster_url) as client:
        return platforms_by_node(client)


async def phone_flow(store: PairStore, platform: str, n: int = 1) -> None:
    """Start, send and confirm a challenge on `platform`: the attestation is there, and 4
    records more in the platform's log."""
    challenge = f"ch-{platform}-{n}"
    account = f"acc-{n}"
    before = len(await store.audit_records(platform))
    nc = new(challenge, platform=platform, account=account, phone=phone_n(n), client=client_n(n))
    await store.start_challenge(nc, LIMITS)
    await store.confirm_sent(platform, challenge, account, NOW)
    record = await store.check_code(
        check(challenge, now=NOW + 10, platform=platform, account=account), LIMITS
    )
    assert (record, None) == await store.account_state(platform, account)
    assert before + 4 == len(await store.audit_records(platform))


async def test_the_flows_run_on_every_node(
    redis_cluster_url: str, redis_cluster_namespace: str, spread: dict[str, str], database: Database
) -> None:
    assert 3 == len(spread)
    store = pair_store(redis_cluster_url, redis_cluster_namespace, database)
    for platform in spread.values():
        await phone_flow(store, platform)
    await store.ping()
    await store.aclose()


async def test_every_node_that_forgot_the_scripts_is_taught_them_again(
    redis_cluster_url: str, redis_cluster_namespace: str, spread: dict[str, str], database: Database
) -> None:
    """SCRIPT FLUSH on every primary: each node answers NOSCRIPT once per script, loads it,
    and the call (a state-changing one too) runs, once."""
    store = pair_store(redis_cluster_url, redis_cluster_namespace, database)
    for platform in spread.values():
        await phone_flow(store, platform, 1)
    with sync_cluster(redis_cluster_url) as admin:
        admin.script_flush()  # on every primary
        for platform in spread.values():
            await phone_flow(store, platform, 2)
        start_sha = store.redis_half._scripts["start_challenge"].sha
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
    redis_cluster_url: str, redis_cluster_namespace: str, spread: dict[str, str], database: Database
) -> None:
    """The reply to start_challenge is cut off on every node in turn: StoreUnavailable, and
    the script ran once (one send counted; the cluster client retries 3 times otherwise)."""
    async with lossy_cluster(redis_cluster_url, drops=10) as (client, proxies):
        store = pair_store(redis_cluster_url, redis_cluster_namespace, database, client=client)
        for n, platform in enumerate(spread.values(), start=1):
            with pytest.raises(StoreUnavailable):
                await store.start_challenge(new(f"ch-{n}", platform=platform), LIMITS)
            assert n == sum(p.dropped for p in proxies)
    with sync_cluster(redis_cluster_url) as direct:
        for platform in spread.values():
            assert 1 == direct.llen(f"{redis_cluster_namespace}:{{{platform}}}:pl")


# ------------------------------------------------------- on a cluster of the test's own


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """3 masters for one test. node-timeout 60 s: a stopped master is not declared failed
    (by the others, turning the whole cluster down) while the test runs."""
    cluster = LocalCluster.started(tmp_path / "cluster", node_timeout_ms=60_000)
    yield cluster
    cluster.stop()


def own_platforms(cluster: LocalCluster) -> dict[int, str]:
    """A platform for every master (port -> platform)."""
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(cluster.owner(key_slot(f"plat{i}".encode())), f"plat{i}")
        if len(found) == cluster.masters:
            return found
    raise AssertionError("no platform found for some node")


async def test_a_stopped_master_takes_its_slots_only_and_health_follows(
    own_cluster: LocalCluster, database: Database
) -> None:
    """Master 2 killed: its platform's calls with a Redis step are StoreUnavailable, the
    other masters' platforms are served, health says NOT_SERVING. Restarted (empty, its
    scripts forgotten), everything is served again and health is SERVING."""
    platforms = own_platforms(own_cluster)
    store = pair_store(own_cluster.url, "t", database)
    monitor = HealthMonitor(
        HealthServicer(), ["xacthuc.v1.VerificationService"], {"store": store.ping},
        interval=1, timeout=5,
    )  # fmt: skip
    for platform in platforms.values():
        await phone_flow(store, platform)
    assert await monitor.update()

    down = own_cluster.ports[1]
    own_cluster.stop_node(down)
    with pytest.raises(StoreUnavailable):
        await store.start_challenge(new("ch-9", platform=platforms[down]), LIMITS)
    with pytest.raises(StoreUnavailable):
        await store.check_code(check("ch-9", now=NOW + 1, platform=platforms[down]), LIMITS)
    for port, platform in platforms.items():
        if port != down:
            await phone_flow(store, platform, 2)
    assert {"store": "StoreUnavailable (ConnectionError)"} == await monitor.probe()
    assert not await monitor.update()

    own_cluster.start_node(down)
    own_cluster.wait_ok()
    assert await monitor.update()
    await phone_flow(store, platforms[down], 3)  # its data went with it; NOSCRIPT answered
    await store.aclose()


async def test_clusterdown_and_an_unserved_slot_are_unavailable(
    own_cluster: LocalCluster, database: Database
) -> None:
    """A slot its master stops serving (CLUSTER DELSLOTS): that master says CLUSTERDOWN,
    reported as StoreUnavailable to a script (sent once), and health is NOT_SERVING; served again, all is well. The slot taken from every node's
    table: the client cannot learn a full layout, and every call is StoreUnavailable."""
    platforms = own_platforms(own_cluster)
    platform = platforms[own_cluster.ports[0]]
    slot = key_slot(platform.encode())
    store = pair_store(own_cluster.url, "t", database)
    await phone_flow(store, platform)

    owner = own_cluster.client(own_cluster.ports[0])
    owner.cluster("DELSLOTS", slot)
    with pytest.raises(StoreUnavailable) as write:
        await store.start_challenge(new("ch-9", platform=platform, phone=phone_n(9)), LIMITS)
    assert isinstance(write.value.__cause__, redis.exceptions.ClusterDownError)
    with pytest.raises(StoreUnavailable):
        await store.ping()

    owner.cluster("ADDSLOTS", slot)
    own_cluster.wait_ok()
    await phone_flow(store, platform, 2)
    await store.ping()

    for port in own_cluster.ports:
        with own_cluster.client(port) as node:
            node.cluster("DELSLOTS", slot)
    for n, other in enumerate(platforms.values()):
        with pytest.raises(StoreUnavailable):
            await store.confirm_sent(other, f"ch-x{n}", "acc-1", NOW)
    owner.cluster("ADDSLOTS", slot)
    own_cluster.wait_ok()
    await phone_flow(store, platform, 3)
    owner.close()
    await store.aclose()


def twin_of(platform: str) -> str:
    """Another platform whose keys hash to the same slot."""
    slot = key_slot(platform.encode())
    return next(f"q{i}" for i in itertools.count() if key_slot(f"q{i}".encode()) == slot)


async def test_ask_and_moved_are_followed_and_tryagain_is_unavailable(
    own_cluster: LocalCluster, database: Database
) -> None:
    """A platform's slot migrates from master A to master B (whose scripts are flushed).
    While it migrates, a one-key call on a platform of the same slot that has no keys yet
    is asked to B (ASK followed, NOSCRIPT answered there; sent once). A call of
    several keys not all on A gets TRYAGAIN (from A when some are there, from B when none
    is) until the client gives up: StoreUnavailable, nothing run. Once moved, a client
    whose slot table still says A is redirected (MOVED) and finds the state on B."""
    a, b = own_cluster.ports[0], own_cluster.ports[1]
    platform = own_platforms(own_cluster)[a]
    twin = twin_of(platform)
    slot = key_slot(platform.encode())
    store = pair_store(own_cluster.url, "t", database)
    await phone_flow(store, platform)
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
    await asker.confirm_sent(twin, "ch-t", "acc-1", NOW)  # one key, missing on A: ASK to B
    with pytest.raises(redis.exceptions.AskError):  # A has no such key: it asks B
        node_a.get(f"t:{{{twin}}}:c:ch-t")
    with pytest.raises(StoreUnavailable) as tryagain:  # the send list is on A, the rest not
        await store.start_challenge(
            new("ch-2", platform=platform, account="acc-2", phone=phone_n(8)), LIMITS
        )
    assert isinstance(tryagain.value.__cause__, redis.exceptions.ClusterError)  # TTL spent
    with pytest.raises(StoreUnavailable) as tryagain:  # no key on A: B says TRYAGAIN
        await asker.start_challenge(new("ch-3", platform=twin), LIMITS)
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
    await phone_flow(stale, platform, 2)  # MOVED, then NOSCRIPT on B; the log goes on
    assert 8 == len(await stale.audit_records(platform))  # the refused start wrote nothing
    node_a.close()
    node_b.close()
    for s in (store, stale, asker):
        await s.aclose()
