"""Real Celery worker processes for the tests (not eager mode): start one on the search queue
with a given environment, wait until it answers a ping, stop it, or kill -9 it with everything
it started (its local Ray), and read its log.

Each worker runs in a session (process group) of its own, so ``kill()`` also takes down the Ray
processes its task started; Ray's own reaper would only clean those up after a graceful exit.
"""

from __future__ import annotations

import contextlib
import os
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


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid`` (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            pytest.fail(f"processes of worker group {pgid} survived kill -9: {group_members(pgid)}")
        _signal_group(pgid, signal.SIGKILL)  # processes started while we were killing
        time.sleep(0.2)
