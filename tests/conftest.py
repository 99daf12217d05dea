"""Database fixtures: a fresh, migrated Postgres database per test session (each test in a
transaction that is rolled back) and a migrated SQLite file per test.

Fixtures only run when a test asks for them, so tests that do not use the database are
unaffected. Postgres unreachable is a failure, never a skip: CI must not pass with part of the
suite silently left out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from service.db.migrate import upgrade
from service.db.scratch import DatabaseUnavailable, scratch_database
from service.db.session import make_engine
from tests.support.processes import BROKER_URL, flushed_redis

# The server's maintenance database; override for another server (CI service containers).
ADMIN_URL = os.environ.get(
    "NORMSEARCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def postgres_database(prefix: str) -> Iterator[str]:
    """A scratch database migrated to head (fixture body); Postgres unreachable fails the test."""
    try:
        with scratch_database(ADMIN_URL, prefix=prefix) as url:
            yield url
    except DatabaseUnavailable as error:
        pytest.fail(
            f"PostgreSQL is required for the database tests: {error} "
            "(set NORMSEARCH_TEST_POSTGRES_URL to use another server)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database ``normsearch_test_<hex>`` migrated to head; dropped at the end."""
    yield from postgres_database("normsearch_test")


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    """A database of the test module's own, for tests whose code commits (e.g. a real worker)."""
    yield from postgres_database("normsearch_module")


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


@pytest.fixture(params=["postgres", "sqlite"])
def session(request) -> Iterator[Session]:
    """The same test on both backends: Postgres (rolled back) and a migrated SQLite file."""
    if request.param == "postgres":
        yield request.getfixturevalue("pg_session")
        return
    engine = make_engine(request.getfixturevalue("sqlite_url"))
    try:
        with Session(engine, expire_on_commit=False) as sqlite_session:
            yield sqlite_session
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A SQLite file migrated to head."""
    url = f"sqlite:///{tmp_path / 'normsearch.db'}"
    upgrade(url)
    return url


# The API: an app on a module database and a Redis database of its own (no worker consumes it
# unless a test starts one); the lifespan runs, the reaper thread does not.
API_BROKER_URL = os.environ.get("NORMSEARCH_TEST_API_BROKER_URL", "redis://127.0.0.1:6379/11")


@pytest.fixture(scope="module")
def api_broker() -> Iterator[str]:
    yield from flushed_redis(API_BROKER_URL)


@pytest.fixture(scope="module")
def api_settings(module_postgres_url, api_broker, tmp_path_factory):
    from tests.support.api import api_test_settings

    return api_test_settings(tmp_path_factory.mktemp("api"), module_postgres_url, api_broker)


@pytest.fixture(scope="module")
def api_client(api_settings):
    """A TestClient of the real app (lifespan run) on the module's Postgres database."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(api_settings, run_reaper=False)) as client:
        yield client


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    """A client of the test broker's Redis database, flushed before and after the test."""
    for url in flushed_redis(BROKER_URL):
        client = redis.Redis.from_url(url)
        yield client
        client.close()
