"""Sending work to the Celery workers: by task name and job id only, after the commit.

The API and the reaper call ``send_search`` once the transaction that queued the job has
committed, so a worker never looks for a job it cannot see yet (the enqueue-before-commit race).
"""

from __future__ import annotations

import logging

from celery import Celery

from service.celery_app import SEARCH_QUEUE, SEARCH_TASK

log = logging.getLogger(__name__)


def send_search(app: Celery, job_id: str) -> None:
    """Queue the search task of ``job_id`` (the job row must already be committed)."""
    app.send_task(SEARCH_TASK, args=[job_id], queue=SEARCH_QUEUE)
    log.info("job %s: search task sent", job_id)
