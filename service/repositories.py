"""Every query of the service: jobs, job events, trials, ratio snapshots and metrics.

Functions take the ``Session`` first and keyword-only arguments after (``get_job`` also takes the
id positionally). None of them commits: the caller commits at the edge (end of the request or of
the task). Bulk writes (``insert_snapshots``, ``insert_metrics``) are bulk ``INSERT`` statements
(Postgres: one ``INSERT ... SELECT FROM unnest(arrays)``; SQLite: multi-row ``VALUES`` pages)
that ignore rows already present (``ON CONFLICT DO NOTHING`` on the table's unique key),
so replaying a result never duplicates history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, cast, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from service.db.base import now
from service.db.models import Artifact, Job, JobEvent, Metric, RatioSnapshot, Trial
from service.vocabulary import JobStatus

# Rows per INSERT statement of a bulk insert into SQLite (SQLAlchemy lowers it further where the
# bind parameter limit, 32766, requires).
_PAGE_ROWS = 2000

SNAPSHOT_KEY = ("trial_id", "step", "layer_index")
KEEP = object()  # "leave this column as it is" where None is a value
METRIC_KEY = ("trial_id", "step", "name")


# Jobs and events


def create_job(
    session: Session, *, owner_id: int, spec: dict[str, Any], idempotency_key: str | None = None
) -> Job:
    """Insert a queued job (see ``create_job_once``), returning the job only."""
    return create_job_once(session, owner_id=owner_id, spec=spec, idempotency_key=idempotency_key)[
        0
    ]


def create_job_once(
    session: Session,
    *,
    owner_id: int,
    spec: dict[str, Any],
    idempotency_key: str | None = None,
    name: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job: (job, created). With an ``idempotency_key``, a second call for the
    same (owner, key) returns the job the first one created, with created False (idempotent
    POST), also when two requests race (the unique constraint decides, inside a savepoint)."""
    if idempotency_key is not None:
        existing = job_by_key(session, owner_id=owner_id, idempotency_key=idempotency_key)
        if existing is not None:
            return existing, False
    job = Job(
        owner_id=owner_id,
        spec=spec,
        idempotency_key=idempotency_key,
        name=name,
        status=JobStatus.queued,
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = job_by_key(session, owner_id=owner_id, idempotency_key=idempotency_key)
        if existing is None:
            raise
        return existing, False
    return job, True


def job_by_key(session: Session, *, owner_id: int, idempotency_key: str) -> Job | None:
    """The job ``owner_id`` submitted with ``idempotency_key``, or None."""
    return session.scalars(
        select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == idempotency_key)
    ).one_or_none()


def get_job(
    session: Session, job_id: str, *, for_update: bool = False, with_children: bool = False
) -> Job | None:
    """The job, or None. ``for_update`` locks its row (``SELECT ... FOR UPDATE`` on Postgres) so
    that two workers cannot both move it out of the same status. ``with_children`` loads its
    events and artifacts in the same round trip (a few rows each)."""
    statement = select(Job).where(Job.id == job_id)
    if for_update:
        statement = statement.with_for_update()
    if with_children:
        statement = statement.options(joinedload(Job.events), joinedload(Job.artifacts))
        return session.scalars(statement).unique().one_or_none()
    return session.scalars(statement).one_or_none()


JOB_SORT_KEYS = ("created_at", "updated_at", "status", "progress")


def _owned_jobs(owner_id: int, status: str | Sequence[str] | None):
    statement = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        statement = statement.where(Job.status.in_(statuses))
    return statement


def list_jobs(
    session: Session,
    *,
    owner_id: int,
    status: str | Sequence[str] | None = None,
    limit: int = 50,
    offset: int = 0,
    newest_first: bool = True,
    sort: str = "created_at",
) -> list[Job]:
    """One page of an owner's jobs ordered by ``sort`` (one of ``JOB_SORT_KEYS``; ``id`` breaks
    ties), optionally only those in ``status`` (one status or several)."""
    if sort not in JOB_SORT_KEYS:
        raise ValueError(f"cannot sort jobs by {sort!r}")
    column = getattr(Job, sort)
    statement = _owned_jobs(owner_id, status)
    if newest_first:
        statement = statement.order_by(column.desc(), Job.id.desc())
    else:
        statement = statement.order_by(column.asc(), Job.id.asc())
    return list(session.scalars(statement.limit(limit).offset(offset)))


