"""What a job's trials are judged by: validation accuracy (classifiers) or perplexity (LMs).

Torch-free, so the job spec, the worker's verdict and the API's schemas name the same metric.
``JobSpec.metric`` says which a job uses. The verdict compares configurations on ``score``,
which is higher-is-better for both: accuracy itself, and for perplexity ``-ln(perplexity)``
(minus the mean token loss), so a paired difference of 100 x score is, for accuracy, percentage
points and, for perplexity, 100 x ln(ppl_baseline / ppl_config): about the percentage by which
the configuration's perplexity is lower (log-perplexity points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ACCURACY", "METRICS", "PERPLEXITY", "Metric", "metric_for"]


@dataclass(frozen=True)
class Metric:
    name: str  # "accuracy" | "perplexity"
    key: str  # the epoch record's key (``worker.results.EpochRecord``)
    higher_is_better: bool
    label: str  # how it is named in words
    points: str  # the unit of 100 x a score difference

    def check(self, value: float) -> None:
        """Raise ValueError unless ``value`` is a possible value of this metric."""
        if self.name == "accuracy" and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"accuracy {value!r} is not in [0, 1]")
        if self.name == "perplexity" and not (math.isfinite(value) and value >= 1.0):
            raise ValueError(f"perplexity {value!r} is not a finite number >= 1")

    def score(self, value: float) -> float:
        """Higher-is-better: accuracy as it is, perplexity as ``-ln(perplexity)``."""
        return value if self.higher_is_better else -math.log(value)

    def better(self, a: float, b: float) -> bool:
        """``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b

    @property
    def mode(self) -> str:
        """Ray Tune's mode for ``key``."""
        return "max" if self.higher_is_better else "min"


ACCURACY = Metric("accuracy", "val_accuracy", True, "validation accuracy", "points")
PERPLEXITY = Metric(
    "perplexity", "val_perplexity", False, "validation perplexity", "log-perplexity points"
)
METRICS = {m.name: m for m in (ACCURACY, PERPLEXITY)}


def metric_for(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None
