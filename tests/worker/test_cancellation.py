"""The stop flag before any trial runs: a set event stops the grid being built, the experiment
being built (``run_trials``) and the job before Ray starts (``run_job``), with ``JobCancelled``
and nothing recorded. (During ``fit`` Tune's ``stop_all`` does it: tests/worker/
test_worker_recovery.py cancels real runs mid-training and as soon as they start.)"""

from __future__ import annotations

import threading

import pytest
import ray

from service.spec import JobSpec
from worker import search
from worker.cancellation import CancellationStopper, JobCancelled, register
from worker.data import load_dataset
from worker.job import run_job
from worker.recorder import MemoryRecorder
from worker.search import run_trials, trial_grid


def spec(seeds: int = 1, lrs: int = 1) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"arch": "resnet20"},
            "dataset": {"kind": "digits"},
            "training": {"epochs": 1, "batch_size": 64, "lr": 0.1},
            "search": {
                "trials": {"seeds": list(range(seeds)), "lrs": [0.1 * (i + 1) for i in range(lrs)]}
            },
        }
    )


def stopped() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def test_the_grid_build_checks_the_stop_event(monkeypatch):
    big = spec(seeds=8, lrs=8)
    assert len(trial_grid(big, stop_event=threading.Event())) == 64
    with pytest.raises(JobCancelled):
        trial_grid(big, stop_event=stopped())
    # Set midway: the build stops at its next check, without building the rest.
    monkeypatch.setattr(search, "GRID_CHECK_EVERY", 4)
    event, built = threading.Event(), []
    real_point = search.grid_point

    def point(*args, **kwargs):
        built.append(1)
        if len(built) == 10:
            event.set()
        return real_point(*args, **kwargs)

    monkeypatch.setattr(search, "grid_point", point)
    with pytest.raises(JobCancelled):
        trial_grid(big, stop_event=event)
    assert len(built) == 12  # up to the next multiple of 4, not 64


def test_a_stopped_experiment_is_not_built_and_records_nothing(tmp_path):
    job = spec()
    data = load_dataset(job.dataset, data_roots=[tmp_path])
    recorder = MemoryRecorder()
    with pytest.raises(JobCancelled):
        run_trials(
            job,
            data,
            name="search",
            storage_dir=tmp_path,
            recorder=recorder,
            grid=trial_grid(job),
            stop_event=stopped(),
        )
    assert recorder.trials() == {} and not (tmp_path / "search").exists()
    assert search._RECORDERS == {}  # nothing left registered


def test_a_job_stopped_before_its_search_never_starts_ray(tmp_path):
    assert not ray.is_initialized()
    with pytest.raises(JobCancelled):
        run_job(
            spec(),
            data_roots=[tmp_path],
            work_dir=tmp_path / "state",
            recorder=MemoryRecorder(),
            stop_event=stopped(),
        )
    assert not ray.is_initialized()
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["spec.json"]


def test_the_stopper_stops_everything_once_its_event_is_set():
    event = threading.Event()
    register("k", event)
    try:
        stopper = CancellationStopper("k")
        assert not stopper.stop_all() and not stopper("t", {})
        event.set()
        assert stopper.stop_all() and stopper("t", {})
    finally:
        register("k", None)
    assert not CancellationStopper("k").stop_all()  # a forgotten experiment: nothing to stop
