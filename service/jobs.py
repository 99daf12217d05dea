"""Job service: start, finish and fail a job run (the search task's business rules).

Functions take the ``Session`` first and keyword-only arguments after; none commits (the task
commits at its edge). Nothing here imports the training stack: the worker hands in plain paths.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from service import lifecycle, repositories
from service.db.models import FINISHED_JOB_STATUSES, Artifact, Job

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactFile:
    """A job output: ``path`` is a file or a directory; ``digest_of`` the file whose SHA-256
    identifies it (default: ``path`` itself, which must then be a file)."""

    kind: str
    path: Path
    digest_of: Path | None = None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def total_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start_job(session: Session, *, job_id: str) -> Job | None:
    """Lock the job and mark it running; None when there is nothing to run (no such job, or it
    is finished: a redelivered message). A job already ``running`` belongs to a worker that was
    lost (its message came back): it is requeued and started again, as the next attempt, and the
    run resumes from its work directory."""
    job = repositories.get_job(session, job_id, for_update=True)
    if job is None:
        log.warning("job %s does not exist; nothing to run", job_id)
        return None
    if job.status in FINISHED_JOB_STATUSES:
        log.info("job %s is already %s; nothing to run", job_id, job.status)
        return None
    if job.status == "running":
        log.warning("job %s was running (attempt %s): resuming", job_id, job.attempts)
        lifecycle.transition(session, job, "queued", message="redelivered after a lost worker")
    lifecycle.transition(session, job, "running")
    return job


def finish_job(session: Session, *, job_id: str, files: list[ArtifactFile]) -> Job:
    """Record the job's output files (one artifact per kind, replacing an earlier one) and mark
    it succeeded."""
    job = repositories.get_job(session, job_id, for_update=True)
    if job is None:
        raise LookupError(f"job {job_id} does not exist")
    existing: Mapping[str, Artifact] = {artifact.kind: artifact for artifact in job.artifacts}
    for file in files:
        path = Path(file.path).resolve()
        values = {
            "path": str(path),
            "sha256": sha256_file(file.digest_of or path),
            "size_bytes": total_size(path),
        }
        artifact = existing.get(file.kind)
        if artifact is None:
            job.artifacts.append(Artifact(kind=file.kind, **values))
        else:
            for name, value in values.items():
                setattr(artifact, name, value)
    lifecycle.transition(session, job, "succeeded")
    return job


def fail_job(session: Session, *, job_id: str, error: str) -> Job | None:
    """Mark a running job failed with ``error``; a job in another state is left as it is."""
    job = repositories.get_job(session, job_id, for_update=True)
    if job is None:
        log.warning("job %s does not exist; cannot record its failure: %s", job_id, error)
        return None
    if not lifecycle.can_transition(job.status, "failed"):
        log.warning("job %s is %s; not marking it failed: %s", job_id, job.status, error)
        return job
    return lifecycle.transition(session, job, "failed", message=error)
