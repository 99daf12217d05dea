"""The search driver: run trials on Ray Tune, stream results to a recorder, collect outcomes.

``run_trials`` runs one Tune experiment over a grid of (seed, batch size, learning rate) for one
model variant; the SN search and the verification runs both use it. It joins the Ray cluster at
``ray_address`` (production) or starts a local Ray, gives each trial its CPUs/GPUs, retries crashed
trials from their last checkpoint, and restores an interrupted experiment from ``storage_dir``
(e.g. after the process running the driver was killed): a local directory or an
``service.storage.ExperimentStorage`` (a shared path or an s3:// bucket every node reaches). A
driver-side callback is the only writer of results, through a ``Recorder``. A ``stop_event`` (set
when the job is cancelled) stops every trial through ``worker.cancellation.CancellationStopper``.

The outcomes' histories come from the driver's own memory of the results it was sent, never from
what the recorder wrote (the service's recorder is the database): a restored experiment first
reloads the earlier drivers' results from Ray's per-trial result logs (``result.json``, kept in
the experiment directory with the experiment state), so its outcomes are complete too. What the
driver reads back from an experiment (those logs, a checkpoint's plan) goes through the storage's
``pyarrow.fs`` filesystem, so it reads an s3:// experiment as it reads a local one.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.air.constants import EXPR_RESULT_FILE

from service.cluster import (
    CAPACITY_REFRESH_S,
    ClusterCapacity,
    NodeShape,
    effective_gpus,
    fit_problem,
    publish_capacity,
)
from service.spec import JobSpec, ResourcesSpec
from service.storage import ExperimentStorage, local_storage, read_bytes

from . import cancellation
from .data import LoadedDataset
from .recorder import MemoryRecorder, Recorder, TeeRecorder
from .results import TrialOutcome, epoch_record
from .trainable import PLAN_FILE, train_trial, trial_effective_lr

log = logging.getLogger(__name__)

MAX_TRIAL_FAILURES = 3
# Live recorders by experiment path: the Tune callback is pickled into the experiment state, so it
# carries only that key, and a restored experiment finds the recorder its new driver registered.
_RECORDERS: dict[str, Recorder] = {}


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` or start a local Ray (no dashboard)."""
    import ray

    # Checkpointing every epoch is deliberate (crash recovery); Tune's warning about frequent
    # experiment snapshots would otherwise repeat on every short epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's console reporter ignores verbose=0 in its new output engine; progress is the
    # recorder's job, so use the legacy reporter, which honours it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        # "local": start a Ray of our own. With no address, ray.init would join any Ray it
        # detects on this machine (another service's, or the leftovers of a killed worker's).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)


def cluster_capacity() -> ClusterCapacity:
    """The shapes (CPUs, GPUs) of the joined Ray cluster's alive nodes: a trial is placed on
    one node, so these, not ``ray.cluster_resources()``'s sums, say what a trial can get."""
    import ray

    return ClusterCapacity.of(
        NodeShape(
            float(node.get("Resources", {}).get("CPU", 0.0)),
            float(node.get("Resources", {}).get("GPU", 0.0)),
        )
        for node in ray.nodes()
        if node.get("Alive")
    )


# How long a trial that fits no node waits for one to join before the job fails: a node that is
# restarting, or one that starts after the worker (docker compose starts them side by side).
FIT_GRACE_S = 10.0


def check_trials_fit(
    resources: ResourcesSpec,
    *,
    grace_s: float = FIT_GRACE_S,
    stop_event: threading.Event | None = None,
) -> ClusterCapacity:
    """Raise ``service.cluster.ClusterFitError`` (naming the resource) when a trial asking for
    ``resources`` fits on no alive node of the joined cluster, after re-reading the nodes every
    second for ``grace_s``; the capacity it fits (or the last read, if ``stop_event`` is set)."""
    deadline = time.monotonic() + grace_s
    while True:
        capacity = cluster_capacity()
        problem = fit_problem(resources, capacity)
        if problem is None:
            return capacity
        if time.monotonic() >= deadline:
            raise problem
        if stop_event is not None and stop_event.wait(1.0):
            return capacity
        if stop_event is None:
            time.sleep(1.0)


