"""A Redis Cluster of masters on free local ports, for tests (issue 11).

`scripts/test.sh` starts one for the whole run (`python -m tests.local_cluster start DIR`,
its URL printed, the servers stopped by `stop DIR`) and exports it as
XACTHUC_TEST_REDIS_CLUSTER_URL; tests that break a cluster (a master stopped, slots taken
away or moved) start their own with `LocalCluster`. Each node is a `redis-server` with
`cluster-enabled yes` in its own folder; `redis-cli --cluster create` assigns the 16384
slots evenly, no replicas; ready means every node reports `cluster_state:ok` and agrees on
who owns every slot.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

HOST = "127.0.0.1"
BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (the cluster bus)
READY_WITHIN = 30.0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A port that is free, and so is its cluster bus port (+10000)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port + BUS_OFFSET > 65535 or port in taken or port + BUS_OFFSET in taken:
            continue
        if _port_free(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _wait(check: Callable[[], bool], what: str, within: float = READY_WITHIN) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster: {what} not within {within:g} s")
        time.sleep(0.05)


@dataclass
class LocalCluster:
    """`masters` cluster nodes in `folder` (one subfolder each)."""

    folder: Path
    masters: int = 3
    node_timeout_ms: int = 15000
    ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The store URL of this cluster: every node a startup node."""
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports)

    def client(self, port: int) -> redis.Redis:
        """A plain client of one node (socket timeouts short: a stopped node fails fast)."""
        return redis.Redis(
            host=HOST,
            port=port,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=5,
        )

    def _node_dir(self, port: int) -> Path:
        return self.folder / str(port)

    def start_node(self, port: int) -> None:
        """Start (or restart, with its nodes.conf: it rejoins) the node on `port`."""
        node_dir = self._node_dir(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "redis-server",
                "--daemonize", "yes",
                "--bind", HOST,
                "--port", str(port),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(node_dir),
                "--logfile", str(node_dir / "redis.log"),
                "--pidfile", str(node_dir / "redis.pid"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

        def answers() -> bool:  # this node (its folder), not another server on the port
            with self.client(port) as c:
                return bool(c.config_get("dir").get("dir") == str(node_dir.resolve()))

        _wait(answers, f"node {port} answering")

    def stop_node(self, port: int) -> None:
        """Stop one node at once (SIGKILL: no goodbye to the others)."""
        pidfile = self._node_dir(port) / "redis.pid"
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            pid = int(pidfile.read_text().strip())
            subprocess.run(["kill", "-9", str(pid)], check=False, stderr=subprocess.DEVNULL)
            pidfile.unlink()

    @classmethod
    def started(
        cls, folder: Path, *, node_timeout_ms: int = 15000, attempts: int = 3
    ) -> LocalCluster:
        """A cluster started in a subfolder of `folder`: tried again on fresh ports when a
        start fails (a port found free may be taken before its node binds it)."""
        for attempt in range(attempts):
            cluster = cls(folder / str(attempt), node_timeout_ms=node_timeout_ms)
            try:
                return cluster.start()
            except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
                for log in sorted(cluster.folder.glob("*/redis.log")):
                    print(f"{log}:\n{log.read_text()[-2000:]}", file=sys.stderr)
                print(f"Redis Cluster did not start: {e}", file=sys.stderr)
                cluster.stop()
        raise RuntimeError(f"Redis Cluster: no start in {attempts} attempts (logs above)")

    def start(self) -> LocalCluster:
        taken: set[int] = set()
        for _ in range(self.masters):
            port = free_cluster_port(taken)
            taken |= {port, port + BUS_OFFSET}
            self.ports.append(port)
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *(f"{HOST}:{p}" for p in self.ports),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.wait_ok()
        return self

    def wait_ok(self) -> None:
        """Until every node says cluster_state:ok and they agree on the slots' owners."""

        def ok() -> bool:
            views = set()
            for port in self.ports:
                with self.client(port) as c:
                    if c.cluster("INFO").get("cluster_state") != "ok":
                        return False
                    views.add(repr(sorted(map(repr, c.cluster("SLOTS")))))
            return len(views) == 1

        _wait(ok, "cluster_state:ok on every node")

    def owner(self, slot: int) -> int:
        """The port of the master that owns `slot` (as the first node sees it)."""
        with self.client(self.ports[0]) as c:
            for start, end, master, *_ in c.cluster("SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise LookupError(f"slot {slot} is not assigned")

    def stop(self) -> None:
        for port in self.ports:
            self.stop_node(port)
        shutil.rmtree(self.folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    """`start DIR` (prints the URL) or `stop DIR`: for scripts/test.sh."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m tests.local_cluster start|stop DIR", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    if argv[0] == "stop":
        for pidfile in folder.glob("**/redis.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                subprocess.run(["kill", pidfile.read_text().strip()], check=False)
        shutil.rmtree(folder, ignore_errors=True)
        return 0
    try:
        cluster = LocalCluster.started(folder)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(cluster.url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
