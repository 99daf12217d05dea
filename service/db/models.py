"""ORM models of the service: users and API tokens, jobs and their events, trials, per-layer ratio
snapshots, metrics and artifacts.

Children of a job (events, trials, artifacts) and of a trial (snapshots, metrics) are deleted by
the database (``ON DELETE CASCADE``), so deleting a job never loads its ratio history.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db.base import Base, BigIntPK, JSONType, now
from service.vocabulary import JobStatus


def _new_job_id() -> str:
    return uuid.uuid4().hex


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # An admin is exempt from the quotas per user (``service.quotas``); set by
    # ``normsearch token create --admin``.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=now)

    tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class ApiToken(Base):
    """An API token: only the SHA-256 of the raw token is stored, plus its first characters to
    tell tokens apart in listings."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=now)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="tokens")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{status}'" for status in JobStatus) + ")",
            name="status",
        ),
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_jobs_owner_id_created_at", "owner_id", "created_at"),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_new_job_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(
        String(16), default=JobStatus.queued.value, server_default=JobStatus.queued.value
    )
    progress: Mapped[float] = mapped_column(Double, default=0.0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    # A succeeded job's result in short (the verdict's configuration and its final-epoch
    # accuracy, ``worker.outcome``), for the jobs list; null before it succeeded, and for jobs
    # that finished before the column existed.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # Its owner's label for it (optional; ``JOB_NAME_MAX_LENGTH``).
    name: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The run number: a user retry starts run + 1 in a fresh work directory; a requeue after a
    # lost worker stays in the same run (and resumes it).
    run: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="JobEvent.id",
    )
    trials: Mapped[list[Trial]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )


class JobEvent(Base):
    """One status transition of a job (the audit trail of its lifecycle)."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=now)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="events")


class Trial(Base):
    """One Ray Tune trial of a job's search (or of its verification, by ``variant``), of the
    job's run ``run``. Ids are never reused, not even those of a retried job's deleted trials
    (a Postgres sequence; ``AUTOINCREMENT`` on SQLite), so a write meant for an earlier run's
    trial can never land in a later run's history."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "ray_trial_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    # The job run (``jobs.run``) that recorded the trial; the recorder writes only while it is
    # the job's current run (``worker.db_recorder``).
    run: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    ray_trial_id: Mapped[str] = mapped_column(String(100))
    variant: Mapped[str] = mapped_column(String(32), default="sn", server_default="sn")
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    best_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)  # why a failed trial failed
    epochs_used: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    epochs_budget: Mapped[int] = mapped_column(Integer)
    # The Ray node (``ray.get_runtime_context().get_node_id()``) of its last reported epoch: a
    # trial restarted after losing its node shows the node it continued on.
    node_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)

    job: Mapped[Job] = relationship(back_populates="trials")


class RatioSnapshot(Base):
    """The switch ratios of one SN layer at one step of one trial.

    One row per (trial, step, layer): hundreds of layers x thousands of steps per trial, hence
    64-bit ids and 4-byte floats. ``UNIQUE (trial_id, step, layer_index)`` makes a replayed result
    unable to duplicate a snapshot; its index also serves range reads by ``(trial_id, step)``
    (a leading prefix), so there is no second index to maintain on every insert.
    """

    __tablename__ = "ratio_snapshots"
    __table_args__ = (UniqueConstraint("trial_id", "step", "layer_index"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    layer_index: Mapped[int] = mapped_column(Integer)  # position in network order
    layer: Mapped[str] = mapped_column(String(300))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    mean_in: Mapped[float | None] = mapped_column(REAL)
    mean_ln: Mapped[float | None] = mapped_column(REAL)
    mean_bn: Mapped[float | None] = mapped_column(REAL)
    mean_gn: Mapped[float | None] = mapped_column(REAL)
    var_in: Mapped[float | None] = mapped_column(REAL)
    var_ln: Mapped[float | None] = mapped_column(REAL)
    var_bn: Mapped[float | None] = mapped_column(REAL)
    var_gn: Mapped[float | None] = mapped_column(REAL)
    mean_rms: Mapped[float | None] = mapped_column(REAL)  # migration 0008
    var_rms: Mapped[float | None] = mapped_column(REAL)
    # The output ratios of a layer with point-wise members (sn_core.vocabulary.OUTPUT_CHOICES).
    out_norm: Mapped[float | None] = mapped_column(REAL)
    out_dyt: Mapped[float | None] = mapped_column(REAL)
    out_none: Mapped[float | None] = mapped_column(REAL)
    mean_fixed: Mapped[bool] = mapped_column(Boolean, default=False)
    var_fixed: Mapped[bool] = mapped_column(Boolean, default=False)


class Metric(Base):
    """One scalar metric (loss, accuracy, ...) of a trial at one step."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("trial_id", "step", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Double)


class Artifact(Base):
    """A file a job produced (plan, checkpoint, report), one per kind."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=now)

    job: Mapped[Job] = relationship(back_populates="artifacts")
