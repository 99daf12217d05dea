"""How the command line shows things: the consoles and every rich table the commands print.

One module so that the local, server and remote commands render a job, a recommendation and a
verification the same way.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from api.schemas import ArtifactKind, JobDetail, JobStatus, JobSummary
from sn_core.vocabulary import MEMBER_LABELS, OUTPUT_CHOICES, STATISTIC_MEMBERS

# Wide enough for the ratio tables when the output is a pipe or a log file.
PIPE_WIDTH = 110


def columns_asked() -> int | None:
    """The width ``COLUMNS`` asks for (read at each print, so a test or a caller can set it)."""
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


class FittingConsole(Console):
    """A console as wide as ``COLUMNS`` says when set, else the terminal, else (a pipe, a log
    file: nothing to fit) ``PIPE_WIDTH``."""

    @property
    def size(self) -> ConsoleDimensions:
        height = super().size.height
        asked = columns_asked()
        if asked is not None:
            return ConsoleDimensions(asked, height)
        if not self.is_terminal:
            return ConsoleDimensions(PIPE_WIDTH, height)
        return super().size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


console = FittingConsole()
err_console = FittingConsole(stderr=True)


def print_lines(*lines: str) -> None:
    """Print plain lines as they are, never wrapped: commands and paths a user copies."""
    console.file.write("".join(f"{line}\n" for line in lines))
    console.file.flush()


def output_width(needed: int) -> int:
    """The width ``print_wide`` prints at."""
    if console.is_terminal or columns_asked() is not None:
        return console.width
    return max(console.width, needed)


def print_wide(renderable, *, needed: int) -> None:
    """Print at a terminal's width or the width ``COLUMNS`` asks for, but in a pipe or a log file
    without ``COLUMNS`` (nothing to fit) at least ``needed`` columns wide, so that a row of a wide
    table stays on one line."""
    width = output_width(needed)
    if width == console.width:
        console.print(renderable)
    else:
        Console(file=console.file, width=width).print(renderable)


STATUS_STYLES = {
    JobStatus.queued: "yellow",
    JobStatus.running: "cyan",
    JobStatus.succeeded: "green",
    JobStatus.failed: "red",
    JobStatus.cancelling: "bright_magenta",
    JobStatus.cancelled: "magenta",
}


def ratio_table(model) -> Table:
    """One row per SN layer; a column per normalizer of the model's pools (network order), and
    per output choice when a layer has point-wise members (its output ratios; "-" elsewhere)."""
    import sn_core

    return ratio_rows_table(sn_core.switch_ratios(model))


def ratio_rows_table(ratios: dict[str, dict[str, Any]]) -> Table:
    """``ratio_table`` of ``sn_core.switch_ratios``-shaped ratios."""
    present = {norm for info in ratios.values() for part in ("mean", "var") for norm in info[part]}
    norms = [norm for norm in STATISTIC_MEMBERS if norm in present]
    outputs_present = {c for info in ratios.values() for c in info.get("output") or {}}
    outputs = [c for c in OUTPUT_CHOICES if c in outputs_present]
    table = Table(title="Per-layer switch ratios (mean | variance), network order")
    table.add_column("layer", no_wrap=True)
    for part in ("mean", "var"):
        for norm in norms:
            table.add_column(f"{part} {MEMBER_LABELS[norm]}", justify="right")
    for choice in outputs:
        table.add_column(f"out {MEMBER_LABELS[choice]}", justify="right")
    table.add_column("choice")
    for name, info in ratios.items():
        cells = [f"{info[part].get(norm, 0.0):.2f}" for part in ("mean", "var") for norm in norms]
        output = info.get("output") or {}
        cells += [f"{output[c]:.2f}" if c in output else "-" for c in outputs]
        mean_choice = max(info["mean"], key=info["mean"].get)
        var_choice = max(info["var"], key=info["var"].get)
        choice = f"{mean_choice}/{var_choice}"
        if output and (top := max(output, key=output.get)) != "norm":
            choice += f" -> {top}"
        table.add_row(name, *cells, choice)
    return table


def batch_size_table(by_batch_size: dict) -> Table:
    """Average ratio of each normalizer over the layers, per batch size (SN paper: the BN share
    grows with batch size)."""
    present = {k for row in by_batch_size.values() for k in row["mean_ratio"]}
    norms = [norm for norm in STATISTIC_MEMBERS if norm in present]
    table = Table(
        title="How the choices move with batch size (final-epoch ratios, averaged over the "
        "trials and layers)"
    )
    table.add_column("batch size")
    for part in ("mean", "var"):
        for norm in norms:
            table.add_column(f"{part} {MEMBER_LABELS[norm]}", justify="right")
    for batch, row in sorted(by_batch_size.items(), key=lambda item: int(item[0])):
        cells = [
            f"{row[f'{part}_ratio'].get(norm, 0.0):.2f}"
            for part in ("mean", "var")
            for norm in norms
        ]
        table.add_row(str(batch), *cells)
    return table


def _depth_thirds(names: list[str]) -> list[tuple[str, list[str]]]:
    """The layers in network order cut into early, middle and late thirds (fewer parts below
    three layers)."""
    n = len(names)
    parts = [("early", 0, n // 3), ("middle", n // 3, 2 * n // 3), ("late", 2 * n // 3, n)]
    return [(label, names[a:b]) for label, a, b in parts if b > a]


def bn_trend_table(by_batch_size: dict) -> Table | None:
    """BN's share by batch size, the SN paper's trend at a glance: per batch size the mean BN
    ratio over all layers (mean and variance), over the early, middle and late thirds of the
    network (mean side; from each layer's ratios, reports with them), and how many layers chose
    BN. All final-epoch ratios averaged over that batch size's trials. None when BN is not in
    the pool."""
    rows = sorted(by_batch_size.items(), key=lambda item: int(item[0]))
    if not rows or not any("bn" in row.get("mean_ratio", {}) for _, row in rows):
        return None
    first = next((row["layers"] for _, row in rows if row.get("layers")), None)
    thirds = _depth_thirds(list(first)) if first else []
    table = Table(
        title="BN's share by batch size (final-epoch ratios, averaged over each batch size's "
        "trials)",
        caption="SN paper: BN's share grows with the batch size",
    )
    table.add_column("batch size", justify="right")
    table.add_column("trials", justify="right")
    table.add_column("BN mean ratio", justify="right")
    table.add_column("BN var ratio", justify="right")
    for label, names in thirds:
        table.add_column(f"BN mean, {label} ({len(names)} layers)", justify="right")
    table.add_column("layers choosing BN (mean/var)", justify="right")
    for batch, row in rows:
        layers = row.get("layers") or {}
        cells = [
            str(batch),
            str(row.get("trials", "-")),
            f"{row['mean_ratio'].get('bn', 0.0):.2f}",
            f"{row['var_ratio'].get('bn', 0.0):.2f}",
        ]
        for _label, names in thirds:
            values = [layers[n]["mean"].get("bn", 0.0) for n in names if n in layers]
            cells.append(f"{sum(values) / len(values):.2f}" if values else "-")
        choices = list((row.get("choices") or {}).values())
        mean_bn = sum(c.split("/")[0] == "bn" for c in choices)
        var_bn = sum(c.split("/")[-1] == "bn" for c in choices)
        cells.append(f"{mean_bn}/{var_bn} of {len(choices)}" if choices else "-")
        table.add_row(*cells)
    return table


def verification_table(verification: dict) -> Table:
    metric = verification.get("metric", "final-epoch validation accuracy")
    table = Table(
        title=f"Verification: {verification['epochs']} epochs, batch {verification['batch_size']}, "
        f"seeds {verification['seeds']} ({metric})"
    )
    perplexity = verification.get("metric_name") == "perplexity"
    key, heading = ("val_perplexity", "val ppl") if perplexity else ("val_accuracy", "val acc")
    for column in ("model", f"final-epoch {heading} (mean)", "std", "seeds"):
        table.add_column(column)
    for row in verification["results"].values():
        accuracy, std = row.get(key), row.get("std")
        table.add_row(
            row["label"],
            "-" if accuracy is None else f"{accuracy:.3f}",
            # one seed has no spread to show (reports before the verdict wrote 0.0 there)
            "-" if std is None or row.get("n", len(row.get("per_seed", []))) < 2 else f"{std:.3f}",
            str(row.get("n", len(row.get("per_seed", [])))),
        )
    return table


def baseline_label(baseline: str) -> str:
    """all-BN, all-RMS, all-DyT; no-norm for the identity (as worker.verdict.label says)."""
    return "no-norm" if baseline == "none" else f"all-{MEMBER_LABELS.get(baseline, baseline)}"


def verdict_lines(verification: dict | None) -> list[str]:
    """The verdict in plain words and the plan's paired differences (points, 95% CI); empty for
    a report without a verdict."""
    decided = (verification or {}).get("verdict")
    if not decided:
        return []
    lines = [f"[bold]verdict[/bold]: {escape(decided['text'])}"]
    for comparison in decided.get("comparisons", []):
        low, high = comparison.get("ci_low_points"), comparison.get("ci_high_points")
        interval = "no interval (1 seed)" if low is None else f"95% CI {low:+.1f} to {high:+.1f}"
        lines.append(
            f"  plan - {baseline_label(comparison['baseline'])}: "
            f"{comparison['mean_points']:+.1f} points ({interval}, {comparison['n']} seed(s))"
        )
    return lines


def when_text(value: datetime | None, *, seconds: bool = True) -> str:
    """A timestamp in local time."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def status_text(status: str) -> str:
    style = STATUS_STYLES.get(status, "white")
    return f"[{style}]{status}[/{style}]"


def result_text(job: JobSummary) -> str:
    """A job's result in short: the worker's line for a succeeded job (the verdict's
    configuration, its final-epoch accuracy and spread), the reason of a failed one, "-" else
    (also for a job that succeeded before results were recorded)."""
    if job.result is not None:
        return job.result.text
    if job.status == JobStatus.failed and job.error:
        return f"failed: {job.error}"
    return "-"


def duration_text(job: JobSummary, *, now: datetime | None = None) -> str:
    """How long the job ran: start to finish, or start to now while it runs; "-" before it
    started. Whole seconds, as "1 min 51 s" or "2 h 05 min"."""
    if job.started_at is None:
        return "-"
    end = job.finished_at or (now or datetime.now(job.started_at.tzinfo))
    seconds = max(0, round((end - job.started_at).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# The jobs table's columns beside id, status and result, most wanted first: the table keeps as
# many as fit the width, so that the id stays whole and the result readable in 80 columns.
JOB_COLUMNS_BY_PRIORITY = (
    *("name", "note", "done", "duration"),
    *("model", "dataset", "batch", "created"),
)
RESULT_MIN_WIDTH = 24


def jobs_table(items: list[JobSummary], *, title: str | None = None, width: int = 0) -> Table:
    """One row per job, fitted to ``width`` (default: the console's): the id, status and result
    always, then as many other columns as fit (``JOB_COLUMNS_BY_PRIORITY``). No cell but the
    result wraps, and the result wraps between words."""
    width = width or console.width
    cells: dict[str, list[str]] = {
        "id": [job.id for job in items],
        "name": [escape(job.name or "") for job in items],
        "status": [status_text(job.status) for job in items],
        "done": [f"{job.progress:.0%}" for job in items],
        "model": [escape(job.arch) for job in items],
        "dataset": [escape(job.dataset) for job in items],
        "batch": ["-" if j.target_batch_size is None else str(j.target_batch_size) for j in items],
        "created": [when_text(job.created_at, seconds=False) for job in items],
        "duration": [duration_text(job) for job in items],
        "result": [escape(result_text(job)) for job in items],
        "note": [f"run {job.run}" if job.run > 1 else "" for job in items],
    }

    def natural(column: str) -> int:
        """The column's width in the table: its widest cell, the padding and one divider."""
        return max(Text.from_markup(c).cell_len for c in [column, *cells[column]]) + 3

    chosen = {"id", "status", "result"}
    used = 2 + natural("id") + natural("status")  # 2: the table's edges
    for column in JOB_COLUMNS_BY_PRIORITY:
        if any(cells[column]) and used + natural(column) + RESULT_MIN_WIDTH + 3 <= width:
            chosen.add(column)
            used += natural(column)
    order = ["id", "name", "status", "done", "model", "dataset", "batch", "created", "duration"]
    columns = [c for c in [*order, "result", "note"] if c in chosen]
    # the result takes the rest of the width (its cells wrap there), at most what it needs
    result_width = max(10, min(natural("result"), width - used) - 3)
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(
            column,
            no_wrap=column != "result",
            width=result_width if column == "result" else None,
            justify="right" if column in ("done", "batch", "duration") else "left",
        )
    for row in zip(*(cells[c] for c in columns), strict=True):
        table.add_row(*row)
    return table


def job_summary_table(job: JobDetail) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("job", job.id),
        *([("name", escape(job.name))] if job.name else []),
        ("status", status_text(job.status)),
        ("progress", f"{job.progress:.0%}"),
        ("model", escape(job.arch)),
        ("dataset", escape(job.dataset)),
        ("batch size", "-" if job.target_batch_size is None else str(job.target_batch_size)),
        ("run / attempts", f"{job.run} / {job.attempts}"),
        ("created", when_text(job.created_at)),
        ("started", when_text(job.started_at)),
        ("finished", when_text(job.finished_at)),
    ]
    if job.heartbeat_at is not None and job.status == "running":
        rows.append(("heartbeat", when_text(job.heartbeat_at)))
    if job.idempotency_key:
        rows.append(("idempotency key", escape(job.idempotency_key)))
    if job.result is not None:
        rows.append(("result", escape(job.result.text)))
    if job.error:
        rows.append(("error", f"[red]{escape(job.error)}[/red]"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def events_table(job: JobDetail) -> Table:
    table = Table(title="events")
    for column in ("at", "from", "to", "message"):
        table.add_column(column, no_wrap=column == "at")
    for event in job.events:
        table.add_row(
            when_text(event.at),
            event.from_status or "-",
            status_text(event.to_status),
            escape(event.message or ""),
        )
    return table


# What each output is, in words (the artifact list shows it beside the kind).
ARTIFACT_WHAT = {
    ArtifactKind.plan_json: "plan of the configuration the verdict chose",
    ArtifactKind.plan_yaml: "the same plan, YAML",
    ArtifactKind.checkpoint: "trained model of the configuration the verdict chose",
    ArtifactKind.search_plan_json: "the search's per-layer plan",
    ArtifactKind.search_checkpoint: "best search trial, finalized with its own choices",
    ArtifactKind.report_json: "report",
    ArtifactKind.ratios_csv: "ratio history",
    ArtifactKind.ratios_png: "ratio figure",
}


def artifacts_table(job: JobDetail) -> Table:
    """The job's outputs with the size and SHA-256 of the file a download sends."""
    table = Table(title="outputs (size and sha256 of the downloaded file)")
    for column in ("kind", "what", "size", "sha256"):
        table.add_column(column, no_wrap=column != "what")
    for artifact in job.artifacts:
        table.add_row(
            artifact.kind,
            ARTIFACT_WHAT.get(artifact.kind, ""),
            size_text(artifact.size_bytes),
            artifact.sha256[:16] + "…",
        )
    return table


def checkpoint_line(name: str, info: dict[str, Any]) -> str:
    """One checkpoint's metadata (report.json ``outputs``) in words: which configuration,
    which run, its accuracy and what that accuracy is, verified or not, folded or not."""
    what = info.get("configuration_label") or "the search's own choices"
    accuracy = info.get("val_accuracy")
    acc = "-" if accuracy is None else f"{accuracy:.3f}"
    text = (
        f"{name}: {what}; {info.get('source', '?')}, seed {info.get('seed', '?')}: "
        f"val accuracy {acc} ({info.get('accuracy', '?')})"
    )
    if not info.get("verified"):
        text += "; not verified"
    if info.get("fold_batchnorm"):
        text += f"; BatchNorm fold {info['fold_batchnorm']}"
    return escape(text)


def outputs_lines(outputs: dict[str, Any] | None) -> list[str]:
    """What plan.json and the two checkpoints are (empty for a report from before)."""
    outputs = outputs or {}
    lines = []
    plan = outputs.get("plan") or {}
    if plan.get("configuration_label"):
        lines.append(
            escape(
                f"plan.json: {plan['configuration_label']} "
                f"({'verified' if plan.get('verified') else 'not verified'}); "
                f"{plan.get('search_plan', '')}"
            )
        )
    for name, key in (("checkpoint", "checkpoint"), ("search checkpoint", "search_checkpoint")):
        if outputs.get(key):
            lines.append(checkpoint_line(name, outputs[key]))
    return lines


def size_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def recommendation_table(recommendation: dict[str, Any]) -> Table | None:
    """The per-layer recommendation (``Recommendation.to_dict()``, as report.json holds it; None
    when it has no layer). Layers the trials left undecided are marked "indifferent" and were
    resolved by the aggregation rule printed under the table; with one trial the confidence
    column says so instead of a number that measures nothing. An ``output`` column appears when
    a layer has point-wise members, a ``torch layer`` column when the report says what each
    layer becomes."""
    plan = recommendation.get("plan") or {}
    layers = plan.get("layers") or []
    if not layers:
        return None
    aggregation = (recommendation.get("summary") or {}).get("aggregation") or {}
    indifferent = set(aggregation.get("indifferent_layers") or [])
    single = (plan.get("metadata") or {}).get("trials") == 1
    batch = recommendation.get("target_batch_size")
    table = Table(
        title=f"Recommendation (batch size {batch})",
        caption=f"indifferent layers: {escape(aggregation['rule'])}" if indifferent else None,
    )
    summary_outputs = (recommendation.get("summary") or {}).get("outputs") or {}
    outputs = {
        str(layer.get("name")): layer.get("output") or summary_outputs.get(layer.get("name"))
        for layer in layers
    }
    has_output = any(outputs.values())
    torch_layers = recommendation.get("torch_layers") or {}
    columns = ["layer", "mean", "var"] + (["output"] if has_output else [])
    columns += ["confidence"] + (["torch layer"] if torch_layers else []) + ["note"]
    for column in columns:
        table.add_column(column, no_wrap=column == "layer")
    for layer in layers:
        confidence = layer.get("confidence")
        name = str(layer.get("name", "?"))
        cells = [escape(name), str(layer.get("mean", "?")), str(layer.get("var", "?"))]
        if has_output:
            cells.append(MEMBER_LABELS.get(outputs[name], "-") if outputs[name] else "-")
        cells.append("1 trial" if single else "-" if confidence is None else f"{confidence:.2f}")
        if torch_layers:
            cells.append(escape(str(torch_layers.get(name, "-"))))
        cells.append("indifferent" if name in indifferent else "")
        table.add_row(*cells)
    return table


def recommendation_table_from_report(report: dict[str, Any]) -> Table | None:
    """The per-layer recommendation of a report.json (None when it holds none)."""
    return recommendation_table(report.get("recommendation") or {})


def print_report(report: dict[str, Any]) -> None:
    for line in verdict_lines(report.get("verification")):
        console.print(line)
    table = recommendation_table_from_report(report)
    if table is None:
        console.print("the report holds no recommendation")
        return
    console.print(table)
    for line in outputs_lines(report.get("outputs")):
        console.print(line)
    recommendation = report.get("recommendation") or {}
    try:
        if recommendation.get("by_batch_size"):
            console.print(batch_size_table(recommendation["by_batch_size"]))
            trend = bn_trend_table(recommendation["by_batch_size"])
            if trend is not None:
                console.print(trend)
        if report.get("verification"):
            console.print(verification_table(report["verification"]))
    except (KeyError, TypeError, ValueError):  # an older or partial report: the table is enough
        pass
