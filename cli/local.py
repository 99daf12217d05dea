"""Local commands: a search on this machine (or the Ray cluster at RAY_ADDRESS) without a server.

    normsearch run SPEC.yaml --out DIR
    normsearch demo
    normsearch schema

The commands import the training stack (worker, sn_core) inside the command, so that
``normsearch --help`` and the remote commands stay fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import fail
from cli.render import (
    batch_size_table,
    bn_trend_table,
    console,
    outputs_lines,
    ratio_table,
    recommendation_table,
    verdict_lines,
    verification_table,
)
from cli.specfile import load_spec_file


def demo(
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 12,
    arch: Annotated[str, typer.Option(help="Zoo architecture.")] = "resnet20",
    out: Annotated[Path, typer.Option(help="Where to write plan.json and the checkpoint.")] = Path(
        "out/demo"
    ),
) -> None:
    """Train a Switchable-Normalization network on scikit-learn's digits and print per-layer
    normalizer choices (a short, self-contained search on 2 CPU cores)."""
    import sn_core
    from worker.digits_demo import train_digits

    if arch not in sn_core.list_models():
        raise typer.BadParameter(
            f"unknown arch {arch!r}; known: {', '.join(sn_core.list_models())}"
        )
    console.print(f"[bold]normsearch demo[/bold]: {arch} with SN on digits, {epochs} epochs")
    started = time.perf_counter()

    def on_epoch(record: dict) -> None:
        console.print(
            f"epoch {record['epoch']:>2}  loss {record['train_loss']:.3f}  "
            f"val acc {record['val_accuracy']:.3f}  fixed {record['fraction_fixed']:.0%}"
        )

    result = train_digits(arch=arch, epochs=epochs, on_epoch=on_epoch)
    console.print(ratio_table(result.model))
    counts = ", ".join(f"{pair}: {n}" for pair, n in sorted(result.plan.counts().items()))
    console.print(f"choices (mean/var): {counts}")
    console.print(
        f"SN model val accuracy {result.val_accuracy:.3f}; finalized (plain torch layers) "
        f"{result.finalized_accuracy:.3f}; {time.perf_counter() - started:.0f} s"
    )
    out.mkdir(parents=True, exist_ok=True)
    result.plan.save(out / "plan.json")
    spec = {"arch": arch, "num_classes": 10, "in_channels": 1, "kwargs": {}}
    sn_core.save_finalized(result.finalized, result.plan, spec, out / "finalized")
    console.print(f"wrote {out / 'plan.json'} and {out / 'finalized'}/")


def run(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON).")],
    out: Annotated[Path, typer.Option(help="Output directory (plan, checkpoint, report).")] = Path(
        "out"
    ),
    work_dir: Annotated[
        Path | None,
        typer.Option(
            help="Search state (Ray Tune experiments, unless NORMSEARCH_STORAGE_URI puts them "
            "elsewhere); default OUT/state. Re-running with the same directory resumes an "
            "interrupted search."
        ),
    ] = None,
) -> None:
    """Run a whole normalization search on this machine (or the Ray cluster at RAY_ADDRESS)."""
    from service.cluster import ClusterFitError
    from service.limits import ModelLimits
    from service.settings import get_settings
    from service.storage import StorageError, open_storage
    from worker.data import DatasetError, load_dataset
    from worker.job import JobStateError, ModelSpecError, TrialsFailed, run_job, write_job_report
    from worker.recorder import JsonlRecorder, TeeRecorder

    spec = load_spec_file(spec_file)
    settings = get_settings()
    out.mkdir(parents=True, exist_ok=True)
    work_dir = work_dir or out / "state"
    started = time.perf_counter()
    console.print(
        f"[bold]normsearch run[/bold] {spec.model.arch} on {spec.dataset.kind}: "
        f"{len(spec.search.trials.seeds) * len(spec.batch_sizes) * len(spec.lrs)} search trial(s), "
        f"{spec.training.epochs} epochs each"
    )
    from cli.progress import LiveTrialsView

    history = JsonlRecorder(work_dir / "trials.jsonl")
    data_roots = settings.resolved_data_roots()
    try:
        storage = open_storage(settings.storage_uri) if settings.storage_uri else None
        data = load_dataset(spec.dataset, data_roots=data_roots)
        console.print(f"dataset: {data.summary()}")
        with LiveTrialsView(console) as view:
            result = run_job(
                spec,
                data_roots=data_roots,
                work_dir=work_dir,
                recorder=TeeRecorder(history, view),
                out_dir=out,
                ray_address=settings.ray_address,
                ray_num_cpus=settings.ray_num_cpus,
                data=data,
                storage=storage,
                # the service's model-size limits here too: an oversized model is refused in a
                # moment with the variable to raise, not killed by the OOM killer in a trial
                model_limits=ModelLimits.from_settings(settings),
            )
    except (
        DatasetError, JobStateError, StorageError, ModelSpecError, ClusterFitError, TrialsFailed
    ) as error:  # fmt: skip
        # the job's own reasons (bad data or storage, a model that is too big, trials that all
        # failed): the line a user acts on, as the service records it for a job
        raise fail(str(error)) from None
    files = write_job_report(result, out, extra={"wall_seconds": time.perf_counter() - started})
    console.print()
    for line in verdict_lines(result.verification):
        console.print(line)
    console.print(recommendation_table(result.recommendation.to_dict()))
    if result.recommendation.by_batch_size:
        console.print(batch_size_table(result.recommendation.by_batch_size))
        trend = bn_trend_table(result.recommendation.to_dict()["by_batch_size"])
        if trend is not None:
            console.print(trend)
    if result.verification:
        console.print(verification_table(result.verification))
    for line in outputs_lines(result.outputs):
        console.print(line)
    written = [*files.values(), result.checkpoint, result.search_checkpoint]
    console.print(f"wrote {', '.join(str(p) for p in written if p is not None)}")


def schema() -> None:
    """Print the job spec's JSON Schema (what the UI's form and the docs are built from)."""
    import json

    from service.spec import job_spec_schema

    typer.echo(json.dumps(job_spec_schema(), indent=2))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``normsearch`` app."""
    app.command()(run)
    app.command()(demo)
    app.command()(schema)
