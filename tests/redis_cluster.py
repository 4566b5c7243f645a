"""A real 3-primary Redis Cluster for tests, started on free loopback ports.

``redis_cluster`` (session) starts three ``redis-server --cluster-enabled yes`` processes,
each with its own directory, joins them with ``redis-cli --cluster create`` (no replicas)
and waits until every node reports ``cluster_state:ok``. ``redis_cluster_url`` (function)
hands out the first node's URL after flushing every primary, for a cluster client (which
discovers the others). Every process is stopped by its PID at the end of the session, also
when a test fails.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_fixture import RedisServer, find_redis_server, free_port

__all__ = ["RedisCluster", "redis_cluster_fixture", "redis_cluster_url_fixture"]


class RedisCluster:
    """Three primaries sharing the 16,384 slots."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def flushall(self) -> None:
        for node in self.nodes:
            with redis.Redis(port=node.port, socket_timeout=5) as client:
                client.flushall()
                client.script_flush()

    def wait_ok(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            with redis.Redis(port=node.port, socket_timeout=2) as client:
                while client.cluster("INFO").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        pytest.fail(f"cluster not ok after {timeout} s")
                    time.sleep(0.05)


@contextlib.contextmanager
def start_cluster(directory: Path, size: int = 3) -> Iterator[RedisCluster]:
    """A started cluster of ``size`` primaries; every node stopped on exit."""
    cli = shutil.which("redis-cli")
    if cli is None:  # installed with redis-server (./dev installs it): a failure, not a skip
        pytest.fail("redis-cli not found (Debian package redis-tools / redis-server)")
    binary = find_redis_server()
    nodes: list[RedisServer] = []
    try:
        for i in range(size):
            folder = directory / f"node{i}"
            folder.mkdir(parents=True, exist_ok=True)
            # The bus port on a free port too (by default it is the port + 10000).
            options = (
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--cluster-port", str(free_port()),
            )  # fmt: skip
            node = RedisServer(binary, folder, free_port(), options)
            node.start()
            nodes.append(node)
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        cluster = RedisCluster(nodes)
        cluster.wait_ok()
        yield cluster
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session", name="redis_cluster")
def redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """The session's 3-primary cluster (use ``redis_cluster_url`` to get it clean)."""
    with start_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(name="redis_cluster_url")
def redis_cluster_url_fixture(redis_cluster: RedisCluster) -> str:
    """A node's URL of the session's cluster, every primary flushed and without scripts."""
    redis_cluster.flushall()
    return redis_cluster.url