def count_jobs(
    session: Session, *, owner_id: int, status: str | Sequence[str] | None = None
) -> int:
    subquery = _owned_jobs(owner_id, status).with_only_columns(Job.id).subquery()
    return session.scalar(select(func.count()).select_from(subquery)) or 0


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """Jobs of every owner per status (the service's gauges)."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: count for status, count in rows}


def delete_job(session: Session, job: Job) -> None:
    """Delete a job; its events, trials, history and artifacts go with it (ON DELETE CASCADE
    in the database, so the history is never loaded)."""
    session.execute(delete(Job).where(Job.id == job.id))
    session.expunge(job)


def touch_heartbeat(session: Session, *, job_id: str, attempt: int | None, at) -> str | None:
    """Set a running or cancelling job's ``heartbeat_at`` (of attempt ``attempt`` only, if
    given) without touching ``updated_at``; its status when it was one of those (and of that
    attempt), else None."""
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_((JobStatus.running, JobStatus.cancelling)))
        .values(heartbeat_at=at, updated_at=Job.updated_at)
        .returning(Job.status)
    )
    if attempt is not None:
        statement = statement.where(Job.attempts == attempt)
    options = {"synchronize_session": False}
    row = session.execute(statement, execution_options=options).first()
    return None if row is None else row[0]


def job_status_and_attempts(session: Session, *, job_id: str) -> tuple[str, int] | None:
    row = session.execute(select(Job.status, Job.attempts).where(Job.id == job_id)).one_or_none()
    return None if row is None else (row[0], row[1])


def job_run_state(session: Session, *, job_id: str) -> tuple[int, str, int] | None:
    """The job's current run, status and attempts, the row locked ``FOR KEY SHARE`` on
    Postgres: a retry or a cancel, which lock it ``FOR UPDATE``, wait for the caller's
    transaction (and the caller for theirs), while heartbeats and progress updates do not;
    None: no such job."""
    statement = (
        select(Job.run, Job.status, Job.attempts)
        .where(Job.id == job_id)
        .with_for_update(read=True, key_share=True)
    )
    row = session.execute(statement).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


def raise_progress(session: Session, *, job_id: str, progress: float) -> bool:
    """Set a running job's progress to ``progress`` if that is higher; True when it changed."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.progress < progress)
        .values(progress=progress),
        execution_options={"synchronize_session": False},
    )
    return result.rowcount > 0


def delete_run_results(session: Session, *, job_id: str) -> None:
    """Delete a job's trials (the database cascades to their snapshots and metrics) and
    artifacts: what a retry starts over without."""
    options = {"synchronize_session": False}
    session.execute(delete(Trial).where(Trial.job_id == job_id), execution_options=options)
    session.execute(delete(Artifact).where(Artifact.job_id == job_id), execution_options=options)


def running_jobs(session: Session, *, limit: int) -> list[Job]:
    """Running jobs, longest-running first, at most ``limit`` (the service's gauges)."""
    statement = (
        select(Job)
        .where(Job.status == JobStatus.running)
        .order_by(Job.started_at, Job.id)
        .limit(limit)
    )
    return list(session.scalars(statement))


def count_stale_running_jobs(session: Session, *, before) -> int:
    """Running jobs whose last heartbeat is older than ``before`` (or missing)."""
    statement = (
        select(func.count())
        .select_from(Job)
        .where(
            Job.status == JobStatus.running,
            or_(Job.heartbeat_at < before, Job.heartbeat_at.is_(None)),
        )
    )
    return session.scalar(statement) or 0


def lock_stale_running_jobs(session: Session, *, before) -> list[Job]:
    """Running and cancelling jobs whose last heartbeat is older than ``before`` (or missing),
    oldest first, locked; rows another transaction holds are skipped (Postgres; SQLite has no
    row locks), so several reapers can run at once."""
    statement = (
        select(Job)
        .where(
            Job.status.in_((JobStatus.running, JobStatus.cancelling)),
            or_(Job.heartbeat_at < before, Job.heartbeat_at.is_(None)),
        )
        .order_by(Job.heartbeat_at, Job.id)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(statement))


def add_event(
    session: Session,
    *,
    job_id: str,
    from_status: str | None,
    to_status: str,
    message: str | None = None,
) -> JobEvent:
    """Append one status transition to a job's audit trail."""
    event = JobEvent(job_id=job_id, from_status=from_status, to_status=to_status, message=message)
    session.add(event)
    return event


# Trials


