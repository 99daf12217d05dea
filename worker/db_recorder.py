"""A recorder that writes a search's results to the service database, in batches.

Same interface as ``worker.recorder.MemoryRecorder`` (the driver-side Tune callback is its only
caller; trials never touch the database). Mapping of one epoch record
(``worker.results.EpochRecord``):

- ``ratios`` -> one ``RatioSnapshot`` per layer: ``layer_index`` is the layer's position in the
  ratios dict (network order), ``step`` is the epoch (one snapshot per evaluation, and a trial
  evaluates once per epoch), ``mean_in`` .. ``var_gn`` from the ``mean``/``var`` dicts (None for
  normalizers outside the pool), ``mean_fixed``/``var_fixed`` from ``fixed``. Ratios are stored
  as 4-byte floats (``REAL``), so on Postgres they read back at float32 precision.
- every other scalar key (train_loss, val_loss, val_accuracy, fraction_fixed, train_seconds, and
  also progress, stable_evals, all_fixed, done, epochs_budget) -> one ``Metric`` row, so that
  ``trials()`` can rebuild the record as reported. Booleans and integers are stored as floats and
  read back with the type ``EpochRecord`` gives them; ``None`` values are not stored.
- ``node_id`` (the Ray node the epoch trained on, a string) -> ``trials.node_id``, from the
  trial's latest epoch;
- a trial restarted after a failure (``trial_recovered``, e.g. its node was lost) -> one
  ``JobEvent`` with the message (``service.jobs.note_event``: from = to = the job's status);
  so is a record's ``compile_fallback`` (``training.compile`` could not compile the model and the
  trial trains eagerly), prefixed with the trial id;
- the trial's ``epochs_used`` (the highest epoch seen) and ``best_metrics``
  (``{"val_accuracy", "epoch"}`` of the best epoch); a failed trial's error text goes to
  ``trials.error`` (cleared when the trial finishes without one).
- with ``total_epochs`` (the job's epoch budget, ``worker.job.epoch_budget``), the job's
  ``progress``: the epochs its trials have completed over that budget, raised on every flush
  (``service.jobs.set_progress``: monotone, below 1.0 until the job succeeds).

Writes are buffered and flushed when the buffer holds ``batch_size`` rows, when
``flush_interval_s`` has passed since the last flush (checked on each event: there is no timer
thread), and in ``trial_finished``, ``trials()`` and ``close()``. Each flush is one transaction of
multi-row inserts that ignore rows already present, so a result replayed after a restart adds
nothing.

With ``run`` (the job run it records, and optionally ``attempt``), every write transaction first
reads the job's run, attempts and status (``FOR KEY SHARE`` on Postgres, so a concurrent retry
or cancel waits or is waited for, heartbeats do not) and writes only while the job is
``running`` or ``cancelling`` in that run (and attempt): a stale run's writes (the job was
cancelled, retried, requeued, deleted) are dropped, with one warning line for the whole
recorder, never by a foreign-key error; a write that still meets one (a race on SQLite) is
re-checked and dropped the same way. ``refused_writes`` counts the events dropped. A failed
flush keeps its rows buffered and raises; the next flush retries them. The service flushes
every result (``flush_interval_s=0``): a driver killed after Tune checkpointed an epoch then
cannot have left that epoch out of the database (a resumed trial continues after it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, get_type_hints

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import jobs, repositories
from service.jobs import ACTIVE_RUN_STATUSES
from service.ratio_columns import layer_ratios, ratio_columns

from .results import EpochRecord, LayerRatios

_TYPES = get_type_hints(EpochRecord)
_BOOL_KEYS = frozenset(key for key, kind in _TYPES.items() if kind is bool)
_INT_KEYS = frozenset(key for key, kind in _TYPES.items() if kind is int)

log = logging.getLogger(__name__)


class StaleRun(Exception):  # noqa: N818 (an outcome the recorder handles, not an error)
    """The job has left the recorder's run (or attempt): its writes are refused."""


