"""One whole normalization search: search -> recommend -> verify -> export.

``run_job`` is what both the standalone CLI (``normsearch run``) and the service's Celery task
call. All state lives under ``work_dir`` (Ray Tune experiments with their checkpoints), so running
the same job again with the same ``work_dir`` resumes it instead of starting over; with a
``storage`` (``NORMSEARCH_STORAGE_URI``: a shared path or an s3:// bucket every Ray node reaches)
the experiments live there instead, under a key ``work_dir`` remembers, and resume from there.
Once the optional ``stop_event`` is set (the job was cancelled), the running trials are stopped
and ``run_job`` raises ``JobCancelled`` instead of going on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sn_core
from service.limits import ModelLimits
from service.metrics import ACCURACY, Metric, metric_for
from service.spec import JobSpec
from service.storage import ExperimentStorage, probe
from sn_core.surgery import SOURCE_NORM_TYPES
from sn_core.vocabulary import DEFAULT_DYT_ALPHA0

from .cancellation import JobCancelled as JobCancelled  # raised by run_job
from .cancellation import raise_if_stopped
from .data import LoadedDataset, load_dataset
from .export import (
    CHECKPOINT_FILE,
    SEARCH_CHECKPOINT_FILE,
    chosen_configuration,
    deliverable_plan,
    export_checkpoint,
    export_search_checkpoint,
)
from .model_size import measure_model, size_problems
from .models import PLAN_VARIANT, SN_VARIANT, build_for_data, zoo_model
from .recommend import Recommendation, layer_outputs, recommend, torch_layers
from .recorder import Recorder
from .report import write_report
from .results import TrialOutcome
from .search import (
    CapacityPublisher,
    check_trials_fit,
    cluster_capacity,
    ensure_ray,
    gpus_per_trial,
    grid_point,
    run_trials,
    trial_grid,
)
from .verdict import ConfigStats, verdict

log = logging.getLogger(__name__)
SPEC_FILE = "spec.json"


class JobStateError(ValueError):
    """The work directory belongs to a different job spec."""


class TrialsFailed(RuntimeError):
    """No trial of the search succeeded where the recommendation needs one; the message leads
    with the first failed trial's exception, the reason users need."""


class ModelSpecError(ValueError):
    """The spec's model cannot be searched on its dataset (it does not build, or it gets no
    SwitchNorm layer); raised before any training."""