class CapacityPublisher:
    """Publishes the joined cluster's capacity to the runs directory
    (``service.cluster.publish_capacity``, what the API's fit check reads) now and every
    ``interval_s`` after, from a daemon thread, for as long as the process stays connected to
    Ray (a worker keeps its Ray between jobs). One per process: ``start`` is idempotent."""

    _current: CapacityPublisher | None = None
    _lock = threading.Lock()

    def __init__(self, runs_dir: Path, interval_s: float = CAPACITY_REFRESH_S) -> None:
        self.runs_dir = Path(runs_dir)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="normsearch-capacity", daemon=True)

    @classmethod
    def start(cls, runs_dir: Path, capacity: ClusterCapacity | None = None) -> CapacityPublisher:
        with cls._lock:
            current = cls._current
            if current is None or current.runs_dir != Path(runs_dir):
                if current is not None:
                    current._stop.set()
                current = cls._current = cls(runs_dir)
                current.publish(capacity)
                current._thread.start()
            return current

    def publish(self, capacity: ClusterCapacity | None = None) -> None:
        import ray

        try:
            if capacity is None:
                if not ray.is_initialized():
                    return
                capacity = cluster_capacity()
            publish_capacity(self.runs_dir, capacity)
        except Exception as error:  # noqa: BLE001 - a missed refresh only ages the file
            log.warning("could not publish the Ray cluster's capacity: %s", error)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.publish()


