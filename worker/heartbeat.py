"""The heartbeat of a running job: a daemon thread that records, every ``interval_s``, that the
worker is alive (``jobs.heartbeat_at``, each beat in its own short transaction), and sets the
``stop`` event when the job is no longer this worker's to run: cancelled by its user, failed or
requeued by the reaper, taken over by a later attempt, or deleted.

The reaper (``service.reaper``) requeues a running job whose heartbeat is older than the timeout,
so the interval must be well below ``heartbeat_timeout_s``. A failed beat (database unreachable)
is logged and retried at the next interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from service import jobs

log = logging.getLogger(__name__)


class Heartbeat:
    """``with Heartbeat(factory, job_id=..., interval_s=...) as beat:`` runs the thread for the
    duration of the block; ``beat.stop`` is the event set when the job must stop, and
    ``beat.status`` the job status that set it."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        job_id: str,
        interval_s: float,
        attempt: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.interval_s = interval_s
        self.attempt = attempt
        self.stop = stop if stop is not None else threading.Event()
        self.status: str | None = "running"
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> str | None:
        """One beat: touch the heartbeat and return the job's status; sets ``stop`` unless the
        job is still running as this worker's attempt."""
        with self.session_factory() as session, session.begin():
            status = jobs.touch_heartbeat(session, job_id=self.job_id, attempt=self.attempt)
        if status != "running" and not self.stop.is_set():
            self.status = status
            reason = status or "taken over by another attempt or deleted"
            log.warning("job %s: %s; stopping the search", self.job_id, reason)
            self.stop.set()
        return status

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # the database may be back at the next beat
                log.exception("job %s: heartbeat failed", self.job_id)

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"heartbeat-{self.job_id}", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread (waits for a beat in progress)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()
