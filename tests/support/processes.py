"""Real Celery worker processes for the tests (not eager mode): start one on the search queue
with a given environment, wait until it answers a ping, stop it, or kill -9 it with everything
it started (its local Ray), and read its log. And a multi-node Ray cluster of `ray start`
processes on this machine (``start_ray_cluster``), each node stopped by its process group.

Each worker runs in a session (process group) of its own, so ``kill()`` also takes down the Ray
processes its task started; Ray's own reaper would only clean those up after a graceful exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from service.celery_app import SEARCH_QUEUE

# The Redis database the broker tests flush and use (override to run suites side by side).
BROKER_URL = os.environ.get("NORMSEARCH_TEST_BROKER_URL", "redis://127.0.0.1:6379/9")
ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60


def tail(path: Path, lines: int = 80) -> str:
    """The last ``lines`` lines of a log file."""
    if not path.exists():
        return "(no worker log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def flushed_redis(url: str) -> Iterator[str]:
    """A Redis database emptied before and after (fixture body); unreachable fails the test."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError as error:
        pytest.fail(f"Redis is required and not reachable at {url}: {error}", pytrace=False)
    yield url
    client.flushdb()
    client.close()


def worker_env(
    *,
    database_url: str,
    broker_url: str,
    runs_dir: Path,
    data_roots: Path,
    **extra: str,
) -> dict[str, str]:
    """The environment of a worker process: this one's, the service settings, and ``extra``
    (``NORMSEARCH_...`` names, e.g. ``NORMSEARCH_HEARTBEAT_INTERVAL_S="1"``)."""
    return {
        **os.environ,
        "NORMSEARCH_DATABASE_URL": database_url,
        "NORMSEARCH_BROKER_URL": broker_url,
        "NORMSEARCH_RUNS_DIR": str(runs_dir),
        "NORMSEARCH_RAY_NUM_CPUS": "2",
        "NORMSEARCH_DATA_ROOTS": str(data_roots),
        **extra,
    }