def upsert_trial(
    session: Session,
    *,
    job_id: str,
    ray_trial_id: str,
    variant: str,
    config: dict[str, Any],
    status: str,
    epochs_budget: int,
    run: int = 1,
) -> Trial:
    """Insert the trial of job run ``run``, or update the one a previous start (a restart)
    recorded; its history, ``epochs_used`` and ``best_metrics`` are kept."""
    trial = get_trial(session, job_id=job_id, ray_trial_id=ray_trial_id)
    if trial is None:
        trial = Trial(
            job_id=job_id,
            run=run,
            ray_trial_id=ray_trial_id,
            variant=variant,
            config=config,
            status=status,
            epochs_budget=epochs_budget,
            epochs_used=0,
        )
        session.add(trial)
    else:
        trial.variant, trial.config, trial.status = variant, config, status
        trial.epochs_budget = epochs_budget
    session.flush()
    return trial


def get_trial(session: Session, *, job_id: str, ray_trial_id: str) -> Trial | None:
    return session.scalars(
        select(Trial).where(Trial.job_id == job_id, Trial.ray_trial_id == ray_trial_id)
    ).one_or_none()


def list_trials(session: Session, *, job_id: str, run: int | None = None) -> list[Trial]:
    """A job's trials (of run ``run`` only, if given) in creation order."""
    statement = select(Trial).where(Trial.job_id == job_id)
    if run is not None:
        statement = statement.where(Trial.run == run)
    return list(session.scalars(statement.order_by(Trial.id)))


def update_trial(
    session: Session,
    trial_id: int,
    *,
    status: str | None = None,
    epochs_used: int | None = None,
    best_metrics: dict[str, Any] | None = None,
    error: str | None | object = KEEP,
    node_id: str | None = None,
) -> None:
    """Set the given fields of a trial (``None``: leave as is; for ``error``, ``KEEP`` leaves
    it and ``None`` clears it) in one ``UPDATE``."""
    values: dict[str, Any] = {}
    if error is not KEEP:
        values["error"] = error
    if status is not None:
        values["status"] = status
    if epochs_used is not None:
        values["epochs_used"] = epochs_used
    if best_metrics is not None:
        values["best_metrics"] = best_metrics
    if node_id is not None:
        values["node_id"] = node_id
    if values:
        values["updated_at"] = now()
        session.execute(
            update(Trial).where(Trial.id == trial_id).values(**values),
            execution_options={"synchronize_session": False},
        )


# Snapshots and metrics


