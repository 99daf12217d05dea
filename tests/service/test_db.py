"""The service database: migrations agree with the models on Postgres and SQLite, constraints
hold, deletes cascade, and ``normsearch db`` migrates."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CheckConstraint, Engine, delete, func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from cli.main import app
from service.db import make_engine, make_session_factory, metadata
from service.db.migrate import alembic_config, current, upgrade
from service.db.models import (
    ApiToken,
    Artifact,
    Job,
    JobEvent,
    Metric,
    RatioSnapshot,
    Trial,
    User,
)
from service.ratio_columns import RATIO_COLUMNS
from service.vocabulary import JobStatus
from sn_core.vocabulary import OUTPUT_CHOICES, STATISTIC_MEMBERS
from tests.support.factories import make_user

TABLES = {
    "users",
    "api_tokens",
    "jobs",
    "job_events",
    "trials",
    "ratio_snapshots",
    "metrics",
    "artifacts",
}
LAYERS = ("stem.bn", "layer1.0.bn1", "layer1.0.bn2")
STEPS = (100, 200)

# The newest migration (the head every upgrade reaches).
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


# Factories (make_user is shared: tests/support/factories.py): plain functions that add and flush.


def make_job(session: Session, owner: User, **fields) -> Job:
    job = Job(owner_id=owner.id, spec={"model": {"arch": "resnet20"}}, **fields)
    session.add(job)
    session.flush()
    return job


def make_trial(session: Session, job: Job, ray_trial_id: str = "t_00000") -> Trial:
    trial = Trial(
        job_id=job.id,
        ray_trial_id=ray_trial_id,
        config={"seed": 0},
        status="running",
        epochs_budget=10,
    )
    session.add(trial)
    session.flush()
    return trial


def snapshot(trial: Trial, step: int, layer_index: int) -> RatioSnapshot:
    return RatioSnapshot(
        trial_id=trial.id,
        layer_index=layer_index,
        layer=LAYERS[layer_index],
        epoch=step // 100,
        step=step,
        mean_in=0.2,
        mean_ln=0.3,
        mean_bn=0.5,
        var_in=0.1,
        var_ln=0.1,
        var_bn=0.8,
        mean_fixed=False,
        var_fixed=step == STEPS[-1],
    )


def populate(session: Session) -> Job:
    """A job with an event, a trial with snapshots and metrics, and an artifact."""
    job = make_job(session, make_user(session))
    session.add(JobEvent(job_id=job.id, from_status=None, to_status="queued"))
    trial = make_trial(session, job)
    for step in STEPS:
        session.add_all(snapshot(trial, step, index) for index in range(len(LAYERS)))
        session.add(Metric(trial_id=trial.id, epoch=step // 100, step=step, name="loss", value=1.0))
    session.add(
        Artifact(job_id=job.id, kind="plan", path="plan.json", sha256="0" * 64, size_bytes=123)
    )
    session.flush()
    return job


@contextmanager
def rejected(session: Session, constraint: str) -> Iterator[None]:
    """Expect the database to reject what the block flushes by ``constraint``; the savepoint is
    rolled back, so the test's earlier rows stay usable."""
    with pytest.raises(IntegrityError, match=constraint), session.begin_nested():
        yield


def count(session: Session, model, **where) -> int:
    query = select(func.count()).select_from(model).filter_by(**where)
    return session.execute(query).scalar_one()