class DatabaseRecorder:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        job_id: str,
        batch_size: int = 2000,
        flush_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        total_epochs: int | None = None,
        run: int | None = None,
        attempt: int | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.total_epochs = total_epochs
        self.run = run
        self.attempt = attempt
        self.stale: str | None = None  # why the writes are refused, once they are
        self.refused_writes = 0  # events dropped because the run is stale
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self._lock = threading.RLock()
        self._trial_ids: dict[str, int] = {}  # ray trial id -> trials.id
        self._summary: dict[int, dict[str, Any]] = {}  # trials.id -> epochs_used, best_metrics
        self._dirty: set[int] = set()  # trials whose summary changed since the last flush
        self._snapshots: list[dict[str, Any]] = []
        self._metrics: list[dict[str, Any]] = []
        self._last_flush = clock()
        self.rows_written = 0  # new snapshot + metric rows (duplicates not counted)

    # Recorder interface

    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None:
        trial = config.get("trial") or {}
        with self._lock:
            if self._refused():
                return
            self._upsert(
                trial_id,
                variant=str(trial.get("variant", config.get("variant", "sn"))),
                config=config,
                status="RUNNING",
                epochs_budget=int(config.get("epochs", 0)),
            )

    def trial_result(self, trial_id: str, record: EpochRecord) -> None:
        with self._lock:
            if self._refused():
                return
            db_id = self._trial_ids.get(trial_id)
            if db_id is None:  # a result with no start seen (e.g. replayed after a restore)
                db_id = self._existing_or_pending(trial_id, record)
            if db_id is None:  # the job has moved on to another run
                return
            epoch = int(record["epoch"])
            self._snapshots.extend(snapshot_rows(db_id, epoch, record.get("ratios") or {}))
            self._metrics.extend(metric_rows(db_id, epoch, record))
            summary = self._summary[db_id]
            summary["epochs_used"] = max(summary["epochs_used"], epoch)
            if record.get("node_id") and epoch >= summary["epochs_used"]:
                summary["node_id"] = str(record["node_id"])
            accuracy = record.get("val_accuracy")
            best = summary["best_metrics"]
            if accuracy is not None and (
                best.get("val_accuracy") is None or accuracy > best["val_accuracy"]
            ):
                best.update(val_accuracy=float(accuracy), epoch=epoch)
            ppl = record.get("val_perplexity")
            if ppl is not None and (
                best.get("val_perplexity") is None or ppl < best["val_perplexity"]
            ):
                best["val_perplexity"] = float(ppl)
            self._dirty.add(db_id)
            if (
                len(self._snapshots) + len(self._metrics) >= self.batch_size
                or self._clock() - self._last_flush >= self.flush_interval_s
            ):
                self.flush()
        if record.get("compile_fallback"):
            self._note(f"trial {trial_id}: {record['compile_fallback']}")

    def trial_finished(self, trial_id: str, status: str, error: str | None = None) -> None:
        with self._lock:
            self.flush()
            if self._refused():
                return
            db_id = self._trial_ids.get(trial_id)
            if db_id is None:
                db_id = self._existing_or_pending(trial_id, {})
            if db_id is None:
                return
            best = dict(self._summary[db_id]["best_metrics"])

            def write(session: Session) -> None:
                repositories.update_trial(
                    session, db_id, status=status, best_metrics=best, error=error
                )

            self._write(write)

    def trial_recovered(self, trial_id: str, message: str) -> None:
        """The restart as one of the job's events (``service.jobs.note_event``), after the
        buffered rows: the timeline says which node was lost and from which epoch it resumed."""
        self._note(message)

    def _note(self, message: str) -> None:
        """``message`` as one of the job's events, after the buffered rows."""
        with self._lock:
            self.flush()
            if self._refused():
                return

            def write(session: Session) -> None:
                jobs.note_event(session, job_id=self.job_id, message=message)

            self._write(write)

    def trials(self) -> dict[str, dict[str, Any]]:
        """Everything recorded for the job, read back from the database, in the shape of
        ``MemoryRecorder.trials()`` (histories sorted by epoch). The driver never reads it (it
        keeps its own history); it shows what the database holds."""
        with self._lock:
            self.flush()
            with self.session_factory() as session:
                return {
                    trial.ray_trial_id: {
                        "config": trial.config,
                        "status": trial.status,
                        "error": trial.error,
                        "history": _history(session, trial.id),
                    }
                    for trial in repositories.list_trials(session, job_id=self.job_id)
                }

    # Buffering

    def flush(self) -> int:
        """Write the buffered rows and trial summaries in one transaction; returns the number of
        new rows (0, the rows dropped, when the run is stale)."""
        with self._lock:
            self._last_flush = self._clock()
            if not (self._snapshots or self._metrics or self._dirty):
                return 0
            snapshots, metrics, dirty = self._snapshots, self._metrics, self._dirty
            if self._refused():
                self._snapshots, self._metrics, self._dirty = [], [], set()
                return 0

            def write(session: Session) -> int:
                written = repositories.insert_snapshots(session, snapshots)
                written += repositories.insert_metrics(session, metrics)
                for db_id in sorted(dirty):
                    summary = self._summary[db_id]
                    repositories.update_trial(
                        session,
                        db_id,
                        epochs_used=summary["epochs_used"],
                        best_metrics=dict(summary["best_metrics"]),
                        node_id=summary.get("node_id"),
                    )
                if self.total_epochs:
                    self._record_progress(session)
                return written

            written = self._write(write)
            self._snapshots, self._metrics, self._dirty = [], [], set()
            if written is None:  # refused: the rows are dropped
                return 0
            self.rows_written += written
            return written

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> DatabaseRecorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Internals (called with the lock held)

    def _refused(self) -> bool:
        """True (one more event counted as refused) once the run is known to be stale."""
        if self.stale is None:
            return False
        self.refused_writes += 1
        return True

    def _check_current(self, session: Session) -> None:
        """Raise ``StaleRun`` unless the job is running or cancelling in this recorder's run
        (and attempt); nothing to check without a ``run``."""
        if self.run is None:
            return
        row = repositories.job_run_state(session, job_id=self.job_id)
        if row is None:
            raise StaleRun("the job was deleted")
        run, status, attempts = row
        if run != self.run:
            raise StaleRun(f"the job is at run {run} now ({status})")
        if status not in ACTIVE_RUN_STATUSES:
            raise StaleRun(f"run {run} is {status}")
        if self.attempt is not None and attempts != self.attempt:
            raise StaleRun(f"attempt {attempts} of run {run} has taken over")

    def _mark_stale(self, reason: str) -> None:
        self.refused_writes += 1
        if self.stale is None:
            self.stale = reason
            log.warning(
                "job %s: the recorder of run %s refuses its writes from now on: %s",
                self.job_id,
                self.run,
                reason,
            )

    def _write(self, write: Callable[[Session], Any]) -> Any:
        """``write(session)`` in one transaction after ``_check_current``; None (nothing
        written, the run marked stale) when the run is stale, also when the write met a
        foreign key or unique violation because the job left the run meanwhile."""
        try:
            with self.session_factory() as session, session.begin():
                self._check_current(session)
                return write(session)
        except StaleRun as stale:
            self._mark_stale(str(stale))
            return None
        except IntegrityError:
            if self.run is None:
                raise
            try:  # a retry or a deletion between the check and the write (SQLite)
                with self.session_factory() as session:
                    self._check_current(session)
            except StaleRun as stale:
                self._mark_stale(str(stale))
                return None
            raise

    def _record_progress(self, session: Session) -> None:
        """The job's progress: epochs its trials completed over its epoch budget."""
        done = sum(
            t.epochs_used or 0 for t in repositories.list_trials(session, job_id=self.job_id)
        )
        jobs.set_progress(session, job_id=self.job_id, progress=done / self.total_epochs)

    def _upsert(
        self,
        trial_id: str,
        *,
        variant: str,
        config: dict[str, Any],
        status: str,
        epochs_budget: int,
    ) -> int | None:
        """The trial's row id after inserting or updating it; None (nothing written) when the
        recorder's run is stale (``_check_current``)."""

        def write(session: Session) -> int:
            trial = repositories.upsert_trial(
                session,
                job_id=self.job_id,
                ray_trial_id=trial_id,
                variant=variant,
                config=config,
                status=status,
                epochs_budget=epochs_budget,
                run=self.run or 1,
            )
            self._remember(trial.id, trial.epochs_used, trial.best_metrics)
            return trial.id

        db_id = self._write(write)
        if db_id is None:
            return None
        self._trial_ids[trial_id] = db_id
        return db_id

    def _remember(self, db_id: int, epochs_used: int | None, best: dict[str, Any] | None) -> None:
        if db_id not in self._summary:  # buffered progress of this process wins
            self._summary[db_id] = {
                "epochs_used": epochs_used or 0,
                "best_metrics": dict(best or {}),
            }

    def _existing_or_pending(self, trial_id: str, record: EpochRecord | dict) -> int | None:
        """The trial recorded by an earlier driver, or a new PENDING one with no config (as
        ``MemoryRecorder`` does for an event of a trial it has not seen start)."""
        with self.session_factory() as session:
            trial = repositories.get_trial(session, job_id=self.job_id, ray_trial_id=trial_id)
            if trial is not None and self.run is not None and trial.run != self.run:
                self._mark_stale(f"trial {trial_id} belongs to run {trial.run}")
                return None
            if trial is not None:
                self._remember(trial.id, trial.epochs_used, trial.best_metrics)
                self._trial_ids[trial_id] = trial.id
                return trial.id
        return self._upsert(
            trial_id,
            variant="sn",
            config={},
            status="PENDING",
            epochs_budget=int(record.get("epochs_budget") or 0),
        )


