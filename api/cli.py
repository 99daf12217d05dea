"""The ``normsearch`` command line.

Commands that train import the worker package lazily inside the command, so the API process (which
shares this package) never loads training code at import time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="normsearch: find which normalizer each layer of your network should use.",
    no_args_is_help=True,
    add_completion=False,
)
# Wide enough for the ratio table when the output is a pipe or a log file.
console = Console(width=None if sys.stdout.isatty() else 110)


@app.callback()
def main() -> None:
    """normsearch command line."""


def ratio_table(model) -> Table:
    import sn_core

    table = Table(title="Per-layer switch ratios (mean | variance), network order")
    table.add_column("layer", no_wrap=True)
    for part in ("mean", "var"):
        for norm in ("in", "ln", "bn"):
            table.add_column(f"{part} {norm.upper()}", justify="right")
    table.add_column("choice")
    for name, info in sn_core.switch_ratios(model).items():
        cells = [
            f"{info[part].get(norm, 0.0):.2f}"
            for part in ("mean", "var")
            for norm in ("in", "ln", "bn")
        ]
        mean_choice = max(info["mean"], key=info["mean"].get)
        var_choice = max(info["var"], key=info["var"].get)
        table.add_row(name, *cells, f"{mean_choice}/{var_choice}")
    return table


@app.command()
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


def load_spec_file(path: Path):
    """Parse a YAML or JSON job spec; exits with one line per problem on bad input."""
    import yaml
    from pydantic import ValidationError

    from service.spec import JobSpec, format_validation_error

    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise typer.BadParameter(f"spec file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise typer.BadParameter(f"{path} is not valid YAML/JSON: {error}") from None
    if not isinstance(raw, dict):
        raise typer.BadParameter(f"{path} must hold a mapping with at least model and dataset")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as error:
        for line in format_validation_error(error):
            console.print(f"[red]spec error[/red] {line}")
        raise typer.Exit(code=2) from None


@app.command()
def run(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON).")],
    out: Annotated[Path, typer.Option(help="Output directory (plan, checkpoint, report).")] = Path(
        "out"
    ),
    work_dir: Annotated[
        Path | None,
        typer.Option(
            help="Search state (Ray Tune experiments); default OUT/state. Re-running "
            "with the same directory resumes an interrupted search."
        ),
    ] = None,
) -> None:
    """Run a whole normalization search on this machine (or the Ray cluster at RAY_ADDRESS)."""
    from service.settings import get_settings
    from worker.data import DatasetError, load_dataset
    from worker.job import JobStateError, run_job, write_job_report
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
    from api.progress import LiveTrialsView

    history = JsonlRecorder(work_dir / "trials.jsonl")
    data_roots = settings.resolved_data_roots()
    try:
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
            )
    except (DatasetError, JobStateError) as error:
        console.print(f"[red]error[/red] {error}")
        raise typer.Exit(code=2) from None
    files = write_job_report(result, out, extra={"wall_seconds": time.perf_counter() - started})
    console.print()
    console.print(recommendation_table(result.recommendation))
    if result.recommendation.by_batch_size:
        console.print(batch_size_table(result.recommendation.by_batch_size))
    if result.verification:
        console.print(verification_table(result.verification))
    console.print(f"wrote {', '.join(str(p) for p in files.values())} and {result.checkpoint_dir}/")


@app.command()
def schema() -> None:
    """Print the job spec's JSON Schema (what the UI's form and the docs are built from)."""
    import json

    from service.spec import job_spec_schema

    typer.echo(json.dumps(job_spec_schema(), indent=2))


def recommendation_table(recommendation) -> Table:
    table = Table(title=f"Recommendation (batch size {recommendation.target_batch_size})")
    for column in ("layer", "mean", "var", "confidence"):
        table.add_column(column, no_wrap=column == "layer")
    for layer in recommendation.plan.layers:
        table.add_row(layer.name, layer.mean, layer.var, f"{layer.confidence:.2f}")
    return table


def batch_size_table(by_batch_size: dict) -> Table:
    """Average ratio of each normalizer over the layers, per batch size (SN paper: the BN share
    grows with batch size)."""
    norms = sorted({k for row in by_batch_size.values() for k in row["mean_ratio"]})
    table = Table(title="How the choices move with batch size (average ratio over layers)")
    table.add_column("batch size")
    for part in ("mean", "var"):
        for norm in norms:
            table.add_column(f"{part} {norm.upper()}", justify="right")
    for batch, row in sorted(by_batch_size.items(), key=lambda item: int(item[0])):
        cells = [
            f"{row[f'{part}_ratio'].get(norm, 0.0):.2f}"
            for part in ("mean", "var")
            for norm in norms
        ]
        table.add_row(str(batch), *cells)
    return table


def verification_table(verification: dict) -> Table:
    table = Table(
        title=f"Verification: {verification['epochs']} epochs, batch {verification['batch_size']}, "
        f"seeds {verification['seeds']}"
    )
    for column in ("model", "val accuracy", "std"):
        table.add_column(column)
    for row in verification["results"].values():
        accuracy = row["val_accuracy"]
        table.add_row(
            row["label"], "-" if accuracy is None else f"{accuracy:.3f}", f"{row['std']:.3f}"
        )
    return table


db_app = typer.Typer(help="The service database (migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="SQLAlchemy database URL (default: NORMSEARCH_DATABASE_URL or the settings)."
    ),
]


def _database_url(url: str | None) -> str:
    if url is not None:
        return url
    from service.settings import get_settings

    return get_settings().database_url


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def db_upgrade(
    url: DatabaseUrlOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the migrations (creates the database tables; safe to run again)."""
    from sqlalchemy.engine import make_url

    from service.db.migrate import current, upgrade

    url = _database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    upgrade(url, revision)
    typer.echo(f"{_shown(url)} is at revision {current(url) or 'none'}")


@db_app.command("current")
def db_current(url: DatabaseUrlOption = None) -> None:
    """Print the revision the database is at ("none": not migrated)."""
    from service.db.migrate import current

    typer.echo(current(_database_url(url)) or "none")


# Command groups defined in their own modules: the server processes (serve, worker, up), API
# token management, and the remote client commands (submit, ls, status, cancel, download).
from api import cli_remote, cli_server, cli_tokens  # noqa: E402

cli_server.register(app)
cli_tokens.register(app)
cli_remote.register(app)

if __name__ == "__main__":
    app()
