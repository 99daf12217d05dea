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
            f"epoch {record['epoch']:>2}  loss {record['loss']:.3f}  "
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


if __name__ == "__main__":
    app()
