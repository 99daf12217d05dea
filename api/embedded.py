"""The embedded single-machine stack behind ``normsearch up``: the production code path with no
servers to install.

The database is a SQLite file and the Celery broker is kombu's SQLAlchemy transport on another
SQLite file, both under the runs directory (an explicit ``NORMSEARCH_DATABASE_URL`` or
``NORMSEARCH_BROKER_URL`` wins). The migrations are applied, then the API (``normsearch serve``)
and one Celery worker (``normsearch worker``) run as child processes that read their settings from
``NORMSEARCH_*`` environment variables, exactly as they would on separate machines.

``Supervisor`` owns the child processes: a child marked ``restart`` (the worker) is started again
when it dies, any other (the API) ending is fatal; ``stop()`` sends each child SIGTERM, then
SIGKILL after a timeout. uvicorn shuts down gracefully. Celery's warm shutdown waits for a running
task, but a search's Ray driver turns SIGTERM into ``SystemExit``: the search stops at once and
Celery puts its unacknowledged message back on the queue, so the next ``up`` resumes it from its
work directory. A worker killed outright (SIGKILL, a crash) loses its message, as the SQLAlchemy
transport has no visibility timeout; the API's reaper requeues the job once its heartbeat is
stale. Celery's cold shutdown (SIGQUIT) is not used: with the solo pool it raises
``NotImplementedError`` inside the task, which would mark the job failed.

``EmbeddedStack`` prepares the runs directory and database, starts the supervisor and waits for
the API's ``/healthz``; ``supervise`` then restarts the worker until told to stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

API_FACTORY = "api.app:create_app"
DATABASE_FILE = "normsearch.db"
BROKER_FILE = "broker.sqlite"
LOCK_FILE = ".up.lock"
# The command line of a child: the ``normsearch`` app of this interpreter, so the children run
# the same code and environment as ``up`` itself, with or without the console script on PATH.
CLI_PREFIX = ("-c", "from api.cli import app; app(prog_name='normsearch')")


class EmbeddedError(RuntimeError):
    """The embedded stack could not start or a child it cannot do without ended."""


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedConfig:
    """Where the embedded stack keeps its state and where its API listens."""

    runs_dir: Path
    database_url: str
    broker_url: str
    host: str
    port: int
    base_url: str
    # The broker is the stack's own SQLite file (compacted at start; nobody else consumes it).
    owns_broker: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """The ``NORMSEARCH_*`` variables the children read their settings from."""
        return {
            "NORMSEARCH_RUNS_DIR": str(self.runs_dir),
            "NORMSEARCH_DATABASE_URL": self.database_url,
            "NORMSEARCH_BROKER_URL": self.broker_url,
            "NORMSEARCH_API_HOST": self.host,
            "NORMSEARCH_API_PORT": str(self.port),
            **self.extra_env,
        }

    def health_url(self, path: str = "/healthz") -> str:
        """A URL this machine reaches the API at (a wildcard bind address means loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{path}"


def embedded_config(
    settings: Settings | None = None,
    *,
    runs_dir: Path | None = None,
    host: str | None = None,
    port: int | None = None,
) -> EmbeddedConfig:
    """The embedded stack's configuration: SQLite database and broker under the runs directory
    unless the settings name them explicitly (``NORMSEARCH_DATABASE_URL``/``_BROKER_URL``)."""
    settings = settings or get_settings()
    explicit = settings.model_fields_set
    runs = (runs_dir or settings.runs_dir).expanduser().resolve()
    database_url = (
        settings.database_url if "database_url" in explicit else f"sqlite:///{runs / DATABASE_FILE}"
    )
    owns_broker = "broker_url" not in explicit
    broker_url = f"sqla+sqlite:///{runs / BROKER_FILE}" if owns_broker else settings.broker_url
    host = host if host is not None else settings.api_host
    port = port if port is not None else settings.api_port
    base_url = settings.public_url or f"http://{host}:{port}"
    return EmbeddedConfig(
        runs_dir=runs,
        database_url=database_url,
        broker_url=broker_url,
        host=host,
        port=port,
        base_url=base_url,
        owns_broker=owns_broker,
    )


def prepare_database(url: str) -> None:
    """Create a SQLite file's directory and apply the migrations (safe to run again)."""
    from service.db.migrate import upgrade

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    upgrade(url)


def compact_sqlite_broker(path: Path) -> int:
    """Delete the messages kombu's SQLAlchemy transport has delivered (it keeps them, marked
    invisible, forever). Only while no worker consumes from the file: a message a running worker
    holds unacknowledged is invisible too. Returns how many were deleted."""
    if not path.exists():
        return 0
    connection = sqlite3.connect(path, timeout=30)
    try:
        with connection:
            exists = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kombu_message'"
            ).fetchone()
            if not exists:
                return 0
            return connection.execute("DELETE FROM kombu_message WHERE visible = 0").rowcount
    finally:
        connection.close()


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (a best-effort check before starting the API)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


