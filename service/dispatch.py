"""Sending work to the Celery workers: by task name and job id only, after the commit.

Only ``service.unit_of_work`` sends, once the transaction that queued the job has committed, so a
worker never looks for a job it cannot see yet (the enqueue-before-commit race).
"""

from __future__ import annotations

import logging

from celery import Celery

from service.celery_app import SEARCH_QUEUE, SEARCH_TASK

log = logging.getLogger(__name__)

# The queue of each task the service sends (every task takes one argument: the job's id).
TASK_QUEUES = {SEARCH_TASK: SEARCH_QUEUE}


def send(app: Celery, task: str, job_id: str) -> None:
    """Queue the task ``task`` of ``job_id`` (the job row must already be committed)."""
    app.send_task(task, args=[job_id], queue=TASK_QUEUES[task])
    log.info("job %s: task %s sent", job_id, task)


def send_search(app: Celery, job_id: str) -> None:
    """Queue the search task of ``job_id`` (the job row must already be committed)."""
    send(app, SEARCH_TASK, job_id)
