"""Throw-away Postgres databases for tests and benchmarks: created, migrated, dropped.

One place for the CREATE/terminate/DROP dance, so the fixtures and the benchmarks cannot drift.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.db.migrate import upgrade


class DatabaseUnavailable(RuntimeError):
    """The Postgres server to create the scratch database on cannot be reached."""


@contextmanager
def scratch_database(admin_url: str, *, prefix: str = "normsearch_scratch") -> Iterator[str]:
    """Yield the URL of a fresh database ``<prefix>_<hex>`` migrated to head; drop it after.

    ``admin_url`` points at the server's maintenance database (e.g. ``.../postgres``).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction.
    admin = create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # any failure to reach the server
        admin.dispose()
        shown = make_url(admin_url).render_as_string(hide_password=True)
        raise DatabaseUnavailable(f"PostgreSQL is not reachable at {shown}: {error}") from error
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
