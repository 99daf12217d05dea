"""Does a trial fit the Ray cluster? The per-trial resources of a spec against the nodes.

Ray places a trial on one node, so ``resources.cpus_per_trial`` and ``gpus_per_trial`` must fit
together on a single alive node: the sum over nodes says nothing. A spec no node can ever take
would wait forever (Ray keeps the trial pending, the heartbeat keeps the reaper away), so it is
refused instead, twice:

- the worker, once it has joined Ray and before the experiment starts, reads the alive nodes
  (``worker.search.cluster_capacity``) and fails the job at once with ``ClusterFitError``;
- the API, at ``POST /jobs`` and ``/spec/validate``, refuses it with a 422 naming the field when it
  knows the cluster's capacity: the worker publishes the shapes of the alive nodes to
  ``CAPACITY_FILE`` in the runs directory (which API and workers share: the API serves the
  artifacts from it) when it joins Ray and every ``CAPACITY_REFRESH_S`` after. A file older than
  ``Settings.cluster_capacity_max_age_s`` (no worker connected lately) or missing is "unknown":
  the API accepts and the worker's check decides.

``Settings.check_cluster_fit`` turns both checks off, for a cluster whose autoscaler adds nodes
on demand (nodes that do not exist yet cannot be read). This module has no Ray in it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.errors import InvalidInput
from service.spec import ResourcesSpec

log = logging.getLogger(__name__)

CAPACITY_FILE = "cluster-capacity.json"
CAPACITY_REFRESH_S = 60.0
# Distinct node shapes kept in the file: a large cluster has few shapes, and the fit check only
# needs the shapes, not every node.
MAX_SHAPES = 64


@dataclass(frozen=True, order=True)
class NodeShape:
    """What one alive Ray node offers trials: its CPUs and GPUs (Ray's resource totals)."""

    cpus: float
    gpus: float


@dataclass(frozen=True)
class ClusterCapacity:
    """The distinct shapes of the cluster's alive nodes, and when they were read."""

    nodes: tuple[NodeShape, ...]
    observed_at: datetime

    @classmethod
    def of(cls, shapes: Iterable[NodeShape], observed_at: datetime | None = None):
        distinct = sorted(set(shapes), reverse=True)[:MAX_SHAPES]
        return cls(tuple(distinct), observed_at or datetime.now(UTC))

    @property
    def max_cpus(self) -> float:
        return max((n.cpus for n in self.nodes), default=0.0)

    @property
    def max_gpus(self) -> float:
        return max((n.gpus for n in self.nodes), default=0.0)

    def to_json(self) -> dict:
        return {
            "observed_at": self.observed_at.isoformat(),
            "nodes": [{"cpus": n.cpus, "gpus": n.gpus} for n in self.nodes],
        }

    @classmethod
    def from_json(cls, data: dict) -> ClusterCapacity:
        nodes = [NodeShape(float(n["cpus"]), float(n["gpus"])) for n in data["nodes"]]
        observed = datetime.fromisoformat(data["observed_at"])
        if observed.tzinfo is None:
            observed = observed.replace(tzinfo=UTC)
        return cls.of(nodes, observed)


class ClusterFitError(InvalidInput):
    """A trial of the spec fits on no node of the Ray cluster: 422 at submit, and the job's
    failure reason in the worker."""

    code = "does_not_fit_cluster"

    def __str__(self) -> str:  # the job's error in the worker names the field too
        return f"{self.field}: {self.message}" if self.field else self.message


def _amount(value: float, unit: str) -> str:
    number = f"{value:g}"
    return f"{number} {unit}" if value == 1 else f"{number} {unit}s"


def effective_gpus(resources: ResourcesSpec, capacity: ClusterCapacity) -> float:
    """``gpus_per_trial``, or its default: one GPU when the cluster has any (as the worker)."""
    if resources.gpus_per_trial is not None:
        return resources.gpus_per_trial
    return 1.0 if any(n.gpus > 0 for n in capacity.nodes) else 0.0


def fit_problem(resources: ResourcesSpec, capacity: ClusterCapacity) -> ClusterFitError | None:
    """Why a trial asking for ``resources`` fits on no node of ``capacity`` (None: it fits on
    at least one). The message names the field and what the largest nodes offer."""
    cpus = resources.cpus_per_trial
    gpus = effective_gpus(resources, capacity)
    if any(n.cpus >= cpus and n.gpus >= gpus for n in capacity.nodes):
        return None
    shapes = ", ".join(
        f"{_amount(n.cpus, 'CPU')} + {_amount(n.gpus, 'GPU')}" for n in capacity.nodes
    )
    advice = "ask for less, or add a node that large to the Ray cluster"
    if not capacity.nodes:
        field = "resources"
        what = "no trial can be placed: the Ray cluster has no alive node"
    elif gpus > capacity.max_gpus:
        field = "resources.gpus_per_trial"
        what = (
            f"{_amount(gpus, 'GPU')} per trial, but no node of the Ray cluster has more than "
            f"{_amount(capacity.max_gpus, 'GPU')}"
        )
    elif cpus > capacity.max_cpus:
        field = "resources.cpus_per_trial"
        what = (
            f"{_amount(cpus, 'CPU')} per trial, but no node of the Ray cluster has more than "
            f"{_amount(capacity.max_cpus, 'CPU')}"
        )
    else:
        field = "resources"
        what = (
            f"{_amount(cpus, 'CPU')} and {_amount(gpus, 'GPU')} per trial, but no node of the "
            "Ray cluster has both"
        )
    return ClusterFitError(f"{what} (alive node shapes: {shapes or 'none'}); {advice}", field=field)


def check_fit(resources: ResourcesSpec, capacity: ClusterCapacity) -> None:
    """Raise ``ClusterFitError`` when a trial asking for ``resources`` fits on no node."""
    problem = fit_problem(resources, capacity)
    if problem is not None:
        raise problem


# -- the published capacity ------------------------------------------------------------------


def capacity_path(runs_dir: Path) -> Path:
    return Path(runs_dir).expanduser() / CAPACITY_FILE


def publish_capacity(runs_dir: Path, capacity: ClusterCapacity) -> None:
    """Write ``capacity`` to the runs directory atomically (a reader sees the old file or the
    new one, never half of one)."""
    path = capacity_path(runs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{CAPACITY_FILE}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(capacity.to_json(), handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def published_capacity(
    runs_dir: Path, *, max_age_s: float, now: datetime | None = None
) -> ClusterCapacity | None:
    """The capacity a worker published, or None when it is unknown: no file, an unreadable
    one, or one older than ``max_age_s`` (no worker has been connected to Ray lately)."""
    path = capacity_path(runs_dir)
    try:
        capacity = ClusterCapacity.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("cluster capacity %s unreadable (%s); treated as unknown", path, error)
        return None
    age = ((now or datetime.now(UTC)) - capacity.observed_at).total_seconds()
    if age > max_age_s:
        return None
    return capacity
