"""Every zoo architecture can be searched: a real (tiny) search per arch gives a plan, a finalized
checkpoint and a report, also where layers see one element per channel and their pool has no IN.
A model that would get no SwitchNorm layer is refused before Ray starts."""

from __future__ import annotations

import csv
import time

import pytest
import ray
import torch

import sn_core
from service.spec import JobSpec
from worker.data import load_dataset
from worker.job import ModelSpecError, check_searchable, run_job, write_job_report
from worker.models import SN_VARIANT, build_for_data
from worker.recorder import MemoryRecorder

# End to end: real processes (Ray trials, Celery workers); not part of `make test-fast`.
pytestmark = pytest.mark.e2e

IMAGES = {"kind": "synthetic", "num_samples": 40, "image_size": 8}  # 32 train = 2 batches of 16
SEQUENCES = {"kind": "mnist1d", "num_samples": 40}

# Per arch: builder kwargs (narrow, so that one epoch is cheap; default strides, so that 8x8
# inputs reach 1x1 maps where the arch has that many stages) and the dataset.
ARCH_CONFIG: dict[str, tuple[dict, dict]] = {
    "cnn1d": ({}, SEQUENCES),
    "mlp": ({"input_size": 64, "hidden": (32, 16)}, IMAGES),
    "mobilenetv2": ({"width_mult": 0.25}, IMAGES),
    "resnet18": ({"width": 8}, IMAGES),
    "resnet20": ({}, IMAGES),
    "resnet32": ({}, IMAGES),
    "resnet34": ({"width": 8}, IMAGES),
    "resnet50": ({"width": 8}, IMAGES),
    "resnet56": ({}, IMAGES),
    "vgg11": ({"width": 8, "small_input": True}, IMAGES),
    "vgg_small": ({"width": 8}, IMAGES),
}
# The archs whose tiny configuration has layers with one element per channel (1x1 maps, or the
# MLP's features): their plan mixes layers with and without IN in the pool.
SINGLE_ELEMENT_ARCHS = {"mlp", "mobilenetv2", "resnet18", "resnet34", "resnet50", "vgg11"}
FULL_POOL = ["in", "ln", "bn"]


def tiny_spec(arch: str, **search) -> JobSpec:
    kwargs, dataset = ARCH_CONFIG[arch]
    return JobSpec.model_validate(
        {
            "model": {"arch": arch, "kwargs": kwargs},
            "dataset": dataset,
            "training": {"epochs": 1, "batch_size": 16, "lr": 0.05},
            "search": {"stop_when_stable": {"enabled": False}, **search},
            "verify": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_every_arch_has_a_config():
    # The transformers (vit, char_lm) search end to end in tests/worker/test_transformer_jobs.py.
    token_archs = {"vit", "char_lm"}
    assert set(ARCH_CONFIG) | token_archs == set(sn_core.list_models()), (
        "add new architectures to ARCH_CONFIG"
    )


# ------------------------------------------------------------------------------------ refusal


def test_model_with_no_switchnorm_layer_is_refused_before_ray(tmp_path):
    # Every norm of the MLP sees one element per channel; with only IN in the pool none of them
    # has a normalizer to search, so the trials would train plain BatchNorm.
    spec = tiny_spec("mlp", pool=["in"])
    recorder = MemoryRecorder()
    ray_was_up = ray.is_initialized()
    started = time.perf_counter()
    with pytest.raises(ModelSpecError, match="model 'mlp' has no layer to search") as info:
        run_job(spec, data_roots=[], work_dir=tmp_path / "state", recorder=recorder)
    assert "search.pool ['in']" in str(info.value) and "add 'ln', 'bn' or 'gn'" in str(info.value)
    assert time.perf_counter() - started < 30  # no training happened
    assert ray.is_initialized() == ray_was_up  # refused before Ray was started
    assert recorder.trials() == {} and not (tmp_path / "state" / "search").exists()


def test_model_that_does_not_fit_the_data_is_refused_with_its_name():
    spec = tiny_spec("mlp").model_copy(
        update={"model": tiny_spec("mlp").model.model_copy(update={"kwargs": {"input_size": 5}})}
    )
    data = load_dataset(spec.dataset)
    with pytest.raises(ModelSpecError, match=r"model 'mlp' cannot be built .*\[3, 8, 8\]"):
        check_searchable(spec, data)


def test_single_normalizer_layers_still_count_as_searchable():
    spec = tiny_spec("mlp", pool=["in", "bn"])  # every MLP layer is left with BN alone
    assert check_searchable(spec, load_dataset(spec.dataset)) == 2


# ------------------------------------------------------------------------- search every arch


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCH_CONFIG))
def test_every_zoo_arch_searches_to_a_plan(arch, local_ray, tmp_path):
    spec = tiny_spec(arch)
    data = load_dataset(spec.dataset)
    out = tmp_path / "out"
    result = run_job(
        spec,
        data_roots=[],
        work_dir=tmp_path / "state",
        recorder=MemoryRecorder(),
        out_dir=out,
        data=data,
    )
    [trial] = result.outcomes
    assert trial.status == "TERMINATED", trial.error
    plan = result.recommendation.plan
    assert len(plan) >= 1

    # The plan covers every SN layer of the searched model, each with that layer's own pool.
    searched = sn_core.switch_layers(build_for_data(spec, SN_VARIANT, data))
    assert plan.names == [name for name, _ in searched]
    assert [list(entry.pool) for entry in plan] == [list(layer.pool) for _, layer in searched]
    reduced = [entry for entry in plan if list(entry.pool) != FULL_POOL]
    assert bool(reduced) == (arch in SINGLE_ELEMENT_ARCHS)
    assert all(list(entry.pool) == ["ln", "bn"] for entry in reduced)

    # The search checkpoint has no SN layer left and classifies as the trial did.
    model, ckpt_plan, _ = sn_core.load_finalized(result.search_checkpoint)
    assert not sn_core.switch_layers(model) and ckpt_plan.names == plan.names
    with torch.no_grad():
        accuracy = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    assert accuracy == pytest.approx(trial.val_accuracy, abs=1e-6)
    # Not verified: the checkpoint is that SN model finalized with the recommended plan, with
    # the accuracy it has after finalization.
    model, ckpt_plan, _ = sn_core.load_finalized(result.checkpoint)
    assert [(x.mean, x.var) for x in ckpt_plan] == [(x.mean, x.var) for x in plan]
    info = ckpt_plan.metadata["checkpoint"]
    assert info["verified"] is False and info["trial_id"] == trial.trial_id
    with torch.no_grad():
        accuracy = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    assert info["val_accuracy"] == pytest.approx(accuracy, abs=1e-6)

    # The plan also applies to a fresh model (what verification trains).
    fresh = sn_core.apply_plan(sn_core.build_model(arch, **_builder_args(spec, data)), plan)
    assert fresh(data.x_train[:4]).shape == (4, data.num_classes)

    # Reports: a layer without IN has empty IN cells in the ratio history.
    files = write_job_report(result, out)
    with files["ratios_csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert {row["layer"] for row in rows} == set(plan.names)
    for row in rows:
        has_in = "in" in plan.layer(row["layer"]).pool
        assert (row["mean_in"] != "") == has_in and row["mean_bn"] != ""
    summary = result.recommendation.summary
    assert summary["layers"] == len(plan)
    assert sum(summary["mean_counts"].values()) == len(plan)


def _builder_args(spec: JobSpec, data) -> dict:
    return {
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        **spec.model.kwargs,
    }
