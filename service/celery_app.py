"""The Celery application: broker settings, task names and routes.

The API sends tasks by name (``SEARCH_TASK``) and never imports the worker; only a worker process
loads ``worker.tasks`` (``include``), which is where torch and Ray come in. Start a worker with::

    celery -A service.celery_app:celery_app worker -Q normsearch.search --pool=solo

Delivery is at-least-once: a task is acknowledged after it returns (``task_acks_late``) and a
worker that dies mid-task leaves its message to be redelivered, so tasks must be idempotent (the
search task resumes from its work directory and skips finished jobs).
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings, get_settings

SEARCH_TASK = "normsearch.run_search"
SEARCH_QUEUE = "normsearch.search"

# Slack between the soft time limit (raised inside the task, which then marks the job failed)
# and the hard one (the worker kills the task).
SOFT_LIMIT_MARGIN_S = 300


def soft_time_limit(settings: Settings) -> int:
    """The soft limit of a search task: the hard limit less a margin to record the failure."""
    hard = settings.task_time_limit_s
    return max(hard - SOFT_LIMIT_MARGIN_S, hard // 2)


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (broker, optional result backend, time limits)."""
    app = Celery("normsearch", include=["worker.tasks"])
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        # Job state lives in the database; without a result backend there is nothing to store.
        task_ignore_result=settings.result_backend is None,
        # JSON only: a task carries ids, never pickled objects.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # At-least-once delivery, one long task at a time per worker process.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=soft_time_limit(settings),
        # Redis redelivers an unacknowledged message after the visibility timeout: it must
        # outlast the longest task, or a running search would be handed to a second worker.
        broker_transport_options={"visibility_timeout": settings.task_time_limit_s + 3600},
        broker_connection_retry_on_startup=True,
        # Keep the real stdout/stderr: Ray (started inside the task) calls
        # faulthandler.enable(), which needs a file descriptor, not Celery's logging proxy.
        worker_redirect_stdouts=False,
        task_default_queue=SEARCH_QUEUE,
        task_routes={SEARCH_TASK: {"queue": SEARCH_QUEUE}},
        timezone="UTC",
        enable_utc=True,
    )
    return app


celery_app = make_celery(get_settings())
