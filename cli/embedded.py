"""The embedded single-machine stack behind ``normsearch up``: the production code path with no
servers to install.

The database is a SQLite file and the Celery broker is kombu's SQLAlchemy transport on another
SQLite file, both under the runs directory (an explicit ``NORMSEARCH_DATABASE_URL`` or
``NORMSEARCH_BROKER_URL`` wins). The migrations are applied, then the API (``normsearch serve``)
and one Celery worker (``normsearch worker``) run as child processes that read their settings from
``NORMSEARCH_*`` environment variables, exactly as they would on separate machines.

``cli.supervisor.Supervisor`` owns the child processes: a child marked ``restart`` (the worker) is
started again whenever it dies, after a back-off that doubles per death in a row (1 s up to 60 s),
and never given up on, so a worker that keeps dying never takes the API down; the API ending is
fatal; ``stop()`` sends each child
SIGTERM, then SIGKILL after a timeout. uvicorn shuts down gracefully. Celery's warm shutdown waits
for a running task, but a search's Ray driver turns SIGTERM into ``SystemExit``: the search stops
at once and Celery puts its unacknowledged message back on the queue, so the next ``up`` resumes it
from its work directory. A worker killed outright (SIGKILL, a crash) loses its message, as the
SQLAlchemy transport has no visibility timeout; the API's reaper requeues the job once its
heartbeat is stale. Celery's cold shutdown (SIGQUIT) is not used: with the solo pool it raises
``NotImplementedError`` inside the task, which would mark the job failed.

``EmbeddedStack`` prepares the runs directory and database, starts the supervisor and waits for
the API's ``/healthz``; ``supervise`` then restarts the worker until told to stop.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

from cli.supervisor import ChildSpec, Supervisor
from service.settings import Settings, get_settings, sqlite_url

log = logging.getLogger(__name__)

API_FACTORY = "api.app:create_app"
BROKER_FILE = "broker.sqlite"
LOCK_FILE = ".up.lock"
# The command line of a child: the ``normsearch`` app of this interpreter, so the children run
# the same code and environment as ``up`` itself, with or without the console script on PATH.
CLI_PREFIX = ("-c", "from cli.main import app; app(prog_name='normsearch')")


# The embedded worker's own Ray listens on loopback only: with Ray clusters off (the variable Ray
# reads when it is imported, its default on macOS and Windows) a local Ray takes 127.0.0.1 as
# its node address, and its servers bind to that address instead of one every host can reach.
LOOPBACK_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


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
    # No RAY_ADDRESS: the worker starts a Ray of its own, bound to loopback (LOOPBACK_RAY_ENV).
    local_ray: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """The ``NORMSEARCH_*`` variables the children read their settings from (and, for a
        local Ray, the variable that keeps it on loopback)."""
        return {
            **(LOOPBACK_RAY_ENV if self.local_ray else {}),
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
    database_url = settings.database_url if "database_url" in explicit else sqlite_url(runs)
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
        local_ray=settings.ray_address is None,
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
        """Supervise in this thread until ``stop`` is set (None) or the API ends (the message);
        the worker is restarted, with back-off, however often it dies."""
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
