"""Where a search's results go: the recorder interface and its file (JSONL) implementation.

The driver-side Tune callback (``worker.search``) is the only writer; trials never touch storage.
Records (``worker.results.EpochRecord``) are keyed by (trial, epoch) and recorders ignore a
repeat, so a trial restarted from its checkpoint (or a driver replaying results after a restore)
leaves no duplicate and no gap. The service adds a database recorder behind the same interface.
A recorder only receives: the driver keeps its own ``MemoryRecorder`` for the outcomes it returns.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Protocol

from .results import EpochRecord


class Recorder(Protocol):
    """What the driver sends for every trial event."""

    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None: ...

    def trial_result(self, trial_id: str, record: EpochRecord) -> None: ...

    def trial_finished(self, trial_id: str, status: str, error: str | None = None) -> None: ...

    def trial_recovered(self, trial_id: str, message: str) -> None:
        """The trial failed (e.g. lost its node) and Tune restarts it from its last checkpoint;
        ``message`` says what happened, for users (the service writes it as a job event)."""


class MemoryRecorder:
    """Keeps everything in memory (the driver's own history, and the base of the file
    recorder); ``trials()`` returns it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trials: dict[str, dict[str, Any]] = {}
        self._recoveries: list[tuple[str, str]] = []  # (trial id, message), in order

    def _trial(self, trial_id: str) -> dict[str, Any]:
        return self._trials.setdefault(
            trial_id, {"config": {}, "status": "PENDING", "error": None, "history": {}}
        )

    def _apply(self, event: dict[str, Any]) -> bool:
        """Apply one event; False when it repeats what is already recorded."""
        trial = self._trial(event["trial_id"])
        kind = event["event"]
        if kind == "started":
            trial["config"] = event["config"]
            trial["status"] = "RUNNING"
        elif kind == "result":
            epoch = int(event["record"]["epoch"])
            if epoch in trial["history"]:
                return False
            trial["history"][epoch] = event["record"]
        elif kind == "finished":
            trial["status"], trial["error"] = event["status"], event.get("error")
        elif kind == "recovered":
            self._recoveries.append((event["trial_id"], event["message"]))
        return True

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._apply(event)

    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None:
        self._record({"event": "started", "trial_id": trial_id, "config": config})

    def trial_result(self, trial_id: str, record: EpochRecord) -> None:
        self._record({"event": "result", "trial_id": trial_id, "record": record})

    def trial_finished(self, trial_id: str, status: str, error: str | None = None) -> None:
        self._record({"event": "finished", "trial_id": trial_id, "status": status, "error": error})

    def trial_recovered(self, trial_id: str, message: str) -> None:
        self._record({"event": "recovered", "trial_id": trial_id, "message": message})

    def recoveries(self) -> list[tuple[str, str]]:
        """The trials restarted after a failure: (trial id, message), in order."""
        with self._lock:
            return list(self._recoveries)

    def trials(self) -> dict[str, dict[str, Any]]:
        """Everything recorded: {trial_id: {"config", "status", "error", "history"}}, the
        history (``EpochRecord``s) sorted by epoch."""
        with self._lock:
            return {
                trial_id: {
                    **trial,
                    "history": [trial["history"][e] for e in sorted(trial["history"])],
                }
                for trial_id, trial in self._trials.items()
            }


class JsonlRecorder(MemoryRecorder):
    """Appends one JSON line per new event to a file and reloads it on open, so a restarted
    driver continues the same file without repeating an epoch."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self._apply(json.loads(line))

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock:
            if self._apply(event):
                with self.path.open("a") as fh:
                    fh.write(json.dumps(event) + "\n")


class TeeRecorder:
    """Sends every event to several recorders, in order."""

    def __init__(self, *recorders: Recorder) -> None:
        self.recorders = recorders

    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None:
        for recorder in self.recorders:
            recorder.trial_started(trial_id, config)

    def trial_result(self, trial_id: str, record: EpochRecord) -> None:
        for recorder in self.recorders:
            recorder.trial_result(trial_id, record)

    def trial_finished(self, trial_id: str, status: str, error: str | None = None) -> None:
        for recorder in self.recorders:
            recorder.trial_finished(trial_id, status, error)

    def trial_recovered(self, trial_id: str, message: str) -> None:
        for recorder in self.recorders:
            recorder.trial_recovered(trial_id, message)
