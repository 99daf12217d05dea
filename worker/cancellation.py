"""Stopping a running search: the ``JobCancelled`` exception and the Ray Tune stopper.

The task's heartbeat thread (``worker.heartbeat``) sets a ``threading.Event`` when the job was
cancelled (or is no longer this worker's to run). ``run_trials`` registers that event under the
experiment's path and passes ``CancellationStopper(key)`` to the Tuner's ``RunConfig(stop=...)``:
Tune asks ``stop_all()`` on every step of its control loop (about every 0.1 s), so the trials are
stopped within a heartbeat interval of the cancellation. ``run_job`` then raises ``JobCancelled``
instead of going on to the recommendation, finalization and verification.

Like ``RecorderCallback``, the stopper is pickled into the experiment state, so it carries only
its key; a restored experiment's stopper finds the event its new driver registered.
"""

from __future__ import annotations

import threading
from typing import Any

from ray import tune

# Stop events of the running experiments, by experiment path.
_EVENTS: dict[str, threading.Event] = {}


class JobCancelled(Exception):  # noqa: N818 (a cancelled job is an outcome, not an error)
    """The job was cancelled (or taken from this worker) while it ran; nothing more to do."""


def register(key: str, event: threading.Event | None) -> None:
    """Make ``event`` the stop signal of the experiment ``key`` (None: forget it)."""
    if event is None:
        _EVENTS.pop(key, None)
    else:
        _EVENTS[key] = event


def stop_requested(key: str) -> bool:
    event = _EVENTS.get(key)
    return event is not None and event.is_set()


def raise_if_stopped(event: threading.Event | None, what: str = "job") -> None:
    """Raise ``JobCancelled`` when ``event`` is set."""
    if event is not None and event.is_set():
        raise JobCancelled(f"{what} cancelled")


class CancellationStopper(tune.Stopper):
    """Stops every trial of the experiment once the event registered under ``key`` is set."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return stop_requested(self.key)

    def stop_all(self) -> bool:
        return stop_requested(self.key)


def combined_stopper(key: str, stop: Any = None) -> tune.Stopper:
    """The cancellation stopper, OR-ed with the existing stop criteria ``stop`` (a Stopper, or
    a dict of metric thresholds as ``RunConfig(stop=...)`` takes)."""
    from ray.tune.stopper import CombinedStopper, FunctionStopper

    cancellation = CancellationStopper(key)
    if stop is None:
        return cancellation
    if isinstance(stop, dict):
        thresholds = dict(stop)

        def reached(trial_id: str, result: dict[str, Any]) -> bool:
            return any(
                result.get(name, float("-inf")) >= value for name, value in thresholds.items()
            )

        stop = FunctionStopper(reached)
    return CombinedStopper(cancellation, stop)
