"""Redis Cluster as the store's Redis (issue 11): the URL, the client, and sending a
state-changing command once.

    redis+cluster://[user:password@]host:port[,host:port...][?option=value&...]
    rediss+cluster://...                  (TLS to every node)

Every `host:port` is a startup node: one that answers is enough, the client learns the
others (and who owns which of the 16384 slots) from CLUSTER SLOTS. No database number (a
cluster has only 0). Options: those of a `redis://` URL that the cluster client takes
(`socket_timeout`, `socket_connect_timeout`, `ssl_*`, `max_connections` (per node), ...);
any other is refused when the settings are read.

The client (`cluster_client`) is redis-py's `RedisCluster`:

* every command goes to the primary of its key's slot (no `load_balancing_strategy`, the
  successor of `read_from_replicas`, and a URL cannot set one): a replica lags, and a
  challenge, a budget or a lock-out read there may be stale;
* MOVED and ASK are followed (the node that answers them did not run the command, so
  following is no second run) and the slot table is refreshed; TRYAGAIN (a multi-key
  command whose keys are split by a slot migration in progress) is sent again, at most 16
  redirections in all, then `ClusterError`;
* a connection error, a timeout, CLUSTERDOWN or a slot no node serves make it refresh its
  slot table and, for reads only, try again (`READ_RETRY`); a state-changing script goes
  through `ClusterOnce`, which sends it once. Whatever is left is `StoreUnavailable`
  (`redis._UNAVAILABLE`), never INTERNAL;
* a cluster none of whose startup nodes answers, or whose slots are not all served, raises
  a redis-py `ConnectionError` (`ClusterClient.initialize`), not `RedisClusterException`
  (which redis-py also raises for bugs, such as keys of one command in two slots).

Scripts on a cluster: `LuaScript.run` sends EVALSHA to the primary of the first key's slot;
a node that does not know the script (a fresh, restarted or promoted node) answers
NOSCRIPT, and the script is loaded on that node and sent again. Every script's keys must
hash to one slot: keys are tagged by subject and an operation runs as a script per step
(redis.py, lua/steps.lua; docs/design/redis-cluster.md).
"""

from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

SCHEMES = ("redis+cluster://", "rediss+cluster://")

# Reads (plain commands, read-only scripts) are tried again after a connection error, a
# timeout, CLUSTERDOWN or an unserved slot, the slot table refreshed in between: 3 more
# times, 10 ms to 0.5 s apart (jittered). Writes are never sent twice (`ClusterOnce`).
READ_RETRY = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 3)

# URL options the cluster client refuses or sets itself.
_NOT_OPTIONS = frozenset(
    {
        "host",
        "port",
        "startup_nodes",
        "db",
        "path",
        "retry",
        "read_from_replicas",
        "load_balancing_strategy",
        "address_remap",
        "event_dispatcher",
        "policy_resolver",
        "credential_provider",
    }
)


def is_cluster_url(url: str) -> bool:
    return url.startswith(SCHEMES)


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The startup nodes and the client options of a `redis+cluster://` URL; ValueError
    (with what is wrong, never the password) when it is not one."""
    if not is_cluster_url(url):
        raise ValueError("must start with redis+cluster:// or rediss+cluster://")
    scheme, _, rest = url.partition("+cluster://")
    parts = urlsplit("//" + rest)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has no database number: leave the path empty")
    nodes: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, sep, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("each startup node must be HOST:PORT (comma-separated)")
        nodes.append((host, int(port)))
    # The credentials and options the way redis:// URLs are read (unquoting, typed values).
    first = f"{scheme}://{userinfo + '@' if userinfo else ''}{hostlist.split(',')[0]}"
    options: dict[str, Any] = dict(parse_url(first + ("?" + parts.query if parts.query else "")))
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    accepted = set(inspect.signature(RedisCluster.__init__).parameters) - _NOT_OPTIONS
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"option(s) not for a Redis Cluster: {', '.join(unknown)}")
    return nodes, options


class ClusterClient(RedisCluster):
    """RedisCluster whose failure to learn the cluster's layout (no startup node answers,
    or some slot has no node) is a `ConnectionError`: the store answers it as
    UNAVAILABLE, as it does a lost connection."""

    async def initialize(self, *args: Any, **kwargs: Any) -> ClusterClient:
        try:
            await super().initialize(*args, **kwargs)
        except RedisClusterException as e:
            raise RedisConnectionError(f"Redis Cluster layout unknown ({type(e).__name__})") from e
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # The layout first: redis-py 8.1 decides how to route a command before learning the
        # layout, and with none known (a new client, or one reset by CLUSTERDOWN) it sends
        # a keyed command to any node, then follows the MOVED: a round trip lost, and the
        # retries of a read go to random nodes. At once when the layout is known.
        await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def aclose(self) -> None:
        # redis-py 8.1 closes nothing when the last command left the layout to be learned
        # again (a lost connection, CLUSTERDOWN): its nodes' connections would stay open.
        await super().aclose()
        await self.nodes_manager.aclose()
        await self.nodes_manager.aclose("startup_nodes")


def cluster_client(url: str, **overrides: Any) -> ClusterClient:
    """The client of the cluster at `url` (`parse_cluster_url`); replies decoded."""
    nodes, options = parse_cluster_url(url)
    options |= {"decode_responses": True, "retry": READ_RETRY} | overrides
    return ClusterClient(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **options)


class ClusterOnce:
    """A cluster client's commands, each sent once: the cluster equivalent of
    `redis.without_retries`. EVALSHA goes to the primary of its first key's slot, named
    explicitly, and redis-py does not send a command again after a connection error, a
    timeout or CLUSTERDOWN when its node is named (the command may have run); it still
    follows MOVED, ASK and TRYAGAIN, which mean the command did not run where refused.
    The slot table is the client's own: a failure makes the client refresh it before the
    next command."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster

    async def primary_of(self, key: str) -> ClusterNode:
        """The primary that serves `key`'s slot (SlotNotCoveredError: none does)."""
        await self.cluster.initialize()  # at once when the layout is known
        node = self.cluster.get_node_from_key(key)
        assert node is not None  # a primary, when not asked for a replica
        return node

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        if numkeys < 1:
            raise ValueError("a script on a cluster names at least one key")
        node = await self.primary_of(str(keys_and_args[0]))
        return await self.cluster.execute_command(
            "EVALSHA", sha, numkeys, *keys_and_args, target_nodes=node
        )

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """A command for named nodes (`target_nodes`: sent once) or any other."""
        return await self.cluster.execute_command(*args, **kwargs)

    async def aclose(self) -> None:
        """Nothing of its own to close: the cluster client is its owner's."""