def assert_models_match_migrations(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        assert set(inspect(connection).get_table_names()) == TABLES | {"alembic_version"}


# Migrations.


def test_postgres_is_migrated_to_head_and_matches_the_models(postgres_url, pg_engine):
    assert pg_engine.dialect.name == "postgresql"
    assert current(postgres_url) == HEAD
    assert_models_match_migrations(pg_engine)


def test_sqlite_is_migrated_to_head_and_matches_the_models(sqlite_url):
    assert current(sqlite_url) == HEAD
    engine = make_engine(sqlite_url)
    try:
        assert_models_match_migrations(engine)
    finally:
        engine.dispose()


def status_check_values(engine: Engine) -> list[str]:
    """The statuses the migrated database's ``ck_jobs_status`` allows, in their order (Postgres
    reports it as ``status = ANY (ARRAY['queued'::character varying, ...])``, SQLite as written)."""
    checks = {c["name"]: c["sqltext"] for c in inspect(engine).get_check_constraints("jobs")}
    return re.findall(r"'([^']*)'", checks["ck_jobs_status"])


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_the_migrations_check_constraint_allows_exactly_the_job_statuses(
    backend, request, sqlite_url
):
    """The migrations spell the statuses out (frozen history); the model's constraint is built
    from ``JobStatus``. Both must stay equal to the enum (compare_metadata ignores CHECKs)."""
    if backend == "postgres":
        engine = request.getfixturevalue("pg_engine")
        assert status_check_values(engine) == list(JobStatus)
    else:
        engine = make_engine(sqlite_url)
        try:
            assert status_check_values(engine) == list(JobStatus)
        finally:
            engine.dispose()
    (model_check,) = [c for c in Job.__table__.constraints if isinstance(c, CheckConstraint)]
    assert re.findall(r"'([^']*)'", str(model_check.sqltext)) == list(JobStatus)


def test_every_job_status_is_stored_and_read_back(pg_session):
    user = make_user(pg_session)
    for status in JobStatus:
        job = make_job(pg_session, user, status=status)
        pg_session.expire(job)
        assert job.status == status and type(job.status) is str


def test_snapshots_have_a_column_per_statistics_member_and_output_choice():
    columns = set(RatioSnapshot.__table__.columns.keys())
    assert {c for c in columns if c.startswith(("mean_", "var_", "out_"))} == {
        f"{part}_{norm}" for part in ("mean", "var") for norm in STATISTIC_MEMBERS
    } | {f"out_{choice}" for choice in OUTPUT_CHOICES} | {"mean_fixed", "var_fixed"}
    assert set(RATIO_COLUMNS) == columns & set(RATIO_COLUMNS) and len(RATIO_COLUMNS) == 13


def test_sqlite_downgrade_to_base_and_upgrade_again(sqlite_url):
    command.downgrade(alembic_config(sqlite_url), "base")
    assert current(sqlite_url) is None
    upgrade(sqlite_url)
    assert current(sqlite_url) == HEAD


@contextmanager
def migrated_database(backend: str, tmp_path) -> Iterator[str]:
    """A database of the test's own at head (a scratch one on Postgres; dropped after)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'own.db'}"
        upgrade(url)
        yield url
        return
    from service.db.scratch import scratch_database
    from tests.conftest import ADMIN_URL

    with scratch_database(ADMIN_URL, prefix="normsearch_migration") as url:
        yield url


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_migration_0004_makes_existing_users_plain_and_downgrades(backend, tmp_path):
    """Users from before 0004 get ``is_admin`` false (NOT NULL, by the server default); new rows
    that do not name it are plain too; downgrading drops the column and keeps the users."""
    with migrated_database(backend, tmp_path) as url:
        config = alembic_config(url)
        command.downgrade(config, "0003")
        engine = make_engine(url)
        try:
            assert "is_admin" not in {c["name"] for c in inspect(engine).get_columns("users")}
            with engine.begin() as connection:
                connection.execute(
                    text("INSERT INTO users (name, created_at) VALUES ('old', :at)"),
                    {"at": "2026-12-01 00:00:00"},
                )
            command.upgrade(config, "0004")
            column = {c["name"]: c for c in inspect(engine).get_columns("users")}["is_admin"]
            assert column["nullable"] is False
            with engine.begin() as connection:
                connection.execute(
                    text("INSERT INTO users (name, created_at) VALUES ('new', :at)"),
                    {"at": "2026-12-02 00:00:00"},
                )
                connection.execute(text("UPDATE users SET is_admin = true WHERE name = 'new'"))
                rows = dict(connection.execute(text("SELECT name, is_admin FROM users")).all())
            assert rows == {"old": False, "new": True}
            command.downgrade(config, "0003")
            with engine.connect() as connection:
                names = set(connection.execute(text("SELECT name FROM users")).scalars())
            assert names == {"old", "new"}
            assert "is_admin" not in {c["name"] for c in inspect(engine).get_columns("users")}
            command.upgrade(config, "head")
            assert_models_match_migrations(engine)
        finally:
            engine.dispose()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_migration_0005_adds_cancelling_and_trial_runs_and_downgrades(backend, tmp_path):
    """0005 lets a job be ``cancelling``, gives the trials there their job's run, and (SQLite)
    rebuilds trials with AUTOINCREMENT, so a deleted highest id is never handed out again;
    the downgrade cancels the cancelling jobs (the old CHECK has no such status)."""
    with migrated_database(backend, tmp_path) as url:
        config = alembic_config(url)
        command.downgrade(config, "0004")
        engine = make_engine(url)
        at = {"at": "2026-12-01 00:00:00"}
        try:
            with engine.begin() as connection:
                connection.execute(
                    text("INSERT INTO users (name, created_at) VALUES ('u', :at)"), at
                )
                connection.execute(
                    text(
                        "INSERT INTO jobs (id, owner_id, spec, status, run, created_at, "
                        "updated_at) SELECT 'j1', id, '{}', 'failed', 3, :at, :at FROM users"
                    ),
                    at,
                )
                connection.execute(
                    text(
                        "INSERT INTO trials (job_id, ray_trial_id, config, status, "
                        "epochs_budget, created_at, updated_at) VALUES "
                        "('j1', 't0', '{}', 'ERROR', 1, :at, :at)"
                    ),
                    at,
                )
            command.upgrade(config, "0005")
            assert status_check_values(engine) == list(JobStatus)
            with engine.begin() as connection:
                (old_id, run) = connection.execute(text("SELECT id, run FROM trials")).one()
                assert run == 3
                connection.execute(text("DELETE FROM trials"))
                connection.execute(
                    text(
                        "INSERT INTO trials (job_id, run, ray_trial_id, config, status, "
                        "epochs_budget, created_at, updated_at) VALUES "
                        "('j1', 4, 't1', '{}', 'RUNNING', 1, :at, :at)"
                    ),
                    at,
                )
                assert connection.execute(text("SELECT id FROM trials")).scalar_one() > old_id
                connection.execute(text("UPDATE jobs SET status = 'cancelling'"))
            command.downgrade(config, "0004")
            with engine.connect() as connection:
                assert connection.execute(text("SELECT status FROM jobs")).scalar_one() == (
                    "cancelled"
                )
                moved = connection.execute(
                    text("SELECT from_status, to_status FROM job_events")
                ).all()
                assert [tuple(row) for row in moved] == [("cancelling", "cancelled")]
            assert "run" not in {c["name"] for c in inspect(engine).get_columns("trials")}
            command.upgrade(config, "head")
            assert_models_match_migrations(engine)
        finally:
            engine.dispose()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_migration_0006_adds_an_optional_job_name_and_downgrades(backend, tmp_path):
    """``jobs.name``: nullable (jobs from before have none), at most 100 characters; a downgrade
    drops it."""
    with migrated_database(backend, tmp_path) as url:
        config = alembic_config(url)
        engine = make_engine(url)
        try:
            column = {c["name"]: c for c in inspect(engine).get_columns("jobs")}["name"]
            assert column["nullable"] is True and column["type"].length == 100
            command.downgrade(config, "0005")
            assert "name" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
            command.upgrade(config, "head")
            assert_models_match_migrations(engine)
        finally:
            engine.dispose()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_migration_0008_adds_nullable_member_ratios_and_downgrades(backend, tmp_path):
    """0008: rms and output ratios; a downgrade drops them and keeps the snapshots, and the
    snapshots from before an upgrade have none (NULL)."""
    new = {"mean_rms", "var_rms", "out_norm", "out_dyt", "out_none"}
    with migrated_database(backend, tmp_path) as url:
        config = alembic_config(url)
        engine = make_engine(url)
        try:
            with Session(engine) as session, session.begin():
                job = populate(session)
                trial = session.scalars(select(Trial).where(Trial.job_id == job.id)).one()
                row = snapshot(trial, 300, 0)
                row.mean_rms, row.out_norm, row.out_dyt = 0.25, 0.75, 0.25
                session.add(row)
            with engine.connect() as connection:
                query = text(
                    "SELECT mean_rms, out_norm, out_dyt FROM ratio_snapshots WHERE step = 300"
                )
                assert connection.execute(query).one() == (0.25, 0.75, 0.25)
            command.downgrade(config, "0007")
            assert not new & {c["name"] for c in inspect(engine).get_columns("ratio_snapshots")}
            command.upgrade(config, "0008")
            columns = {c["name"]: c for c in inspect(engine).get_columns("ratio_snapshots")}
            assert all(columns[name]["nullable"] for name in new)
            with engine.connect() as connection:
                rows = connection.execute(
                    text(
                        "SELECT mean_bn, mean_rms, var_rms, out_norm, out_dyt, out_none "
                        "FROM ratio_snapshots"
                    )
                ).all()
            assert len(rows) == len(STEPS) * len(LAYERS) + 1
            assert {(round(row[0], 3), *row[1:]) for row in rows} == {(0.5, *[None] * 5)}
            assert_models_match_migrations(engine)
        finally:
            engine.dispose()


def test_url_with_percent_sign_reaches_alembic(tmp_path):
    """Percent-encoded URLs (passwords with special characters) must survive Alembic's config."""
    url = f"sqlite:///{tmp_path / 'a%20b.db'}"
    upgrade(url)
    assert current(url) == HEAD
    assert (tmp_path / "a b.db").exists()  # '%20' survived configparser; SQLAlchemy decoded it


# CRUD and constraints on Postgres.


def test_crud_smoke(pg_session):
    user = make_user(pg_session)
    raw = secrets.token_urlsafe(32)
    pg_session.add(
        ApiToken(
            user_id=user.id,
            name="laptop",
            prefix=raw[:8],
            token_hash=hashlib.sha256(raw.encode()).hexdigest(),
        )
    )
    job = make_job(pg_session, user, idempotency_key="k1")
    job.events.append(JobEvent(from_status=None, to_status="queued"))
    job.events.append(JobEvent(from_status="queued", to_status="running"))
    trial = make_trial(pg_session, job)
    for step in STEPS:
        pg_session.add_all(snapshot(trial, step, index) for index in range(len(LAYERS)))
        pg_session.add(
            Metric(
                trial_id=trial.id, epoch=1, step=step, name="val_accuracy", value=0.9 + step / 1e4
            )
        )
    pg_session.commit()  # a savepoint: the outer transaction is rolled back after the test

    assert len(job.id) == 32 and job.status == "queued" and job.progress == 0.0
    assert job.attempts == 0 and job.created_at.tzinfo is not None
    assert [event.to_status for event in job.events] == ["queued", "running"]
    assert user.tokens[0].token_hash != raw and len(user.tokens[0].token_hash) == 64
    rows = pg_session.scalars(
        select(RatioSnapshot)
        .where(RatioSnapshot.trial_id == trial.id, RatioSnapshot.step > STEPS[0])
        .order_by(RatioSnapshot.step, RatioSnapshot.layer_index)
    ).all()
    assert [row.layer for row in rows] == list(LAYERS)
    assert rows[0].mean_bn == pytest.approx(0.5) and rows[0].mean_gn is None
    assert rows[0].var_fixed is True and rows[0].id > 0
    assert count(pg_session, Metric, trial_id=trial.id) == len(STEPS)
    assert pg_session.get(Job, job.id).spec == {"model": {"arch": "resnet20"}}


def test_duplicate_snapshot_is_rejected(pg_session):
    trial = make_trial(pg_session, make_job(pg_session, make_user(pg_session)))
    pg_session.add(snapshot(trial, 100, 0))
    pg_session.flush()
    with rejected(pg_session, "uq_ratio_snapshots_trial_id_step_layer_index"):
        pg_session.add(snapshot(trial, 100, 0))
    # Another layer or another step is fine.
    pg_session.add_all([snapshot(trial, 100, 1), snapshot(trial, 200, 0)])
    pg_session.flush()
    assert count(pg_session, RatioSnapshot, trial_id=trial.id) == 3


def test_idempotency_key_is_unique_per_owner(pg_session):
    alice, bob = make_user(pg_session, "alice"), make_user(pg_session, "bob")
    make_job(pg_session, alice, idempotency_key="same")
    make_job(pg_session, bob, idempotency_key="same")  # another owner: fine
    make_job(pg_session, alice)
    make_job(pg_session, alice)  # no key (NULL): any number
    with rejected(pg_session, "uq_jobs_owner_id_idempotency_key"):
        make_job(pg_session, alice, idempotency_key="same")
    assert count(pg_session, Job, owner_id=alice.id) == 3


def test_status_check_constraint_rejects_unknown_status(pg_session):
    user = make_user(pg_session)
    with rejected(pg_session, "ck_jobs_status"):
        make_job(pg_session, user, status="bogus")
    assert make_job(pg_session, user, status="cancelled").status == "cancelled"


def test_deleting_a_job_cascades_on_postgres(pg_session):
    job = populate(pg_session)
    trial_ids = [trial.id for trial in job.trials]
    assert count(pg_session, RatioSnapshot, trial_id=trial_ids[0]) == len(STEPS) * len(LAYERS)
    pg_session.execute(delete(Job).where(Job.id == job.id))  # the database cascades, not the ORM
    pg_session.expunge_all()
    for model in (JobEvent, Trial, Artifact):
        assert count(pg_session, model, job_id=job.id) == 0, model
    for model in (RatioSnapshot, Metric):
        assert count(pg_session, model, trial_id=trial_ids[0]) == 0, model


def test_deleting_a_job_cascades_on_sqlite(sqlite_url):
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        with make_session_factory(engine)() as session:
            job = populate(session)
            session.commit()
            job_id, trial_id = job.id, job.trials[0].id
            assert count(session, RatioSnapshot, trial_id=trial_id) == len(STEPS) * len(LAYERS)
            session.execute(delete(Job).where(Job.id == job_id))
            session.commit()
            for model in (JobEvent, Trial, Artifact):
                assert count(session, model, job_id=job_id) == 0, model
            for model in (RatioSnapshot, Metric):
                assert count(session, model, trial_id=trial_id) == 0, model
    finally:
        engine.dispose()


# Each test runs in a transaction that is rolled back (the two tests run in this order).


def test_isolation_insert(pg_session):
    make_user(pg_session, "isolation-probe")
    pg_session.commit()
    assert count(pg_session, User, name="isolation-probe") == 1


def test_isolation_previous_insert_is_gone(pg_session):
    assert count(pg_session, User, name="isolation-probe") == 0
    assert count(pg_session, User) == 0


# The command line.


def test_cli_db_upgrade_and_current(tmp_path):
    path = tmp_path / "nested" / "dir" / "normsearch.db"
    url = f"sqlite:///{path}"
    runner = CliRunner()
    result = runner.invoke(app, ["db", "upgrade", "--url", url])
    assert result.exit_code == 0, result.output
    assert HEAD in result.output and path.exists()
    result = runner.invoke(app, ["db", "current", "--url", url])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == HEAD


def test_cli_db_upgrade_defaults_to_settings(tmp_path, monkeypatch):
    from service.settings import get_settings

    url = f"sqlite:///{tmp_path / 'fromenv.db'}"
    monkeypatch.setenv("NORMSEARCH_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["db", "upgrade"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert current(url) == HEAD
