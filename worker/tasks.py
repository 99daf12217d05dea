"""Celery tasks (thin): take ids, load, delegate, record status.

``run_search(job_id)`` marks the job running, runs the search (``worker.job.run_job``) with a
``DatabaseRecorder``, writes the report, records the artifacts and marks the job succeeded; any
error marks it failed with the error's text. Failures are not re-raised: the job row carries the
outcome, and a re-raised error would only be retried against the same inputs.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

import sn_core
from service import jobs
from service.celery_app import SEARCH_TASK, celery_app, soft_time_limit
from service.db import make_engine, make_session_factory
from service.settings import get_settings
from service.spec import JobSpec

from .db_recorder import DatabaseRecorder
from .job import run_job, write_job_report

log = logging.getLogger(__name__)

_settings = get_settings()


@lru_cache(maxsize=1)
def session_factory() -> sessionmaker[Session]:
    """The worker process's session factory (one engine per process, created on first use, so
    a forked pool child never shares its parent's connections)."""
    return make_session_factory(make_engine(get_settings().database_url))


@celery_app.task(
    name=SEARCH_TASK,
    bind=True,
    acks_late=True,
    time_limit=_settings.task_time_limit_s,
    soft_time_limit=soft_time_limit(_settings),
)
def run_search(self, job_id: str) -> None:
    settings = get_settings()
    factory = session_factory()
    with factory() as session, session.begin():
        job = jobs.start_job(session, job_id=job_id)
        spec_payload = job.spec if job is not None else None
    if spec_payload is None:
        return
    log.info("job %s: running (task %s)", job_id, self.request.id)
    job_dir = settings.runs_dir.resolve() / job_id
    out_dir = job_dir / "out"
    recorder = DatabaseRecorder(factory, job_id=job_id)
    try:
        spec = JobSpec.model_validate(spec_payload)
        result = run_job(
            spec,
            data_roots=settings.resolved_data_roots(),
            work_dir=job_dir / "state",
            recorder=recorder,
            out_dir=out_dir,
            ray_address=settings.ray_address,
            ray_num_cpus=settings.ray_num_cpus,
        )
        paths = write_job_report(result, out_dir)
        files = [jobs.ArtifactFile(kind, path) for kind, path in paths.items()]
        if result.checkpoint_dir is not None:
            ckpt = result.checkpoint_dir
            weights = ckpt / sn_core.checkpoint.WEIGHTS_MEMBER
            files.append(jobs.ArtifactFile("checkpoint", ckpt, digest_of=weights))
        recorder.close()  # every snapshot is in before the job reads as succeeded
        with factory() as session, session.begin():
            jobs.finish_job(session, job_id=job_id, files=files)
        log.info("job %s: succeeded", job_id)
    except Exception as error:  # user errors (bad data, bad spec) and crashes alike
        log.exception("job %s: failed", job_id)
        message = f"{type(error).__name__}: {error}"
        with factory() as session, session.begin():
            jobs.fail_job(session, job_id=job_id, error=message)
    finally:
        try:
            recorder.close()
        except Exception:
            log.exception("job %s: could not flush the recorder", job_id)