# -- child processes -------------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that has the child sent SIGTERM when ``up`` dies (even by
    SIGKILL), so no API or worker outlives it; elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


_PREEXEC = _parent_death_signal()


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process: a name (for logs), its command line, whether it is restarted
    when it ends (otherwise its end is fatal), and the signals that ask it to stop, tried in
    turn before SIGKILL."""

    name: str
    argv: Sequence[str]
    restart: bool = False
    stop_signals: tuple[int, ...] = (signal.SIGTERM,)


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    log: IO[bytes] | None = None
    restart_at: float | None = None
    restarts: list[float] = field(default_factory=list)


class Supervisor:
    """Starts child processes, restarts those marked ``restart`` when they die (with a delay, and
    gives up after ``max_restarts`` within ``restart_window_s``), reports the end of any other as
    fatal, and stops them all. ``poll()`` does one round of checks and never blocks; ``watch()``
    polls until asked to stop or something fatal happens. Thread-safe."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_dir: Path | None = None,
        stop_timeout_s: float = 15.0,
        restart_delay_s: float = 1.0,
        max_restarts: int = 5,
        restart_window_s: float = 300.0,
    ) -> None:
        self._children = {spec.name: _Child(spec) for spec in specs}
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._log_dir = log_dir
        self._stop_timeout_s = stop_timeout_s
        self._restart_delay_s = restart_delay_s
        self._max_restarts = max_restarts
        self._restart_window_s = restart_window_s
        self._lock = threading.RLock()
        self._stopping = False
        self.failure: str | None = None

    def start(self) -> None:
        with self._lock:
            for child in self._children.values():
                self._spawn(child)

    def process(self, name: str) -> subprocess.Popen | None:
        return self._children[name].process

    def restarts(self, name: str) -> int:
        return len(self._children[name].restarts)

    def _spawn(self, child: _Child) -> None:
        output = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            if child.log is None:
                child.log = (self._log_dir / f"{child.spec.name}.log").open("ab")
            output = child.log
        child.process = subprocess.Popen(
            list(child.spec.argv),
            env=self._env,
            cwd=self._cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            # Its own session: a terminal's Ctrl-C reaches ``up`` only, which stops the children
            # in order; leftovers (e.g. Ray's processes) can be killed as a group.
            start_new_session=True,
            preexec_fn=_PREEXEC,
        )
        child.restart_at = None
        log.info("%s started (pid %s)", child.spec.name, child.process.pid)

    def poll(self) -> str | None:
        """Check every child once: schedule or do restarts; the failure message, if any."""
        with self._lock:
            if self._stopping or self.failure is not None:
                return self.failure
            now = time.monotonic()
            for child in self._children.values():
                process = child.process
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        self._spawn(child)
                    continue
                if process is None or process.poll() is None:
                    continue
                _kill_group(process.pid)
                code = process.returncode
                if not child.spec.restart:
                    self.failure = f"{child.spec.name} exited unexpectedly (exit code {code})"
                    return self.failure
                child.restarts = [t for t in child.restarts if now - t < self._restart_window_s]
                if len(child.restarts) >= self._max_restarts:
                    self.failure = (
                        f"{child.spec.name} exited (exit code {code}) {len(child.restarts) + 1} "
                        f"times within {self._restart_window_s:.0f} s; giving up"
                    )
                    return self.failure
                child.restarts.append(now)
                delay = self._restart_delay_s * 2 ** (len(child.restarts) - 1)
                child.restart_at = now + delay
                log.warning(
                    "%s exited (exit code %s); restarting in %.1f s", child.spec.name, code, delay
                )
            return None

    def watch(self, stop: threading.Event, interval_s: float = 0.5) -> str | None:
        """Poll until ``stop`` is set (None) or a child's end is fatal (its message)."""
        while not stop.wait(interval_s):
            failure = self.poll()
            if failure is not None:
                return failure
        return None

    def stop(self) -> None:
        """Ask every child to stop (its stop signals in turn, ``stop_timeout_s`` each), then kill
        what is left, the children's process groups included."""
        with self._lock:
            self._stopping = True
            children = list(self._children.values())
        running = [c for c in children if c.process is not None and c.process.poll() is None]
        step = 0
        while running:
            for child in running:
                signals = child.spec.stop_signals
                sig = signals[step] if step < len(signals) else signal.SIGKILL
                _signal(child.process, sig)
            deadline = time.monotonic() + self._stop_timeout_s
            for child in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            running = [c for c in running if c.process.poll() is None]
            step += 1
            if running and step > max(len(c.spec.stop_signals) for c in running):
                for child in running:  # SIGKILL did not end it: wait, it cannot refuse
                    child.process.wait()
                break
        for child in children:
            if child.process is not None:
                _kill_group(child.process.pid)
            if child.log is not None:
                child.log.close()
                child.log = None