class RecorderCallback(tune.Callback):
    """Streams every trial event to the recorder registered under ``key`` (driver side).

    Defined at module level so that the experiment state pickles it by reference, with only
    its key.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    @property
    def recorder(self) -> Recorder:
        return _RECORDERS[self.key]

    def on_trial_start(self, iteration, trials, trial, **info):
        config = {k: v for k, v in trial.config.items() if k not in ("spec", "plan")}
        self.recorder.trial_started(trial.trial_id, config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.recorder.trial_result(trial.trial_id, epoch_record(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        diverged = (trial.last_result or {}).get("diverged")
        if diverged:  # it stopped itself: a failure with its reason, not a finished trial
            self.recorder.trial_finished(trial.trial_id, "ERROR", diverged)
        else:
            self.recorder.trial_finished(trial.trial_id, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.recorder.trial_finished(trial.trial_id, "ERROR", trial_error_text(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.recorder.trial_recovered(trial.trial_id, recovery_message(trial))


def node_alive(node_id: str) -> bool:
    """Whether the joined Ray cluster still counts ``node_id`` among its alive nodes."""
    import ray

    return any(n.get("NodeID") == node_id and n.get("Alive") for n in ray.nodes())


def recovery_message(trial) -> str:
    """What users read when Tune restarts a failed trial: the node it lost (its last reported
    ``node_id``, when Ray no longer counts that node alive), the error, and the epoch of the
    checkpoint it resumes from (every reported epoch carries one: its last result's)."""
    last = trial.last_result or {}
    node, epoch = last.get("node_id"), last.get("epoch")
    what = f"lost its node {node}" if node and not node_alive(node) else "failed"
    where = f"restarted from its epoch-{epoch} checkpoint" if epoch else "restarted from the start"
    failures = getattr(trial.run_metadata, "num_failures", 0)
    return (
        f"trial {trial.trial_id} {what} ({trial_error_text(trial)}); {where} "
        f"(retry {failures} of at most {MAX_TRIAL_FAILURES})"
    )


MAX_ERROR_CHARS = 2000


def exception_text(error: BaseException) -> str:
    """``Type: message`` of a trial's exception, unwrapped from Ray's ``RayTaskError`` (whose
    own text is the whole remote traceback): what users read as the trial's error."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    return f"{type(error).__name__}: {error}".strip()[:MAX_ERROR_CHARS]


def trial_error_text(trial) -> str:
    """A failed trial's exception as text, read from what Ray stored for it (the pickled
    exception, else the last line of its traceback file), never the file's path, which names
    a file on the Ray host that API users cannot read."""
    try:
        error = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - an unpicklable or missing error: try the text trace
        error = None
    if error is not None:
        return exception_text(error)
    try:
        traceback = trial.get_error()
    except Exception:  # noqa: BLE001
        traceback = None
    lines = [line for line in str(traceback or "").splitlines() if line.strip()]
    return lines[-1].strip()[:MAX_ERROR_CHARS] if lines else "the trial failed (Ray kept no error)"


def gpus_per_trial(spec: JobSpec, capacity: ClusterCapacity | None = None) -> float:
    """The spec's GPUs per trial (a fraction packs trials onto one GPU: 0.25 is four at once),
    or by default one GPU per trial when a node of the cluster has any. ``capacity``: the
    cluster's node shapes already read (a job reads them once, ``worker.job.run_job``); None
    reads them now."""
    if spec.resources.gpus_per_trial is not None:
        return spec.resources.gpus_per_trial
    return effective_gpus(spec.resources, cluster_capacity() if capacity is None else capacity)


@dataclass
class TrialsRun:
    experiment_path: str
    outcomes: list[TrialOutcome]


def grid_point(
    spec: JobSpec, *, seed: int, batch_size: int, lr: float, **extra: Any
) -> dict[str, Any]:
    """One trial of a grid: its identity (seed, batch size, base ``lr``) plus the
    ``effective_lr`` it trains with (``JobSpec.effective_lr``: the spec's ``lr_scaling``)."""
    return {
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "effective_lr": spec.effective_lr(batch_size, lr),
        **extra,
    }


# The grid is built in steps of this many points, the stop event checked between them.
GRID_CHECK_EVERY = 256


def trial_grid(spec: JobSpec, *, stop_event: threading.Event | None = None) -> list[dict[str, Any]]:
    """The search's trials: seeds x batch sizes x learning rates. ``service.limits`` bounds
    their number; ``stop_event`` is still checked while they are built (``JobCancelled``)."""
    grid = []
    for index, (seed, batch, lr) in enumerate(
        itertools.product(spec.search.trials.seeds, spec.batch_sizes, spec.lrs)
    ):
        if index % GRID_CHECK_EVERY == 0:
            cancellation.raise_if_stopped(stop_event)
        grid.append(grid_point(spec, seed=seed, batch_size=batch, lr=lr))
    return grid


def run_trials(
    spec: JobSpec,
    data: LoadedDataset,
    *,
    name: str,
    storage_dir: Path | ExperimentStorage,
    recorder: Recorder,
    grid: list[dict[str, Any]],
    variant: str = "sn",
    epochs: int | None = None,
    plan: dict[str, Any] | None = None,
    use_scheduler: bool = True,
    stop_event: threading.Event | None = None,
    gpus: float | None = None,
) -> TrialsRun:
    """Run (or resume) the experiment ``name`` under ``storage_dir`` and collect its outcomes.
    A ``stop_event`` set before the experiment starts raises ``JobCancelled`` (checked while it
    is built, so no trial starts); once it is running, Tune stops every trial (the stopper's
    ``stop_all``, on every step of its control loop, also between trials, so no new trial
    starts) and the run returns what it has (the caller checks the event:
    ``worker.cancellation.raise_if_stopped``). ``gpus``: each trial's GPUs as the job resolved
    them once (``gpus_per_trial``); None resolves them from the cluster now."""
    epochs = spec.training.epochs if epochs is None else epochs
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    cancellation.raise_if_stopped(stop_event)
    storage = as_storage(storage_dir)
    experiment_path = storage.join(name)
    key = storage.uri(experiment_path)  # stable: a restored experiment's callback finds it
    history = MemoryRecorder()  # what this driver hands back (the recorder only receives)
    _RECORDERS[key] = TeeRecorder(history, recorder)
    cancellation.register(key, stop_event)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data),
        {
            "cpu": spec.resources.cpus_per_trial,
            "gpu": gpus_per_trial(spec) if gpus is None else gpus,
        },
    )
    try:
        if tune.Tuner.can_restore(experiment_path, storage_filesystem=storage.ray_filesystem):
            log.info("resuming experiment %s", key)
            reload_results(experiment_path, history, storage)
            tuner = tune.Tuner.restore(
                experiment_path,
                trainable=trainable,
                resume_errored=True,
                storage_filesystem=storage.ray_filesystem,
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "spec": spec.model_dump(mode="json"),
                    "variant": variant,
                    "plan": plan,
                    "epochs": epochs,
                    "trial": tune.grid_search(grid),
                },
                tune_config=_tune_config(spec, epochs, use_scheduler),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=storage.root,
                    storage_filesystem=storage.ray_filesystem,
                    callbacks=[RecorderCallback(key)],
                    stop=cancellation.combined_stopper(key),
                    failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=0,
                ),
            )
        cancellation.raise_if_stopped(stop_event)  # the experiment is built, nothing started
        results = tuner.fit()
    finally:
        _RECORDERS.pop(key, None)
        cancellation.register(key, None)
    return TrialsRun(key, _collect(results, history, storage))