def snapshot_rows(
    trial_id: int, epoch: int, ratios: dict[str, LayerRatios]
) -> list[dict[str, Any]]:
    """One ``RatioSnapshot`` row (as a dict) per layer of an epoch's ``ratios``."""
    rows = []
    for layer_index, (layer, ratio) in enumerate(ratios.items()):
        fixed = ratio.get("fixed") or {}
        row: dict[str, Any] = {
            "trial_id": trial_id,
            "layer_index": layer_index,
            "layer": layer,
            "epoch": epoch,
            "step": epoch,
            "mean_fixed": bool(fixed.get("mean", False)),
            "var_fixed": bool(fixed.get("var", False)),
        }
        row.update(ratio_columns(ratio))
        rows.append(row)
    return rows


def metric_rows(trial_id: int, epoch: int, record: EpochRecord) -> list[dict[str, Any]]:
    """One ``Metric`` row (as a dict) per scalar key of an epoch record (not ``epoch``)."""
    return [
        {"trial_id": trial_id, "epoch": epoch, "step": epoch, "name": name, "value": float(value)}
        for name, value in record.items()
        if name not in ("epoch", "ratios") and isinstance(value, int | float)
    ]


def _metric_value(name: str, value: float) -> Any:
    if name in _BOOL_KEYS:
        return bool(value)
    if name in _INT_KEYS:
        return int(value)
    return value


def _history(session: Session, trial_id: int) -> list[EpochRecord]:
    """The trial's records as reported (a key whose value was None is absent)."""
    records: dict[int, Any] = {}

    def record(epoch: int) -> dict[str, Any]:
        return records.setdefault(epoch, {"epoch": epoch, "ratios": {}})

    for metric in repositories.metric_history(session, trial_id=trial_id):
        record(metric.epoch)[metric.name] = _metric_value(metric.name, metric.value)
    for snap in repositories.ratio_history(session, trial_id=trial_id):
        record(snap.epoch)["ratios"][snap.layer] = {
            **layer_ratios(snap),
            "fixed": {"mean": snap.mean_fixed, "var": snap.var_fixed},
        }
    return [records[epoch] for epoch in sorted(records)]
