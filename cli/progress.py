"""A live terminal view of a running search (rich), fed as a recorder by the search driver."""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


class LiveTrialsView:
    """Recorder-shaped: shows one row per trial (variant, seed, batch, base lr, the effective lr
    it trains with, epoch, accuracy, fraction of SN choices fixed, status), refreshed as results
    stream in."""

    def __init__(self, console: Console) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._live = Live(self._table(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveTrialsView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.update(self._table())
        self._live.__exit__(*exc)

    def _table(self) -> Table:
        table = Table(title="trials", expand=False)
        for column in (
            "trial",
            "variant",
            "seed",
            "batch",
            "lr",
            "lr (effective)",
            "epoch",
            "val acc (newest epoch)",
            "fixed",
            "status",
        ):
            table.add_column(
                column, justify="right" if column not in ("trial", "variant") else "left"
            )
        for trial_id, row in self._rows.items():
            table.add_row(
                trial_id,
                row.get("variant", "sn"),
                str(row.get("seed", "")),
                str(row.get("batch_size", "")),
                f"{row['lr']:g}" if "lr" in row else "",
                f"{row['effective_lr']:g}" if "effective_lr" in row else "",
                f"{row.get('epoch', 0)}/{row.get('epochs_budget', '?')}",
                f"{row['val_accuracy']:.3f}" if "val_accuracy" in row else "",
                f"{row['fraction_fixed']:.0%}"
                if row.get("variant", "sn") == "sn" and "fraction_fixed" in row
                else "",
                row.get("status", ""),
            )
        return table

    def _update(self, trial_id: str, **values: Any) -> None:
        with self._lock:
            self._rows.setdefault(trial_id, {}).update(values)
            self._live.update(self._table())

    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None:
        trial = config.get("trial", {})
        variant = trial.get("variant", config.get("variant", "sn"))
        self._update(
            trial_id,
            status="running",
            variant=variant,
            **{k: trial[k] for k in ("seed", "batch_size", "lr", "effective_lr") if k in trial},
        )

    def trial_result(self, trial_id: str, record: dict[str, Any]) -> None:
        keys = ("epoch", "epochs_budget", "val_accuracy", "fraction_fixed")
        self._update(trial_id, **{k: record[k] for k in keys if k in record})

    def trial_finished(self, trial_id: str, status: str, error: str | None = None) -> None:
        self._update(trial_id, status="done" if status == "TERMINATED" else "FAILED")

    def trial_recovered(self, trial_id: str, message: str) -> None:
        self._update(trial_id, status="restarted")

    def trials(self) -> dict[str, dict[str, Any]]:
        return {}