def as_storage(storage_dir: Path | ExperimentStorage) -> ExperimentStorage:
    """A local directory as storage; storage as it is."""
    if isinstance(storage_dir, ExperimentStorage):
        return storage_dir
    return local_storage(storage_dir)


def _tune_config(spec: JobSpec, epochs: int, use_scheduler: bool):
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if use_scheduler and spec.search.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=epochs, grace_period=max(1, epochs // 4), reduction_factor=2
        )
    # ASHA ranks by validation accuracy, a language model's next-token accuracy included: it is
    # finite in every record, where a diverged model has no perplexity (None).
    return tune.TuneConfig(metric="val_accuracy", mode="max", scheduler=scheduler)


def reload_results(
    experiment_path: Path | str,
    history: MemoryRecorder,
    storage: ExperimentStorage | None = None,
) -> int:
    """Put the epoch records of an earlier run of the experiment into ``history`` (from each
    trial's ``result.json``, which Ray keeps beside the experiment state it restores from, at
    least up to that state's checkpoints); returns how many. A trial that the restored experiment
    resumes from an older checkpoint reports some epochs again: ``history`` keeps the first.
    ``storage``: the filesystem ``experiment_path`` is on (default: the local one)."""
    if storage is None:
        storage = local_storage(experiment_path)
        experiment_path = storage.root
    count = 0
    for trial_dir in storage.subdirectories(str(experiment_path)):
        text = storage.read_bytes(f"{trial_dir}/{EXPR_RESULT_FILE}")
        for line in (text or b"").decode().splitlines():
            result = json.loads(line) if line.strip() else None
            if result and "trial_id" in result and "epoch" in result:
                history.trial_result(str(result["trial_id"]), epoch_record(result))
                count += 1
    return count


def _collect(results, history: MemoryRecorder, storage: ExperimentStorage) -> list[TrialOutcome]:
    recorded = history.trials()
    outcomes = []
    for result in results:
        config = result.config or {}
        trial = config.get("trial", {})
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        history = recorded.get(trial_id, {}).get("history", [])
        checkpoint, checkpoint_dir, plan = result.checkpoint, None, None
        if checkpoint is not None:
            checkpoint_dir = storage.uri(checkpoint.path)
            # The checkpoint's own filesystem: what Ray wrote it through (local or s3://).
            plan_text = read_bytes(checkpoint.filesystem, f"{checkpoint.path}/{PLAN_FILE}")
            plan = json.loads(plan_text) if plan_text is not None else None
        last = history[-1] if history else {}
        batch_size = int(trial.get("batch_size", spec_default(config, "batch_size")))
        lr = float(trial.get("lr", spec_default(config, "lr")))
        if "effective_lr" in trial or not config.get("spec"):
            effective_lr = float(trial.get("effective_lr", lr))
        else:  # a grid built without it: the rule the trainable applied
            spec = JobSpec.model_validate(config["spec"])
            effective_lr = trial_effective_lr(spec, {"batch_size": batch_size, "lr": lr})
        diverged = last.get("diverged")
        error = diverged
        if result.error is not None:
            error = exception_text(result.error)
        outcomes.append(
            TrialOutcome(
                trial_id=trial_id,
                seed=int(trial.get("seed", 0)),
                batch_size=batch_size,
                lr=lr,
                effective_lr=effective_lr,
                status="ERROR" if error is not None else "TERMINATED",
                epochs_used=int(last.get("epoch", 0)),
                epochs_budget=int(config.get("epochs", 0)),
                val_accuracy=last.get("val_accuracy"),
                val_perplexity=last.get("val_perplexity"),
                history=history,
                variant=str(trial.get("variant", config.get("variant", "sn"))),
                plan=plan,
                checkpoint_dir=checkpoint_dir,
                checkpoint=checkpoint,
                error=error,
                diverged=diverged,
            )
        )
    return sorted(outcomes, key=lambda o: (o.batch_size, o.lr, o.seed))


def spec_default(config: dict[str, Any], key: str):
    return (config.get("spec") or {}).get("training", {}).get(key, 0)