@dataclass
class JobResult:
    """A finished job. ``plan`` is what plan.json holds: the configuration the verdict chose
    (``worker.export.deliverable_plan``); ``recommendation.plan`` is the search's own per-layer
    plan. ``checkpoint`` (that configuration, trained) and ``search_checkpoint`` (the best search
    trial, finalized with its own choices) are zip files, None without an ``out_dir``;
    ``outputs`` holds their metadata (also in report.json)."""

    spec: JobSpec
    dataset: dict[str, Any]
    outcomes: list[TrialOutcome]
    recommendation: Recommendation
    verification: dict[str, Any] | None
    plan: sn_core.NormalizerPlan
    checkpoint: Path | None = None
    search_checkpoint: Path | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    verification_outcomes: list[TrialOutcome] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Layer -> the torch layer the search's plan becomes in the job's network (report.json's
    # recommendation.torch_layers); None: told from the plan alone.
    torch_layers: dict[str, str] | None = None


def spec_fingerprint(spec: JobSpec) -> str:
    """What identifies a work directory's training state: the spec but for ``export``, which
    only says how the outputs are written once training is done."""
    return hashlib.sha256(spec.model_dump_json(exclude={"export"}).encode()).hexdigest()


def claim_work_dir(spec: JobSpec, work_dir: Path) -> str:
    """Record which spec owns ``work_dir``; refuse to resume a different one. Returns the
    work directory's storage key: where under a ``storage`` its experiments live (random, made
    once, so a rerun with the same ``work_dir`` finds them and no other work directory does)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    marker = work_dir / SPEC_FILE
    fingerprint = spec_fingerprint(spec)
    if marker.exists():
        owned = json.loads(marker.read_text())
        if owned.get("fingerprint") != fingerprint:
            raise JobStateError(
                f"{work_dir} holds the state of a different search; use another directory"
            )
        if owned.get("storage_key"):
            return str(owned["storage_key"])
    key = f"cli-{uuid.uuid4().hex}"
    marker.write_text(
        json.dumps(
            {"fingerprint": fingerprint, "spec": spec.model_dump(mode="json"), "storage_key": key}
        )
    )
    return key


def check_model_size(spec: JobSpec, data: LoadedDataset, limits: ModelLimits) -> None:
    """Refuse a model over ``limits`` (parameters, activation memory at the largest batch size)
    with ``ModelSpecError`` naming each limit's variable: measured on the meta device, so
    nothing is allocated, before the real model is built."""
    arch = spec.model.arch
    try:
        size = measure_model(
            spec,
            input_shape=tuple(data.x_train.shape[1:]),
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            input_dtype=data.x_train.dtype,
        )
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ModelSpecError(
            f"model {arch!r} cannot be built for dataset {data.name!r} (input shape "
            f"{list(data.x_train.shape[1:])}): {exc}"
        ) from exc
    problems = size_problems(size, limits)
    if problems:
        raise ModelSpecError(
            f"model {arch!r} is too large to train here: {'; '.join(problems)}; make it smaller "
            "(model.kwargs, search.trials.batch_sizes) or have the operator raise the limit"
        )


def check_searchable(
    spec: JobSpec, data: LoadedDataset, model_limits: ModelLimits | None = None
) -> int:
    """Build the SN model as the trials will and return its number of SwitchNorm layers.

    Raises ``ModelSpecError`` (naming the model) when it is over ``model_limits``
    (``check_model_size``, before it is built), when it does not build or run on the dataset's
    inputs, or when surgery gives it no SwitchNorm layer: without one every trial would train
    plain norms and the job fail only after all the training, with no plan to recommend.
    """
    arch = spec.model.arch
    if model_limits is not None:
        check_model_size(spec, data, model_limits)
    try:
        model = build_for_data(spec, SN_VARIANT, data)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelSpecError(
            f"model {arch!r} cannot be built for dataset {data.name!r} (input shape "
            f"{list(data.x_train.shape[1:])}): {exc}"
        ) from exc
    layers = sn_core.switch_layers(model)
    if not layers:
        norms = [m for m in model.modules() if isinstance(m, SOURCE_NORM_TYPES)]
        if not norms:
            reason = "it has no BatchNorm, GroupNorm or InstanceNorm layer to replace"
        else:
            reason = (
                f"each of its {len(norms)} norm layer(s) sees one element per channel, where "
                f"no normalizer of search.pool {list(spec.search.pool)} is defined (IN needs more "
                "than one element per channel); add 'ln', 'bn' or 'gn' to the pool"
            )
        raise ModelSpecError(
            f"model {arch!r} has no layer to search with Switchable Normalization: {reason}"
        )
    if all(len(layer.pool) == 1 for _, layer in layers):
        log.warning("model %r: every SwitchNorm layer has a single normalizer to choose", arch)
    return len(layers)


def recommend_or_explain(
    outcomes: list[TrialOutcome],
    target_batch_size: int,
    metric: Metric = ACCURACY,
    dyt_alpha0: float = DEFAULT_DYT_ALPHA0,
) -> Recommendation:
    """``recommend``; when it has no successful trial to combine, ``TrialsFailed`` naming the
    first failed trial (by batch size, lr, seed) with its exception type and message."""
    failed = [o for o in outcomes if o.status != "TERMINATED"]
    for outcome in failed:
        log.warning("trial %s failed: %s", outcome.trial_id, outcome.error)
    try:
        return recommend(
            outcomes, target_batch_size=target_batch_size, metric=metric, dyt_alpha0=dyt_alpha0
        )
    except ValueError as exc:
        first = next((o for o in failed if o.error), None)
        if first is None:
            raise
        raise TrialsFailed(
            f"{len(failed)} of {len(outcomes)} trial(s) failed; the first (seed {first.seed}, "
            f"batch size {first.batch_size}, lr {first.lr:g}) with {first.error} ({exc})"
        ) from exc


def verification_grid(spec: JobSpec) -> list[dict[str, Any]]:
    """The verification's trials: the recommended plan and each baseline, for every seed, at the
    target batch size with the first learning rate, scaled to that batch like a search trial."""
    batch, lr = spec.target_batch_size, spec.lrs[0]
    variants = [PLAN_VARIANT, *spec.verify.baselines]
    return [
        grid_point(spec, seed=seed, batch_size=batch, lr=lr, variant=variant)
        for variant in variants
        for seed in spec.search.trials.seeds
    ]


def epoch_budget(spec: JobSpec) -> int:
    """Epochs the whole job trains at most: every search trial's budget plus every verification
    trial's (the denominator of the job's progress; early stopping only makes it smaller)."""
    total = len(trial_grid(spec)) * spec.training.epochs
    if spec.verify.enabled:
        total += len(verification_grid(spec)) * spec.verify_epochs
    return total


def run_job(
    spec: JobSpec,
    *,
    data_roots: list[Path],
    work_dir: Path,
    recorder: Recorder,
    out_dir: Path | None = None,
    ray_address: str | None = None,
    ray_num_cpus: int | None = None,
    data: LoadedDataset | None = None,
    stop_event: threading.Event | None = None,
    model_limits: ModelLimits | None = None,
    check_cluster_fit: bool = True,
    publish_capacity_to: Path | None = None,
    storage: ExperimentStorage | None = None,
    storage_key: str | None = None,
) -> JobResult:
    """Run (or resume) the job; with ``out_dir``, its checkpoints go to ``out_dir``
    (``checkpoint.zip``: the verdict's configuration; ``search_checkpoint.zip``: the best search
    trial's own). ``data``: the spec's dataset when the caller has already loaded it. Raises
    ``JobCancelled`` once ``stop_event`` is set (checked between the stages, while the grid and
    the Tune experiment are built, and by Tune on every step of its control loop, so trials not
    yet started never start and running ones stop), and ``ModelSpecError`` before any
    training for a model with nothing to search or one over ``model_limits`` (the service's;
    None: unbounded; the service and `normsearch run` pass the settings').
    ``check_cluster_fit``: once Ray is joined, before the experiment starts, raise
    ``ClusterFitError`` naming the resource when a trial fits on no alive node (it would wait
    forever), after a grace of ``worker.search.FIT_GRACE_S`` for a node to join;
    ``publish_capacity_to``: the runs directory the cluster's capacity is published to, for the
    API's check at submit (``service.cluster``).
    ``storage``: where the Ray Tune experiments go (checked writable before Ray starts:
    ``service.storage.StorageError``), under ``storage_key`` (default: the work directory's
    own, ``claim_work_dir``); None: in ``work_dir``. The outputs go to ``out_dir`` either way."""
    work_dir = Path(work_dir).resolve()
    owned_key = claim_work_dir(spec, work_dir)
    experiments: Path | ExperimentStorage = work_dir
    if storage is not None:
        experiments = storage.child(storage_key or owned_key)
        probe(experiments)
    if data is None:
        data = load_dataset(spec.dataset, data_roots=data_roots)
    raise_if_stopped(stop_event)
    # Before Ray starts: a spec error fails the job at once.
    check_searchable(spec, data, model_limits)
    raise_if_stopped(stop_event)
    ensure_ray(ray_address, ray_num_cpus)
    capacity = cluster_capacity()
    if publish_capacity_to is not None:
        CapacityPublisher.start(publish_capacity_to, capacity)
    if check_cluster_fit:
        capacity = check_trials_fit(spec.resources, stop_event=stop_event)
    raise_if_stopped(stop_event)
    # Once per job: the search and the verification trials get the same GPUs.
    gpus = gpus_per_trial(spec, capacity)

    search = run_trials(
        spec,
        data,
        name="search",
        storage_dir=experiments,
        recorder=recorder,
        grid=trial_grid(spec, stop_event=stop_event),
        stop_event=stop_event,
        gpus=gpus,
    )
    raise_if_stopped(stop_event)
    recommendation = recommend_or_explain(
        search.outcomes, spec.target_batch_size, metric_for(spec.metric), spec.model.dyt_alpha0
    )
    raise_if_stopped(stop_event)

    verification, verification_outcomes = None, []
    if spec.verify.enabled:
        verification, verification_outcomes = verify(
            spec,
            data,
            recommendation,
            search.outcomes,
            experiments,
            recorder,
            stop_event=stop_event,
            gpus=gpus,
        )
        raise_if_stopped(stop_event)
    choice = chosen_configuration(verification)
    plan = deliverable_plan(spec, data, recommendation, choice)
    raise_if_stopped(stop_event)
    result = JobResult(
        spec=spec,
        dataset=data.summary(),
        outcomes=search.outcomes,
        recommendation=recommendation,
        verification=verification,
        plan=plan,
        outputs={"plan": plan.metadata},
        verification_outcomes=verification_outcomes,
        torch_layers=torch_layers(
            recommendation.plan,
            layer_outputs(recommendation.to_dict()),
            model=zoo_model(spec, data.num_classes, data.in_channels),
        ),
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        result.outputs["checkpoint"] = export_checkpoint(
            spec,
            data,
            plan=plan,
            choice=choice,
            recommendation=recommendation,
            search_outcomes=search.outcomes,
            verification_outcomes=verification_outcomes,
            path=out_dir / CHECKPOINT_FILE,
        )
        raise_if_stopped(stop_event)
        result.outputs["search_checkpoint"] = export_search_checkpoint(
            spec,
            data,
            recommendation=recommendation,
            outcomes=search.outcomes,
            path=out_dir / SEARCH_CHECKPOINT_FILE,
        )
        result.checkpoint = out_dir / CHECKPOINT_FILE
        result.search_checkpoint = out_dir / SEARCH_CHECKPOINT_FILE
    return result


def write_job_report(
    result: JobResult, out_dir: Path, *, extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write a finished job's plans, report, ratio history and figure into ``out_dir``."""
    return write_report(
        Path(out_dir),
        spec=result.spec.model_dump(mode="json"),
        recommendation=result.recommendation,
        outcomes=result.outcomes,
        verification=result.verification,
        plan=result.plan,
        outputs=result.outputs,
        extra={"dataset": result.dataset, **(extra or {})},
        described=result.torch_layers,
    )


def verify(
    spec: JobSpec,
    data: LoadedDataset,
    recommendation: Recommendation,
    outcomes: list[TrialOutcome],
    work_dir: Path | ExperimentStorage,
    recorder: Recorder,
    *,
    stop_event: threading.Event | None = None,
    gpus: float | None = None,
) -> tuple[dict[str, Any], list[TrialOutcome]]:
    """Train the recommended plan and the baselines from scratch with the same budget and seeds;
    report their final-epoch validation accuracies beside the SN model's, and the verdict
    (``worker.verdict``: paired by seed, which configuration to use). Returns that summary and
    the runs (with their checkpoints: ``worker.export`` saves the chosen one)."""
    seeds = spec.search.trials.seeds
    batch = spec.target_batch_size
    variants = [PLAN_VARIANT, *spec.verify.baselines]
    grid = verification_grid(spec)
    run = run_trials(
        spec,
        data,
        name="verify",
        storage_dir=work_dir,
        recorder=recorder,
        grid=grid,
        variant=PLAN_VARIANT,
        epochs=spec.verify_epochs,
        plan=recommendation.plan.to_dict(),
        use_scheduler=False,
        stop_event=stop_event,
        gpus=gpus,
    )
    lr = grid[0]["lr"] if grid else spec.lrs[0]
    metric = metric_for(spec.metric)
    accuracies: dict[str, dict[int, float]] = {v: {} for v in variants}
    diverged: dict[str, list[int]] = {}
    for outcome in run.outcomes:
        # (a diverged language model has no perplexity: its seed drops out, said in ``missing``)
        value = outcome.metric_value(metric)
        if outcome.counts_in_verification and value is not None:
            accuracies[outcome.variant][outcome.seed] = value
        if outcome.diverged:
            diverged.setdefault(outcome.variant, []).append(outcome.seed)
    # The SN model of each seed: its search trial at the verification's batch size and lr.
    accuracies[SN_VARIANT] = {
        o.seed: value
        for o in outcomes
        if o.batch_size == batch
        and o.lr == lr
        and o.status == "TERMINATED"
        and (value := o.metric_value(metric)) is not None
    }
    decided = verdict(
        accuracies, plan_uniform=uniform_normalizer(recommendation.plan), metric=metric
    )
    rows = {}
    for variant in (SN_VARIANT, *variants):
        label = VERIFICATION_LABELS.get(variant, f"all-{variant.upper()} (from scratch)")
        rows[variant] = _accuracy_row(decided.configs.get(variant), label, metric)
        if diverged.get(variant):  # in the label too, so every table that shows it says so
            seeds = sorted(diverged[variant])
            rows[variant]["diverged_seeds"] = seeds
            seeds_text = ", ".join(map(str, seeds))
            counted = "its accuracy" if metric is ACCURACY else "its perplexity, if finite"
            rows[variant]["label"] += f"; diverged: seed {seeds_text} (counted at {counted})"
    summary = {
        "epochs": spec.verify_epochs,
        "batch_size": batch,
        "lr": lr,
        "seeds": list(seeds),
        "metric": f"final-epoch {metric.label}: mean and sample std over seeds",
        "results": rows,
        "verdict": decided.to_dict(),
    }
    if metric is not ACCURACY:  # a classifier's summary reads as it always has
        summary["metric_name"] = metric.name
        summary["higher_is_better"] = metric.higher_is_better
    return summary, run.outcomes


def uniform_normalizer(plan: sn_core.NormalizerPlan) -> str | None:
    """The member a plan uses in every layer, if one: the point-wise output of every layer
    (dyt, none), else the normalizer of every layer's mean and variance."""
    outputs = {getattr(layer, "output", "norm") for layer in plan.layers}
    if outputs != {"norm"}:
        return outputs.pop() if len(outputs) == 1 else None
    kinds = {kind for layer in plan.layers for kind in (layer.mean, layer.var)}
    return kinds.pop() if len(kinds) == 1 else None


# Row labels of the verification table: what each row is and how it was trained.
VERIFICATION_LABELS = {
    SN_VARIANT: "SN model (the search's own trial, annealed)",
    PLAN_VARIANT: "recommended plan (from scratch)",
}


def _accuracy_row(
    stats: ConfigStats | None, label: str, metric: Metric = ACCURACY
) -> dict[str, Any]:
    """One verification row: mean, sample std (None below 2 seeds) and the per-seed values in
    seed order, for the CLI, the report and the UI; the mean under the metric's record key
    (``val_accuracy``, or ``val_perplexity`` for a language model)."""
    if stats is None:
        return {"label": label, metric.key: None, "std": None, "n": 0, "per_seed": []}
    seeds = sorted(stats.per_seed)
    return {
        "label": label,
        metric.key: stats.mean,
        "std": stats.std,
        "n": stats.n,
        "seeds": seeds,
        "per_seed": [stats.per_seed[seed] for seed in seeds],
    }