@dataclass
class WorkerProcess:
    """A running Celery worker subprocess."""

    process: subprocess.Popen
    hostname: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 80) -> str:
        return tail(self.log_path, lines)

    def ready(self, app: Celery) -> bool:
        """The worker is consuming: it logged that it is ready (a solo worker that picks up a
        waiting message at once is too busy to answer a ping) or it answers a ping."""
        if self.log_path.exists() and f"{self.hostname} ready." in self.log_path.read_text(
            errors="replace"
        ):
            return True
        return bool(app.control.ping(destination=[self.hostname], timeout=1.0))

    def kill(self, timeout: float = 30.0) -> None:
        """kill -9 the worker and every process of its group (its local Ray), as a crashed
        machine would; waits until the group is gone."""
        _signal_group(self.pid, signal.SIGKILL)
        self.process.wait()
        _wait_group_gone(self.pid, timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Warm shutdown (SIGTERM), then kill -9 of the group if it does not exit in time."""
        if self.alive():
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()


def start_worker(
    app: Celery,
    env: dict[str, str],
    log_path: Path,
    *,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> WorkerProcess:
    """Start a solo-pool worker on the search queue and wait until it answers a ping (fails the
    test with the worker's log if it does not)."""
    hostname = f"test-{uuid.uuid4().hex[:8]}@localhost"
    command = [
        sys.executable, "-m", "celery", "-A", "worker.main:app", "worker",
        "--pool=solo", "--concurrency=1", "-Q", SEARCH_QUEUE, "--loglevel=INFO",
        "--hostname", hostname, "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log_path.open("a") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches its Ray too
        )
    worker = WorkerProcess(process, hostname, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while not worker.ready(app):
        if not worker.alive() or time.monotonic() > deadline:
            worker.stop(timeout=5)
            pytest.fail(f"the Celery worker did not start:\n{worker.tail()}", pytrace=False)
    return worker


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _live_processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live (not zombie) process (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            found.append((int(stat.parent.name), int(fields[1]), int(fields[2])))
    return found


def descendants(roots: list[int]) -> list[int]:
    """Every live process below ``roots`` in the process tree, children first listed after
    their parents."""
    children: dict[int, list[int]] = {}
    for pid, parent, _ in _live_processes():
        children.setdefault(parent, []).append(pid)
    found, queue = [], list(roots)
    while queue:
        for child in children.get(queue.pop(), []):
            if child not in found and child not in roots:
                found.append(child)
                queue.append(child)
    return found


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    return [pid for pid, _, group in _live_processes() if group == pgid]


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            pytest.fail(f"processes of worker group {pgid} survived kill -9: {group_members(pgid)}")
        _signal_group(pgid, signal.SIGKILL)  # processes started while we were killing
        time.sleep(0.2)


# A Ray cluster of separate `ray start` processes on this machine.

NODES_QUERY = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[3])
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps([{k: n[k] for k in ("NodeID", "Alive", "Resources")} for n in ray.nodes()]))
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now: every socket stays bound until all
    are chosen, so the OS cannot hand out one port twice (separate ``free_port`` calls can, and
    once gave a Ray node the same port for two of its components)."""
    import socket
    from contextlib import ExitStack

    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass
class RayNode:
    """One `ray start --block` process and the Ray processes it started (its own process
    group); ``name`` is its custom resource (``{"node_a": 1}``), none for the head."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def wait_started(self, timeout_s: float = 90.0) -> None:
        """Wait until `ray start` says the node runs (it has registered with the head): read
        from its log, cheaper than a driver asking the head."""
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        ):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Ray node {self.name} did not start:\n{tail(self.log_path)}")
            time.sleep(0.2)

    def _signal_tree(self, sig: int) -> None:
        """``sig`` to the node's process group and every descendant of it (the trial workers
        its raylet forked, whatever their group)."""
        members = group_members(self.process.pid)
        for pid in [*descendants(members), *members]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def lose(self, detection_s: float) -> None:
        """The machine lost: every process of the node frozen at once (SIGSTOP) for
        ``detection_s`` seconds, longer than the head takes to declare the node dead, then
        killed. Frozen, a trial neither reports more epochs nor dies before Ray knows its node
        is gone: killing the raylet alone let its worker finish the trial first, and killing
        every process at once let the trial's death reach the driver before the node's."""
        self._signal_tree(signal.SIGSTOP)
        time.sleep(detection_s)
        self.kill()

    def kill(self, timeout: float = 30.0) -> None:
        """kill -9 the node's whole process group and every descendant of it, as a lost
        machine; waits until the group is gone."""
        self._signal_tree(signal.SIGKILL)
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()
        _wait_group_gone(self.process.pid, timeout)


@dataclass
class RayCluster:
    """A head (no resources: the driver's node, as the compose file's ray-head and worker) and
    worker nodes, each started by its own `ray start --block` in a process group of its own,
    with token authentication, its own ports and temp dir: it never joins (or is joined by)
    another Ray on this machine, and ``stop`` never touches one (no `ray stop`, which is
    machine-wide)."""

    address: str
    env: dict[str, str]  # RAY_AUTH_MODE/RAY_AUTH_TOKEN: what a process needs to join it
    temp_dir: Path
    log_dir: Path
    nodes: list[RayNode]
    names: dict[str, str] | None = None  # node_names() once every node was up

    def nodes_info(self, expect_alive: int = 0, timeout_s: float = 60.0) -> list[dict]:
        """``ray.nodes()`` (id, alive, resources) read by a short driver process, after waiting
        up to ``timeout_s`` for ``expect_alive`` alive nodes."""
        import json

        done = subprocess.run(
            [sys.executable, "-c", NODES_QUERY, self.address, str(expect_alive), str(timeout_s)],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout_s + 60,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"could not read the Ray cluster's nodes:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wait_alive(self, count: int, timeout_s: float = 90.0) -> list[dict]:
        """Wait until ``count`` nodes are alive (fails the test with the nodes' logs); the
        nodes as ``nodes_info`` reads them."""
        info = self.nodes_info(count, timeout_s=timeout_s)
        alive = sum(n["Alive"] for n in info)
        if alive < count:
            logs = "\n".join(f"{n.name}:\n{tail(n.log_path, 20)}" for n in self.nodes)
            pytest.fail(f"{alive} of {count} Ray nodes came up:\n{logs}", pytrace=False)
        return info

    def node_names(self, nodes_info: list[dict] | None = None) -> dict[str, str]:
        """Node id -> the custom resource naming it (``head`` for the head), from
        ``nodes_info`` (default: read now)."""
        names = {}
        for node in self.nodes_info() if nodes_info is None else nodes_info:
            custom = [n.name for n in self.nodes[1:] if n.name in node["Resources"]]
            names[node["NodeID"]] = custom[0] if custom else "head"
        return names

    def node(self, name: str) -> RayNode:
        return next(n for n in self.nodes if n.name == name)

    def start_node(self, name: str, *args: str) -> RayNode:
        """Start a worker node named by the custom resource ``name`` (``args``: e.g.
        ``--num-cpus=1``)."""
        command = [
            str(Path(sys.executable).with_name("ray")), "start", f"--address={self.address}",
            "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
            f"--resources={{\"{name}\": 1}}", *args, *_node_args(), "--block",
        ]  # fmt: skip
        node = _start_ray_node(name, command, self.env, self.log_dir / f"ray-{name}.log")
        self.nodes.append(node)
        node.wait_started()
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # the sessions' logs and sockets


def _node_args() -> list[str]:
    # The ports Ray would otherwise take at fixed defaults (shared by every Ray on the machine).
    # Ray's own choices race when two nodes start on one machine ("bind: Address already in
    # use"), so every port is chosen here, and the nodes start one after the other.
    ports = (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
    )  # fmt: skip
    return [
        *(f"--{name}={port}" for name, port in zip(ports, free_ports(len(ports)), strict=True)),
        f"--object-store-memory={200 * 1024**2}",  # not 30% of the machine's memory per node
        "--disable-usage-stats",
    ]


def _start_ray_node(name: str, command: list[str], env: dict[str, str], log_path: Path) -> RayNode:
    with log_path.open("a") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes all its processes
        )
    return RayNode(name, process, log_path)


def start_ray_cluster(
    log_dir: Path, workers: dict[str, list[str]], *, head_env: dict[str, str] | None = None
) -> RayCluster:
    """A head and one worker node per ``workers`` entry (name -> `ray start` arguments), all
    alive; ``head_env``: e.g. ``RAY_health_check_*`` settings of the head's GCS. The caller
    stops it (``RayCluster.stop``), also on failure."""
    import secrets
    import tempfile

    # Short: Ray's unix sockets live under it (a socket path has at most 107 characters).
    temp_dir = Path(tempfile.mkdtemp(prefix="nsray-", dir="/tmp"))
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = free_port()
    cluster = RayCluster(f"127.0.0.1:{port}", env, temp_dir, log_dir, [])
    head = [
        str(Path(sys.executable).with_name("ray")), "start", "--head",
        "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
        "--include-dashboard=false", f"--dashboard-port={free_port()}",
        f"--temp-dir={temp_dir}", *_node_args(), "--block",
    ]  # fmt: skip
    try:
        cluster.nodes.append(
            _start_ray_node("head", head, {**env, **(head_env or {})}, log_dir / "ray-head.log")
        )
        cluster.nodes[0].wait_started()
        for name, args in workers.items():  # one after the other (see _node_args)
            cluster.start_node(name, *args)
        cluster.names = cluster.node_names(cluster.wait_alive(len(cluster.nodes)))
    except BaseException:
        cluster.stop()
        raise
    return cluster
