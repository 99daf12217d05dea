"""Database fixtures: a fresh, migrated Postgres database per test session (each test in a
transaction that is rolled back) and a migrated SQLite file per test.

Fixtures only run when a test asks for them, so tests that do not use the database are
unaffected. Postgres unreachable is a failure, never a skip: CI must not pass with part of the
suite silently left out.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from service.db.migrate import upgrade
from service.db.session import make_engine

# The server's maintenance database; override for another server (CI service containers).
ADMIN_URL = os.environ.get(
    "NORMSEARCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _admin_engine() -> Engine:
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction.
    return create_engine(
        ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database ``normsearch_test_<hex>`` migrated to head; dropped at the end."""
    name = f"normsearch_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # any failure to reach the server
        admin.dispose()
        shown = make_url(ADMIN_URL).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL is required for the database tests and is not reachable at {shown} "
            f"(set NORMSEARCH_TEST_POSTGRES_URL to use another server): {error}",
            pytrace=False,
        )
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
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


@pytest.fixture(scope="session")
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_session(pg_engine: Engine) -> Iterator[Session]:
    """A Session inside an outer transaction that is rolled back after the test; the code under
    test may commit or roll back freely (those act on savepoints)."""
    with pg_engine.connect() as connection:
        outer = connection.begin()
        session = Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A SQLite file migrated to head."""
    url = f"sqlite:///{tmp_path / 'normsearch.db'}"
    upgrade(url)
    return url
