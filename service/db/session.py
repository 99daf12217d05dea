"""Engine and session factories (the URL is passed in by the entry point)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite: no ON DELETE CASCADE
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    finally:
        cursor.close()


# Seconds a SQLite connection waits for another process's write lock before "database is
# locked": the API and the worker of ``normsearch up`` write the same file (the driver's
# default is 5 s).
SQLITE_BUSY_TIMEOUT_S = 30.0


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for ``url``: SQLite with foreign keys and WAL on every connection, usable from
    several threads and processes (a write waits up to ``SQLITE_BUSY_TIMEOUT_S`` for the lock);
    other backends with ``pool_pre_ping`` (survives server restarts)."""
    if make_url(url).get_backend_name() == "sqlite":
        connect_args = {
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT_S,
            **kwargs.pop("connect_args", {}),
        }
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the edge commits, then responds)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