def insert_snapshots(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert ratio snapshots (dicts of ``RatioSnapshot`` columns, without ``id``), ignoring any
    whose (trial_id, step, layer_index) exists; returns the number of new rows."""
    return _insert_ignoring(session, RatioSnapshot.__table__, rows, SNAPSHOT_KEY)


def insert_metrics(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert metrics (dicts of ``Metric`` columns, without ``id``), ignoring any whose
    (trial_id, step, name) exists; returns the number of new rows."""
    return _insert_ignoring(session, Metric.__table__, rows, METRIC_KEY)


def _insert_ignoring(
    session: Session, table: Table, rows: list[dict[str, Any]], key: Sequence[str]
) -> int:
    """One bulk ``INSERT ... ON CONFLICT DO NOTHING RETURNING id``; the number of new rows
    (RETURNING yields only the rows inserted; rowcount is unreliable here)."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Postgres: one statement whose rows come from one array per column
        # (INSERT ... SELECT * FROM unnest(:col1, :col2, ...)): 16 parameters however many rows,
        # so the server parses and plans a short statement instead of thousands of VALUES
        # tuples (about 3x the rate of multi-row VALUES pages here).
        names = list(rows[0])
        source = (
            func.unnest(
                *(
                    cast(bindparam(name, [row[name] for row in rows]), ARRAY(table.c[name].type))
                    for name in names
                )
            )
            .table_valued(*names)
            .render_derived()
        )
        statement = postgresql.insert(table).from_select(names, select(*source.c))
        statement = statement.on_conflict_do_nothing(index_elements=list(key))
        return len(session.connection().execute(statement.returning(table.c.id)).all())
    if dialect == "sqlite":
        # SQLite: one cached statement executed with the list of rows; SQLAlchemy's
        # "insertmanyvalues" sends multi-row INSERT ... VALUES pages within SQLite's parameter
        # limit, without compiling a statement per batch.
        statement = (
            sqlite.insert(table)
            .on_conflict_do_nothing(index_elements=list(key))
            .returning(table.c.id)
            .execution_options(insertmanyvalues_page_size=_PAGE_ROWS)
        )
        return len(session.connection().execute(statement, rows).all())
    raise NotImplementedError(f"bulk insert for {dialect!r}")  # pragma: no cover


def ratio_history(
    session: Session,
    *,
    trial_id: int,
    after_step: int | None = None,
    layers: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[RatioSnapshot]:
    """A trial's snapshots ordered by (step, layer_index): those after ``after_step`` (the
    incremental cursor of a live view), of the named ``layers`` only, at most ``limit`` rows."""
    statement = select(RatioSnapshot).where(RatioSnapshot.trial_id == trial_id)
    if after_step is not None:
        statement = statement.where(RatioSnapshot.step > after_step)
    if layers is not None:
        statement = statement.where(RatioSnapshot.layer.in_(list(layers)))
    statement = statement.order_by(RatioSnapshot.step, RatioSnapshot.layer_index)
    if limit is not None:
        statement = statement.limit(limit)
    return list(session.scalars(statement))


def snapshot_steps(
    session: Session,
    *,
    trial_id: int,
    after_step: int | None = None,
    layers: Iterable[str] | None = None,
) -> list[tuple[int, int]]:
    """(step, snapshots at that step) for each step a trial has snapshots for (after
    ``after_step``; of the named ``layers`` only), ascending; served by the (trial_id, step,
    layer_index) index."""
    statement = (
        select(RatioSnapshot.step, func.count())
        .where(RatioSnapshot.trial_id == trial_id)
        .group_by(RatioSnapshot.step)
        .order_by(RatioSnapshot.step)
    )
    if after_step is not None:
        statement = statement.where(RatioSnapshot.step > after_step)
    if layers is not None:
        statement = statement.where(RatioSnapshot.layer.in_(list(layers)))
    return [(step, count) for step, count in session.execute(statement)]


def snapshots_at_steps(
    session: Session,
    *,
    trial_id: int,
    steps: Sequence[int],
    layers: Iterable[str] | None = None,
) -> list[RatioSnapshot]:
    """A trial's snapshots at the given steps ordered by (step, layer_index), optionally only
    the named ``layers``."""
    if not steps:
        return []
    statement = select(RatioSnapshot).where(
        RatioSnapshot.trial_id == trial_id, RatioSnapshot.step.in_(list(steps))
    )
    if layers is not None:
        statement = statement.where(RatioSnapshot.layer.in_(list(layers)))
    return list(session.scalars(statement.order_by(RatioSnapshot.step, RatioSnapshot.layer_index)))


def iter_job_snapshots(session: Session, *, job_id: str, chunk_rows: int = 5000):
    """Every snapshot of a job's trials as (trial, snapshot) rows in (trial, step, layer) order,
    fetched ``chunk_rows`` at a time (an export must not hold the whole history in memory)."""
    statement = (
        select(Trial.ray_trial_id, Trial.variant, RatioSnapshot)
        .join(RatioSnapshot, RatioSnapshot.trial_id == Trial.id)
        .where(Trial.job_id == job_id)
        .order_by(Trial.id, RatioSnapshot.step, RatioSnapshot.layer_index)
        .execution_options(yield_per=chunk_rows)
    )
    yield from session.execute(statement)


def latest_snapshot_steps(session: Session, *, job_id: str) -> dict[int, int]:
    """The newest snapshot step of each of a job's trials (what a live view polls for)."""
    rows = session.execute(
        select(RatioSnapshot.trial_id, func.max(RatioSnapshot.step))
        .join(Trial, Trial.id == RatioSnapshot.trial_id)
        .where(Trial.job_id == job_id)
        .group_by(RatioSnapshot.trial_id)
    ).all()
    return {trial_id: step for trial_id, step in rows}


def metric_history(
    session: Session,
    *,
    trial_id: int | Sequence[int],
    after_step: int | None = None,
    names: Iterable[str] | None = None,
) -> list[Metric]:
    """Metrics of one trial or several, ordered by (trial, step, name)."""
    trial_ids = [trial_id] if isinstance(trial_id, int) else list(trial_id)
    statement = select(Metric).where(Metric.trial_id.in_(trial_ids))
    if after_step is not None:
        statement = statement.where(Metric.step > after_step)
    if names is not None:
        statement = statement.where(Metric.name.in_(list(names)))
    return list(session.scalars(statement.order_by(Metric.trial_id, Metric.step, Metric.name)))


def events_after(session: Session, *, job_id: str, after_id: int | None = None) -> list[JobEvent]:
    """A job's events with ids above ``after_id`` (the Last-Event-ID of a reconnecting stream)."""
    statement = select(JobEvent).where(JobEvent.job_id == job_id)
    if after_id is not None:
        statement = statement.where(JobEvent.id > after_id)
    return list(session.scalars(statement.order_by(JobEvent.id)))
