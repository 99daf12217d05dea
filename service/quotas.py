"""What one user may have in flight at once: the operator's quotas per user (``Settings``'
``max_jobs_per_user`` and ``max_trial_epochs_per_user``), checked when a job is queued.

The spec's limits (``service.limits``) bound one job; these bound a user's queued and running
jobs together, so one user cannot fill the workers with fifty jobs that are each within the
limits. A job's weight is its trial-epochs (``JobSpec.trial_epochs``: search trials x
``training.epochs`` + verification trials x ``verify.epochs``, the worker's epoch budget), an
upper bound of the epochs it trains. Over a quota that another job's end will free: 429 with
``Retry-After``; a job that alone exceeds the trial-epoch quota can never be queued: 403. Both
name the quota and its variable. Admins (``users.is_admin``) are exempt.

The check and the insert (or the retry's requeue) run in one transaction that first locks the
user's row (``SELECT ... FOR UPDATE`` on Postgres; on SQLite a write to the row, which takes the
database's single write lock), so two submissions at once cannot both take the last free slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import Job, User
from service.errors import ServiceError
from service.limits import env_var
from service.settings import Settings
from service.spec import JobSpec
from service.vocabulary import JobStatus

# A job in one of these occupies its owner's quota (a cancelling one too: its worker is still
# busy stopping its trials).
IN_FLIGHT_STATUSES = (JobStatus.queued, JobStatus.running, JobStatus.cancelling)


class QuotaExceeded(ServiceError):
    """429: queueing the job would take its owner over a quota that ends of their other jobs
    will free; ``Retry-After`` says when to try again. The body names the quota (``limit``, the
    setting; ``variable``, its environment variable), its value and what is in use."""

    status_code = 429
    code = "quota_exceeded"

    def __init__(
        self,
        message: str,
        *,
        setting: str,
        quota: int,
        in_use: int,
        requested: int,
        retry_after_s: int,
    ) -> None:
        super().__init__(message)
        self.setting = setting
        self.quota = quota
        self.in_use = in_use
        self.requested = requested
        self.headers = {"Retry-After": str(retry_after_s)} if self.status_code == 429 else None

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "message": self.message,
            "limit": self.setting,
            "variable": env_var(self.setting),
            "quota": self.quota,
            "in_use": self.in_use,
            "requested": self.requested,
        }


class QuotaNeverMet(QuotaExceeded):
    """403: the job alone exceeds a quota, so no wait would let it be queued."""

    status_code = 403
    code = "over_quota"


@dataclass(frozen=True)
class Usage:
    """A user's jobs in flight (queued, running or cancelling) and their trial-epochs together."""

    jobs: int
    trial_epochs: int


def job_trial_epochs(payload: dict) -> int:
    """A stored spec's trial-epochs. One that no longer reads as a spec (a spec version this
    service does not know) counts 0: its worker fails it at start without training."""
    try:
        return JobSpec.model_validate(payload).trial_epochs
    except ValidationError:
        return 0


def usage(session: Session, *, owner_id: int) -> Usage:
    """What ``owner_id``'s queued, running and cancelling jobs occupy."""
    statement = select(Job.spec).where(
        Job.owner_id == owner_id, Job.status.in_([s.value for s in IN_FLIGHT_STATUSES])
    )
    specs = list(session.scalars(statement))
    return Usage(jobs=len(specs), trial_epochs=sum(job_trial_epochs(spec) for spec in specs))


def lock_user(session: Session, *, user: User) -> User:
    """Lock ``user``'s row until the transaction ends (read back, ``is_admin`` fresh): the
    quota check and the insert that follows it are then one step for that user. Postgres:
    ``SELECT ... FOR UPDATE``. SQLite has no row locks and ignores ``FOR UPDATE``; a write to the
    row takes its single write lock (waiting for another writer's commit), and later reads in the
    transaction see every commit before it."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(User).where(User.id == user.id).values(is_admin=User.is_admin))
    statement = (
        select(User)
        .where(User.id == user.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.scalars(statement).one()


def check_quota(
    session: Session,
    *,
    user: User,
    trial_epochs: int,
    settings: Settings,
) -> None:
    """Raise ``QuotaNeverMet`` (403) or ``QuotaExceeded`` (429) unless ``user`` may queue one
    more job of ``trial_epochs`` (``JobSpec.trial_epochs``); admins may always. Call with the
    user's row locked (``lock_user``)."""
    if user.is_admin:
        return
    wanted = trial_epochs
    epochs_quota = settings.max_trial_epochs_per_user
    retry_after = settings.quota_retry_after_s
    if wanted > epochs_quota:
        raise QuotaNeverMet(
            f"this job alone has {wanted} trial-epochs (trials x epochs), over the quota of "
            f"{epochs_quota} per user ({env_var('max_trial_epochs_per_user')}), so it can never "
            "be queued; ask for fewer trials or epochs, or have the operator raise the quota",
            setting="max_trial_epochs_per_user",
            quota=epochs_quota,
            in_use=0,
            requested=wanted,
            retry_after_s=retry_after,
        )
    used = usage(session, owner_id=user.id)
    jobs_quota = settings.max_jobs_per_user
    if used.jobs + 1 > jobs_quota:
        raise QuotaExceeded(
            f"you have {used.jobs} queued, running or cancelling jobs, the quota of {jobs_quota} "
            "per user "
            f"({env_var('max_jobs_per_user')}); try again when one has finished, or cancel one",
            setting="max_jobs_per_user",
            quota=jobs_quota,
            in_use=used.jobs,
            requested=1,
            retry_after_s=retry_after,
        )
    if used.trial_epochs + wanted > epochs_quota:
        raise QuotaExceeded(
            f"your queued, running and cancelling jobs have {used.trial_epochs} trial-epochs in "
            "flight and "
            f"this job adds {wanted}, over the quota of {epochs_quota} per user "
            f"({env_var('max_trial_epochs_per_user')}); try again when one has finished, or "
            "cancel one",
            setting="max_trial_epochs_per_user",
            quota=epochs_quota,
            in_use=used.trial_epochs,
            requested=wanted,
            retry_after_s=retry_after,
        )
