"""``normsearch up``: the embedded stack as a real subprocess (SQLite database, SQLite broker
through kombu's SQLAlchemy transport, the API and a Celery worker as children), and the
supervisor that restarts a dead worker and stops its children."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cli.embedded import (
    BROKER_FILE,
    CLI_PREFIX,
    EmbeddedError,
    EmbeddedStack,
    compact_sqlite_broker,
    embedded_config,
)
from cli.supervisor import ChildSpec, Supervisor
from service.celery_app import SEARCH_QUEUE, SEARCH_TASK, broker_transport_options, make_celery
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-6000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}", pytrace=False)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    # A zombie (exited, not reaped yet) counts as gone.
    return not (state.exists() and state.read_text().split(")")[-1].split()[0] == "Z")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


# -- configuration ---------------------------------------------------------------------------


def test_embedded_config_defaults_to_sqlite_files_under_the_runs_dir(tmp_path):
    config = embedded_config(Settings(), runs_dir=tmp_path, port=8123)
    assert config.database_url == f"sqlite:///{tmp_path.resolve()}/normsearch.db"
    assert config.broker_url == f"sqla+sqlite:///{tmp_path.resolve()}/broker.sqlite"
    assert config.owns_broker and config.base_url == "http://127.0.0.1:8123"
    env = config.environment()
    assert env["NORMSEARCH_RUNS_DIR"] == str(tmp_path.resolve())
    assert (
        env["NORMSEARCH_BROKER_URL"] == config.broker_url and env["NORMSEARCH_API_PORT"] == "8123"
    )

    explicit = Settings(database_url="postgresql+psycopg://u@db/x", broker_url="redis://r:6379/0")
    config = embedded_config(explicit, runs_dir=tmp_path)
    assert config.database_url == "postgresql+psycopg://u@db/x"
    assert config.broker_url == "redis://r:6379/0" and not config.owns_broker


def test_broker_transport_options_fit_the_transport():
    sqlite = broker_transport_options(Settings(broker_url="sqla+sqlite:///runs/broker.sqlite"))
    # kombu's SQLAlchemy transport hands every option to create_engine: no visibility_timeout.
    assert sqlite == {"connect_args": {"timeout": 30}}
    assert "visibility_timeout" in broker_transport_options(Settings(broker_url="redis://h/0"))


def test_one_stack_per_runs_dir(tmp_path):
    first = EmbeddedStack(embedded_config(Settings(), runs_dir=tmp_path))
    second = EmbeddedStack(embedded_config(Settings(), runs_dir=tmp_path))
    first.prepare()
    try:
        with pytest.raises(EmbeddedError, match="another `normsearch up`"):
            second.prepare()
    finally:
        first.stop()
    second.prepare()  # the lock is released with the first stack
    second.stop()


# -- the supervisor --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_supervisor_restarts_a_dead_worker_and_fails_when_the_api_dies():
    supervisor = Supervisor(
        [ChildSpec("api", SLEEPER), ChildSpec("worker", SLEEPER, restart=True)],
        restart_delay_s=0.1,
        stop_timeout_s=5,
    )
    supervisor.start()
    try:
        api, worker = supervisor.process("api"), supervisor.process("worker")
        assert supervisor.poll() is None
        worker.kill()
        wait_for(
            lambda: supervisor.poll() is None and supervisor.process("worker") is not worker,
            10,
            "the worker to be restarted",
        )
        restarted = supervisor.process("worker")
        assert restarted.poll() is None and supervisor.restarts("worker") == 1
        assert supervisor.process("api") is api and api.poll() is None

        api.kill()
        failure = wait_for(supervisor.poll, 10, "the API's end to be reported")
        assert failure.startswith("api exited unexpectedly")
    finally:
        supervisor.stop()
    assert restarted.poll() is not None and not alive(restarted.pid)


CRASHING = [sys.executable, "-c", "raise SystemExit(3)"]


def http_server(port: int) -> list[str]:
    """A child that answers HTTP on ``port`` (standing in for the API)."""
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


@pytest.mark.timeout(60)
def test_a_crash_looping_worker_is_restarted_with_growing_delays_and_the_api_stays_up(caplog):
    port = free_port()
    supervisor = Supervisor(
        [ChildSpec("api", http_server(port)), ChildSpec("worker", CRASHING, restart=True)],
        restart_delay_s=0.05,
        max_restart_delay_s=0.4,
        stop_timeout_s=5,
    )
    caplog.set_level(logging.DEBUG, logger="cli.supervisor")
    supervisor.start()
    try:
        api = supervisor.process("api")
        wait_for(
            lambda: supervisor.poll() is None and supervisor.restarts("worker") >= 8,
            30,
            "eight restarts of the worker",
        )
        # Never given up on (the old supervisor stopped everything after 6 deaths), and the API
        # it never took down still answers.
        assert supervisor.poll() is None and supervisor.failure is None
        assert supervisor.process("api") is api and api.poll() is None
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/"), 10, "the API child to answer HTTP")
        restarts = supervisor.restart_log("worker")[:8]
        assert [r.exit_code for r in restarts] == [3] * 8
        # Exponential back-off with a cap, from the supervisor's own record.
        assert [r.delay_s for r in restarts] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4]
        # Each restart happened only after its delay: deaths are spaced at least that far apart.
        for earlier, later in itertools.pairwise(restarts):
            assert later.at - earlier.at >= earlier.delay_s
    finally:
        supervisor.stop()
    # One log line per restart, naming the exit code and the delay; no other line at WARNING.
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == supervisor.restarts("worker")
    assert lines[0].startswith("worker exited (exit code 3) after ")
    assert lines[0].endswith("; restart 1 (1 in a row) in 0.1 s")  # 0.05, shown to one digit
    assert lines[3].endswith("; restart 4 (4 in a row) in 0.4 s")
    assert all("\n" not in line for line in lines)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(60)
def test_a_worker_that_stayed_up_starts_again_from_the_shortest_delay():
    # It lives 0.3 s each time, longer than stable_after_s: every death is a first one.
    short_lived = [sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(1)"]
    supervisor = Supervisor(
        [ChildSpec("worker", short_lived, restart=True)],
        restart_delay_s=0.05,
        max_restart_delay_s=10,
        stable_after_s=0.2,
    )
    supervisor.start()
    try:
        wait_for(lambda: supervisor.poll() is None and supervisor.restarts("worker") >= 3, 30, "3")
        restarts = supervisor.restart_log("worker")[:3]
        assert [r.delay_s for r in restarts] == [0.05, 0.05, 0.05]
        assert all(r.uptime_s >= 0.3 for r in restarts)
    finally:
        supervisor.stop()


@pytest.mark.timeout(60)
def test_stop_kills_what_ignores_sigterm():
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', "
        "flush=True); time.sleep(120)",
    ]
    supervisor = Supervisor(
        [ChildSpec("worker", CRASHING, restart=True), ChildSpec("stubborn", stubborn)],
        restart_delay_s=0.01,
        stop_timeout_s=0.5,
    )
    supervisor.start()
    try:
        wait_for(lambda: supervisor.poll() is None and supervisor.restarts("worker") >= 2, 20, "2")
    finally:
        time.sleep(0.3)  # let the stubborn child install its handler
        started = time.monotonic()
        supervisor.stop()
    stubborn_process = supervisor.process("stubborn")
    assert stubborn_process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


# -- the real thing --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_up_serves_consumes_from_the_sqlite_broker_and_stops_cleanly(tmp_path):
    runs = tmp_path / "runs"
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("NORMSEARCH_DATABASE_URL", "NORMSEARCH_BROKER_URL", "NORMSEARCH_RUNS_DIR")
    }
    log_path = tmp_path / "up.log"
    command = [sys.executable, *CLI_PREFIX, "up", "--runs-dir", str(runs), "--port", str(port)]
    with log_path.open("w") as log:
        up = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: "normsearch is up at" in log_path.read_text(), START_TIMEOUT_S, "up", log_path
        )
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "ok"}
        assert (runs / "normsearch.db").exists()
        children = child_pids(up.pid)
        assert len(children) == 2, children

        # A task sent by name from this process reaches the worker through the SQLite broker.
        job_id = f"missing-{uuid.uuid4().hex[:8]}"
        app = make_celery(Settings(broker_url=f"sqla+sqlite:///{runs / BROKER_FILE}"))
        try:
            result = app.send_task(SEARCH_TASK, args=[job_id], queue=SEARCH_QUEUE)
        finally:
            app.close()
        worker_log = runs / "logs" / "worker.log"  # `up` keeps its children's output there
        wait_for(
            lambda: (
                worker_log.exists()
                and f"job {job_id} does not exist" in worker_log.read_text()
                and f"{result.id}] succeeded" in worker_log.read_text()
            ),
            START_TIMEOUT_S,
            "the worker to consume the task",
            worker_log,
        )
        with sqlite3.connect(runs / BROKER_FILE) as broker:
            assert broker.execute("SELECT visible FROM kombu_message").fetchall() == [(0,)]

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=45) == 0, log_path.read_text()[-4000:]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    output = log_path.read_text()
    assert "normsearch up: stopped" in output
    assert not [pid for pid in children if alive(pid)], output[-4000:]
    # Nothing holds the broker now: the delivered message can go.
    assert compact_sqlite_broker(runs / BROKER_FILE) == 1


@pytest.mark.e2e  # the whole embedded stack and a real search
def test_up_submit_runs_the_demo_flow_to_the_end(tmp_path):
    """What `make demo` does, with a tiny search: up, token, submit over HTTP, follow, print the
    recommendation and the address, stop (--exit-when-done)."""
    import json

    from tests.support.api import tiny_spec

    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(tiny_spec(epochs=2)))
    runs = tmp_path / "runs"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("NORMSEARCH_DATABASE_URL", "NORMSEARCH_BROKER_URL", "NORMSEARCH_RUNS_DIR")
    }
    env["COLUMNS"] = "40"  # a narrow terminal: the commands printed must not wrap
    command = [
        sys.executable, *CLI_PREFIX, "up", "--runs-dir", str(runs), "--port", str(free_port()),
        "--submit", str(spec), "--exit-when-done",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "succeeded" in output and "web UI: http://127.0.0.1:" in output
    assert "layer3.2.bn2" in output  # the recommendation table, last SN layer of resnet20
    token = runs / "demo-token"
    lines = output.splitlines()
    assert f"  export NORMSEARCH_TOKEN=$(cat {token})" in lines  # whole, on a line of its own
    assert any(line.startswith("  normsearch download ") for line in lines)
    assert token.read_text().startswith("ns_") and (token.stat().st_mode & 0o777) == 0o600
    assert token.read_text().strip() not in output  # the secret is saved, never printed


def test_a_local_ray_is_kept_on_loopback_and_a_cluster_is_joined_as_it_is(tmp_path):
    local = embedded_config(Settings(), runs_dir=tmp_path).environment()
    assert local["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    joined = embedded_config(Settings(RAY_ADDRESS="ray-head:6379"), runs_dir=tmp_path)
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in joined.environment()


# Run in a child with the embedded environment: start the worker's local Ray, then list the
# listening TCP sockets of Ray's processes, the child's descendants (socket inodes of
# /proc/net/tcp* matched to their /proc/<pid>/fd; other Rays on this machine are not looked at).
LISTENERS = """
import json, os
from pathlib import Path

