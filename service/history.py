"""Reading a job's per-layer ratio and metric histories for live views.

A view reads incrementally (``after``: the last step it has) and asks for at most ``max_points``
snapshots per trial; when more steps are available the server keeps an evenly spaced subset of
steps, always including the first and the newest, so the picture keeps its shape at any length
(200 layers x 500 epochs is 100,000 snapshots per trial; a chart needs a few thousand).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from service import repositories
from service.db.models import Metric, RatioSnapshot, Trial
from service.errors import NotFound
from service.ratio_columns import RATIO_COLUMNS, ratio_values


@dataclass
class TrialHistory:
    trial: Trial
    steps_total: int
    downsampled: bool
    last_step: int | None
    snapshots: list[RatioSnapshot] = field(default_factory=list)


def pick_steps(steps: Sequence[int], keep: int) -> list[int]:
    """At most ``keep`` (>= 1) of ``steps`` (ascending), evenly spaced, first and last kept."""
    if len(steps) <= keep:
        return list(steps)
    if keep == 1:
        return [steps[-1]]
    last = len(steps) - 1
    indices = sorted({round(i * last / (keep - 1)) for i in range(keep)})
    return [steps[i] for i in indices]


def select_trials(session: Session, *, job_id: str, trial_id: int | None) -> list[Trial]:
    """The job's trials to read (of its current run): one (by id; 404 if not the job's) or
    every trial."""
    job = repositories.get_job(session, job_id)
    trials = repositories.list_trials(session, job_id=job_id, run=None if job is None else job.run)
    if trial_id is None:
        return trials
    chosen = [t for t in trials if t.id == trial_id]
    if not chosen:
        raise NotFound(f"job {job_id} has no trial {trial_id}")
    return chosen


def ratio_history(
    session: Session,
    *,
    trials: Sequence[Trial],
    after_step: int | None = None,
    layers: Sequence[str] | None = None,
    max_points: int = 5000,
) -> list[TrialHistory]:
    """Each trial's snapshots after ``after_step``, downsampled to about ``max_points`` per
    trial (whole steps are kept or dropped, never single layers of a step)."""
    histories = []
    for trial in trials:
        counted = repositories.snapshot_steps(
            session, trial_id=trial.id, after_step=after_step, layers=layers
        )
        if not counted:
            histories.append(TrialHistory(trial, 0, False, after_step))
            continue
        steps = [step for step, _count in counted]
        per_step = max(count for _step, count in counted)
        keep = max(1, max_points // per_step)
        chosen = pick_steps(steps, keep)
        snapshots = repositories.snapshots_at_steps(
            session, trial_id=trial.id, steps=chosen, layers=layers
        )
        histories.append(
            TrialHistory(trial, len(steps), len(chosen) < len(steps), steps[-1], snapshots)
        )
    return histories


def metric_history(
    session: Session,
    *,
    trials: Sequence[Trial],
    after_step: int | None = None,
    names: Sequence[str] | None = None,
) -> list[Metric]:
    if not trials:
        return []
    return repositories.metric_history(
        session, trial_id=[t.id for t in trials], after_step=after_step, names=names
    )


CSV_COLUMNS = (
    "ray_trial_id", "variant", "step", "epoch", "layer_index", "layer",
    *RATIO_COLUMNS,
    "mean_fixed", "var_fixed",
)  # fmt: skip


def ratio_csv_lines(session: Session, *, job_id: str, chunk_rows: int = 5000):
    """The job's whole ratio history as CSV text, one chunk of rows at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    snapshots = repositories.iter_job_snapshots(session, job_id=job_id, chunk_rows=chunk_rows)
    for rows, (ray_trial_id, variant, snap) in enumerate(snapshots, start=1):
        writer.writerow(
            [ray_trial_id, variant, snap.step, snap.epoch, snap.layer_index, snap.layer]
            + ["" if v is None else f"{v:.6g}" for v in ratio_values(snap)]
            + [int(snap.mean_fixed), int(snap.var_fixed)]
        )
        if rows % chunk_rows == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
