"""One transaction and what must wait for its commit: the tasks it queued, the files it freed.

Service functions neither commit nor send. One that queues a job records the send on its session
(``send_after_commit``); one that deletes a job, the job's directory (``remove_after_commit``).
``unit_of_work`` commits the session and only then acts on them, so a worker never looks for a
job it cannot see yet (the enqueue-before-commit race), and nothing is sent or removed for a
transaction that rolled back.

A send the broker refuses is handled here, once, as the pending send says (``if_unsent``): the
job is deleted (a new submission: as if it had never been made), cancelled with the reason (a
retry), or left as it is (the reaper's requeue), in a transaction of its own; then
``BrokerUnavailable`` (503) is raised, so nothing is acknowledged that was not queued.

The API's session dependency (``api.deps.get_session``) and each pass of the reaper
(``service.reaper.run_reaper_once``) run in a ``unit_of_work``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from celery import Celery
from sqlalchemy.orm import Session

from service import dispatch, lifecycle, repositories
from service.celery_app import SEARCH_TASK
from service.errors import BrokerUnavailable

log = logging.getLogger(__name__)

IfUnsent = Literal["delete", "cancel", "keep"]
UNSENT_REASON = "the task broker was unavailable"


@dataclass(frozen=True)
class PendingSend:
    """A task to send once the transaction has committed, and what to do with its job (still
    queued) if the broker refuses it."""

    job_id: str
    task: str
    if_unsent: IfUnsent
    reason: str = UNSENT_REASON


@dataclass
class _AfterCommit:
    sends: list[PendingSend] = field(default_factory=list)
    removals: list[Path] = field(default_factory=list)


_INFO_KEY = "normsearch.after_commit"


def _after_commit(session: Session) -> _AfterCommit:
    return session.info.setdefault(_INFO_KEY, _AfterCommit())


def send_after_commit(
    session: Session,
    *,
    job_id: str,
    if_unsent: IfUnsent,
    reason: str = UNSENT_REASON,
    task: str = SEARCH_TASK,
) -> None:
    """Send ``task`` for ``job_id`` once ``session``'s transaction has committed (in a
    ``unit_of_work``; outside one nothing is sent). ``if_unsent``: what becomes of the job if
    the broker refuses it (``reason`` is the cancelled job's event note)."""
    if if_unsent not in get_args(IfUnsent):
        raise ValueError(f"if_unsent must be one of {get_args(IfUnsent)}, not {if_unsent!r}")
    if task not in dispatch.TASK_QUEUES:
        raise ValueError(f"unknown task {task!r}")
    _after_commit(session).sends.append(PendingSend(job_id, task, if_unsent, reason))


def remove_after_commit(session: Session, path: Path) -> None:
    """Delete the directory ``path`` once ``session``'s transaction has committed."""
    _after_commit(session).removals.append(Path(path))


def pending_sends(session: Session) -> list[PendingSend]:
    """The sends ``session`` holds until its commit (in the order they were recorded)."""
    return list(_after_commit(session).sends)


@contextmanager
def unit_of_work(session_factory: Callable[[], Session], celery: Celery) -> Iterator[Session]:
    """A session committed when the block ends without error (rolled back otherwise); after the
    commit, the directories recorded on it are removed and its tasks sent, in that order.
    Raises ``BrokerUnavailable`` after taking back the jobs whose task could not be sent."""
    with session_factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            session.info.pop(_INFO_KEY, None)  # nothing of a rolled-back transaction happens
            raise
        after = session.info.pop(_INFO_KEY, None) or _AfterCommit()
        for path in after.removals:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        unsent = [send for send in after.sends if not _send(celery, send)]
        if unsent:
            for send in unsent:
                _take_back(session, send)
            session.commit()
            raise BrokerUnavailable()


def _send(celery: Celery, send: PendingSend) -> bool:
    try:
        dispatch.send(celery, send.task, send.job_id)
    except Exception as error:  # kombu raises a variety of connection errors
        log.error(
            "job %s: could not send task %s (%s: %s); the job is %s",
            send.job_id,
            send.task,
            type(error).__name__,
            error,
            {"delete": "deleted", "cancel": "cancelled", "keep": "left queued"}[send.if_unsent],
        )
        return False
    return True


def _take_back(session: Session, send: PendingSend) -> None:
    """Undo the queueing of a job whose task was not sent (a job no longer queued is left)."""
    if send.if_unsent == "keep":
        return
    job = repositories.get_job(session, send.job_id, for_update=True)
    if job is None or job.status != "queued":
        return
    if send.if_unsent == "delete":
        repositories.delete_job(session, job)
    else:
        lifecycle.transition(session, job, "cancelled", message=send.reason)