from worker.search import ensure_ray
import ray

ensure_ray(None, 1)
ip = ray.util.get_node_ip_address()
gcs = ray.get_runtime_context().gcs_address
listening = {}
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in Path(table).read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":  # LISTEN
            listening[fields[9]] = fields[1]
parents = {}
for stat in Path("/proc").glob("[0-9]*/stat"):
    try:
        parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        continue
mine = {os.getpid()}
for _ in range(8):  # grandchildren of grandchildren at most
    mine |= {pid for pid, parent in parents.items() if parent in mine}
opened = set()
for pid in mine - {os.getpid()}:
    proc = Path(f"/proc/{pid}")
    try:
        for fd in (proc / "fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in listening:
                opened.add(listening[target[8:-1]])
    except OSError:
        continue
ray.shutdown()
print(json.dumps({"ip": ip, "gcs": gcs, "opened": sorted(opened)}))
"""


@pytest.mark.e2e
def test_the_embedded_workers_local_ray_listens_on_loopback_only(tmp_path):
    import json

    env = {**os.environ, **embedded_config(Settings(), runs_dir=tmp_path).environment()}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-c", LISTENERS],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["ip"] == "127.0.0.1" and seen["gcs"].startswith("127.0.0.1:")
    assert seen["opened"], "Ray opened no listening socket?"
    # /proc/net/tcp spells 127.0.0.1 as 0100007F (IPv6 loopback: 0...01000000).
    loopback = (
        "0100007F:",
        "00000000000000000000000001000000:",
        "0000000000000000FFFF00000100007F:",  # ::ffff:127.0.0.1
    )
    assert all(address.startswith(loopback) for address in seen["opened"]), seen["opened"]
