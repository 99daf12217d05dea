"""The service weighs a job by ``JobSpec.trial_epochs`` (the quotas and limits; the service may
not import the worker); the worker counts its progress against ``worker.job.epoch_budget``, built
from the grids it really runs. Both must be the same number for every kind of spec."""

from __future__ import annotations

import pytest

from service.spec import JobSpec
from tests.support.api import tiny_spec
from worker.job import epoch_budget, verification_grid
from worker.search import trial_grid


def spec_with(**changes) -> JobSpec:
    spec = tiny_spec()
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return JobSpec.model_validate(spec)


SPECS = {
    "tiny": spec_with(),
    "grid": spec_with(
        search__trials={"seeds": [0, 1, 2], "batch_sizes": [32, 64], "lrs": [0.1, 0.01, 0.3]}
    ),
    "verify off": spec_with(verify={"enabled": False}),
    "verify epochs unset": spec_with(verify={"enabled": True, "baselines": ["bn", "gn"]}),
    "long verify": spec_with(
        training__epochs=3,
        search__trials={"seeds": [4, 5]},
        verify={"enabled": True, "epochs": 7, "baselines": ["bn", "gn", "ln"]},
    ),
}


@pytest.mark.parametrize("name", SPECS)
def test_the_services_trial_epochs_equal_the_workers_epoch_budget(name):
    spec = SPECS[name]
    assert spec.trial_epochs == epoch_budget(spec)
    assert spec.search_trial_count == len(trial_grid(spec))
    assert spec.verification_trial_count == (
        len(verification_grid(spec)) if spec.verify.enabled else 0
    )


def test_the_specs_differ():
    assert len({spec.trial_epochs for spec in SPECS.values()}) == len(SPECS)
