"""Celery tasks (thin): take ids, load, delegate, record status.

``run_search(job_id)`` marks the job running (``service.jobs.start_job``: a duplicate message of
a job a live worker runs is dropped), runs the search (``worker.job.run_job``) in the run's work
directory ``runs_dir/<job_id>/run-<run>/`` (``state`` and ``out``) with a ``DatabaseRecorder``
and a heartbeat thread, writes the report, records the artifacts and the job's short result
(``worker.outcome``, the jobs list's column) and marks the job succeeded;
any error marks it failed with the error's text. Failures are not re-raised: the job row carries
the outcome, and a re-raised error would only be retried against the same inputs.

A cancel (the job is ``cancelling``), or a job taken from this worker by the reaper, is noticed
by the heartbeat, which stops the trials; once the Ray run has ended and the recorder is flushed,
the task confirms a cancel (``jobs.confirm_cancelled``: ``cancelled``) and otherwise leaves the
job as it is (no failure, no artifacts).
A retry runs in a fresh ``run-<run+1>`` directory; a requeued or redelivered message of the same
run resumes from the run's Ray Tune checkpoints. With ``NORMSEARCH_STORAGE_URI`` set, the Ray Tune
experiments of a run live there, under ``<job_id>/run-<run>/``; its outputs stay in ``out``.

The task is a ``shared_task``: it registers itself, by name (``SEARCH_TASK``), with the app the
worker process built (``worker.main``, ``normsearch worker``) when that app loads this module
(``include``); nothing here builds an app or reads settings at import. Its time limits are the
app's (``service.celery_app.make_celery``).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from service import jobs
from service.celery_app import SEARCH_TASK
from service.db import make_engine, make_session_factory
from service.limits import ModelLimits
from service.metrics import metric_for
from service.settings import Settings, get_settings
from service.spec import JobSpec
from service.storage import StorageError, open_storage
from service.vocabulary import ArtifactKind

from .cancellation import JobCancelled
from .db_recorder import DatabaseRecorder
from .heartbeat import Heartbeat
from .job import epoch_budget, run_job, write_job_report
from .outcome import job_result

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def session_factory() -> sessionmaker[Session]:
    """The worker process's session factory (one engine per process, created on first use, so
    a forked pool child never shares its parent's connections)."""
    return make_session_factory(make_engine(get_settings().database_url))


def run_dir(settings: Settings, job_id: str, run: int) -> Path:
    """The work directory of one run of a job."""
    return settings.runs_dir.resolve() / job_id / f"run-{run}"


@shared_task(name=SEARCH_TASK, bind=True, acks_late=True)
def run_search(self, job_id: str) -> None:
    settings = get_settings()
    factory = session_factory()
    with factory() as session, session.begin():
        job = jobs.start_job(
            session, job_id=job_id, heartbeat_timeout_s=settings.heartbeat_timeout_s
        )
        started = None if job is None else (job.spec, job.run, job.attempts)
    if started is None:
        return
    spec_payload, run, attempt = started
    log.info("job %s: running run %s attempt %s (task %s)", job_id, run, attempt, self.request.id)
    heartbeat = Heartbeat(
        factory, job_id=job_id, interval_s=settings.heartbeat_interval_s, attempt=attempt
    )
    with heartbeat:
        stopped = _run(factory, settings, job_id, spec_payload, run, attempt, heartbeat)
        if stopped:  # the Ray run has ended and the recorder is flushed: confirm a cancel
            with factory() as session, session.begin():
                job = jobs.confirm_cancelled(session, job_id=job_id, run=run, attempt=attempt)
            if job is not None:
                log.info("job %s: cancelled (run %s stopped)", job_id, run)


def _run(
    factory, settings: Settings, job_id: str, spec_payload, run: int, attempt: int, heartbeat
) -> bool:
    """Run the job's search while ``heartbeat`` beats; record its outcome. True when the run
    stopped because its stop event was set (its outcome is then the caller's to confirm)."""
    work = run_dir(settings, job_id, run)
    recorder = None
    try:
        spec = JobSpec.model_validate(spec_payload)
        recorder = DatabaseRecorder(
            factory,
            job_id=job_id,
            flush_interval_s=0.0,  # an epoch Tune checkpointed is in the database
            total_epochs=epoch_budget(spec),
            run=run,
            attempt=attempt,
        )
        out_dir = work / "out"
        storage = open_storage(settings.storage_uri) if settings.storage_uri else None
        result = run_job(
            spec,
            data_roots=settings.resolved_data_roots(),
            work_dir=work / "state",
            recorder=recorder,
            out_dir=out_dir,
            ray_address=settings.ray_address,
            ray_num_cpus=settings.ray_num_cpus,
            stop_event=heartbeat.stop,
            model_limits=ModelLimits.from_settings(settings),
            check_cluster_fit=settings.check_cluster_fit,
            publish_capacity_to=settings.runs_dir,
            storage=storage,
            storage_key=f"{job_id}/run-{run}",
        )
        paths = write_job_report(result, out_dir)
        files = [jobs.ArtifactFile(kind, path) for kind, path in paths.items()]
        # The checkpoints are zip files, the very files a download sends: their SHA-256 and size
        # are computed once, here, and are those of what users receive.
        for kind, path in (
            (ArtifactKind.checkpoint, result.checkpoint),
            (ArtifactKind.search_checkpoint, result.search_checkpoint),
        ):
            if path is not None:
                files.append(jobs.ArtifactFile(kind, path))
        recorder.close()  # every snapshot is in before the job reads as succeeded
        # The jobs list's short result: the verdict's configuration, final-epoch accuracy.
        summary = job_result(
            result.verification,
            result.recommendation,
            result.outcomes,
            metric=metric_for(result.spec.metric),
        )
        with factory() as session, session.begin():
            jobs.finish_job(session, job_id=job_id, files=files, result=summary)
        log.info("job %s: succeeded", job_id)
    except JobCancelled:
        log.info("job %s: stopped (%s)", job_id, heartbeat.status)
        return True
    except Exception as error:  # user errors (bad data, bad spec) and crashes alike
        if heartbeat.stop.is_set():  # e.g. a stage that failed because its trials were stopped
            log.info("job %s: stopped (%s): %s", job_id, heartbeat.status, error)
            return True
        if isinstance(error, StorageError):  # the operator's setting, said in one line
            log.error("job %s: failed: %s", job_id, error)
        else:
            log.exception("job %s: failed", job_id)
        message = f"{type(error).__name__}: {error}"
        with factory() as session, session.begin():
            jobs.fail_job(session, job_id=job_id, error=message)
    finally:
        if recorder is not None:
            try:
                recorder.close()
            except Exception:
                log.exception("job %s: could not flush the recorder", job_id)
    return False