def _signal(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


def _kill_group(pgid: int) -> None:
    """Kill what is left of a child's process group (the child itself has ended)."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


# -- the stack -------------------------------------------------------------------------------


class EmbeddedStack:
    """The API and one worker, supervised, on the database and broker of ``config``."""

    def __init__(
        self,
        config: EmbeddedConfig,
        *,
        log_dir: Path | None = None,
        app_factory: str = API_FACTORY,
        python: str = sys.executable,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.config = config
        self.log_dir = log_dir
        env = {**os.environ, **config.environment()}
        cli = [python, *CLI_PREFIX]
        self.supervisor = Supervisor(
            [
                ChildSpec(
                    "api",
                    [*cli, "serve", "--host", config.host, "--port", str(config.port)]
                    + ([] if app_factory == API_FACTORY else ["--factory", app_factory]),
                ),
                ChildSpec(
                    "worker",
                    [*cli, "worker", "--hostname", "embedded@%h"],
                    restart=True,
                ),
            ],
            env=env,
            log_dir=log_dir,
            stop_timeout_s=stop_timeout_s,
        )
        self._lock_file: IO[str] | None = None
        self._started = False

    # ---- start

    def prepare(self) -> None:
        """Lock the runs directory (one stack per directory), migrate the database and compact
        the embedded broker."""
        self.config.runs_dir.mkdir(parents=True, exist_ok=True)
        self._lock_runs_dir()
        prepare_database(self.config.database_url)
        if self.config.owns_broker:
            deleted = compact_sqlite_broker(self.config.runs_dir / BROKER_FILE)
            if deleted:
                log.info("broker: removed %d delivered message(s)", deleted)

    def _lock_runs_dir(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        handle = (self.config.runs_dir / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise EmbeddedError(
                f"another `normsearch up` is running on {self.config.runs_dir}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def start(
        self, *, ready_timeout_s: float = 120.0, cancel: threading.Event | None = None
    ) -> None:
        """Prepare, start the children and return once the API answers ``/healthz``; on any
        failure the children are stopped and ``EmbeddedError`` raised. ``cancel`` set while
        waiting: the children are left running and ``start`` returns (the caller stops)."""
        if not port_is_free(self.config.host, self.config.port):
            raise EmbeddedError(f"{self.config.host}:{self.config.port} is already in use")
        try:
            self.prepare()
            self._started = True
            self.supervisor.start()
            self.wait_ready(ready_timeout_s, cancel=cancel)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float, *, cancel: threading.Event | None = None) -> None:
        import httpx

        url = self.config.health_url()
        deadline = time.monotonic() + timeout_s
        while True:
            if cancel is not None and cancel.is_set():
                return
            failure = self.supervisor.poll()
            if failure is not None:
                raise EmbeddedError(f"{failure} before the API was ready{self._log_hint('api')}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"the API did not answer {url} within {timeout_s:.0f} s{self._log_hint('api')}"
                )
            time.sleep(0.25)

    def _log_hint(self, name: str) -> str:
        return f" (see {self.log_dir / f'{name}.log'})" if self.log_dir is not None else ""

    # ---- run

    def supervise(self, stop: threading.Event) -> str | None:
        """Supervise in this thread until ``stop`` is set (None) or the API ends or the worker
        keeps failing (the message)."""
        failure = self.supervisor.watch(stop)
        if failure is not None:
            failure += self._log_hint("api" if failure.startswith("api") else "worker")
        return failure

    # ---- stop

    def stop(self) -> None:
        """Stop the children (API and worker) and release the runs directory. Idempotent."""
        if self._started:
            self.supervisor.stop()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> EmbeddedStack:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
