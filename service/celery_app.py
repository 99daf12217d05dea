"""The Celery application: broker settings, task names and routes.

``make_celery(settings)`` builds an app; nothing here builds one at import (settings are read at
the entry points only): the API's ``create_app``, the worker process (``normsearch worker``, or
``celery -A worker.main:app worker -Q normsearch.search --pool=solo``) and the tests each build
their own. The API sends tasks by name (``SEARCH_TASK``) and never imports the worker; only a
worker process loads ``worker.tasks`` (``include``), which is where torch and Ray come in, and
whose task registers itself with that process's app by name.

Delivery is at-least-once: a task is acknowledged after it returns (``task_acks_late``) and a
worker that dies mid-task leaves its message to be redelivered, so tasks must be idempotent (the
search task resumes from its work directory and skips finished jobs). The serverless broker of
``normsearch up`` (kombu's SQLAlchemy transport) does not redeliver: see
``broker_transport_options``.
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings

SEARCH_TASK = "normsearch.run_search"
SEARCH_QUEUE = "normsearch.search"

# Slack between the soft time limit (raised inside the task, which then marks the job failed)
# and the hard one (the worker kills the task).
SOFT_LIMIT_MARGIN_S = 300


def soft_time_limit(settings: Settings) -> int:
    """The soft limit of a search task: the hard limit less a margin to record the failure."""
    hard = settings.task_time_limit_s
    return max(hard - SOFT_LIMIT_MARGIN_S, hard // 2)


def is_sqlalchemy_broker(url: str) -> bool:
    """Whether ``url`` names kombu's SQLAlchemy transport (``sqla+URL`` or ``sqlalchemy+URL``)."""
    scheme, plus, _ = url.partition("+")
    return bool(plus) and scheme in ("sqla", "sqlalchemy")


def broker_transport_options(settings: Settings) -> dict:
    """Transport options for the broker in ``settings``.

    Redis redelivers an unacknowledged message after the visibility timeout: it must outlast the
    longest task, or a running search would be handed to a second worker. kombu's SQLAlchemy
    transport (the embedded mode's serverless broker, ``sqla+sqlite:///runs/broker.sqlite``)
    passes every transport option to ``create_engine``, so it gets engine arguments only: for a
    SQLite file, a lock timeout longer than the driver's 5 s, as the API (publishing) and the
    worker (polling once a second) write the same file. It has no visibility timeout: a message
    a worker took stays in the table, invisible, even once acknowledged; a worker that shuts down
    cleanly puts its unacknowledged message back, one killed outright loses it, and the reaper
    (which requeues jobs whose heartbeat stopped) is what gets that search going again.
    """
    url = settings.broker_url
    if is_sqlalchemy_broker(url):
        if url.partition("+")[2].startswith("sqlite"):
            return {"connect_args": {"timeout": 30}}
        return {"pool_pre_ping": True}
    return {"visibility_timeout": settings.visibility_timeout_s()}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (broker, optional result backend, time limits: these hold
    for the search task, which sets none of its own)."""
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
        broker_transport_options=broker_transport_options(settings),
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
