"""Transformer jobs end to end on a real local Ray: a character LM on the built-in corpus judged
by validation perplexity, and a ViT on 8x8 digits judged by accuracy."""

from __future__ import annotations

import json
import math

import pytest
import ray
import torch

import sn_core
from service.spec import JobSpec
from worker.data import load_dataset
from worker.job import run_job, write_job_report
from worker.outcome import job_result
from worker.recorder import MemoryRecorder
from worker.trainable import evaluate

pytestmark = pytest.mark.e2e

TINY = {"dim": 16, "depth": 1, "heads": 2}
FAST = {"stop_when_stable": {"enabled": False}, "sparsity": {"end": 0.5}}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(payload: dict, tmp_path):
    spec = JobSpec.model_validate(payload)
    out = tmp_path / "out"
    result = run_job(
        spec, data_roots=[tmp_path], work_dir=tmp_path / "state", recorder=MemoryRecorder(),
        out_dir=out,
    )  # fmt: skip
    files = write_job_report(result, out)
    return spec, result, json.loads(files["report_json"].read_text())


def test_char_lm_job_reports_validation_perplexity(tmp_path):
    spec, result, report = _run(
        {
            "model": {"arch": "char_lm", "kwargs": TINY},
            "dataset": {"kind": "text", "max_chars": 6_000, "context_length": 32},
            "training": {"epochs": 2, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3},
            "search": {**FAST, "trials": {"seeds": [0]}},
            "verify": {"epochs": 1},
        },
        tmp_path,
    )
    assert spec.metric == "perplexity" and spec.verify.baselines == ["ln", "rms"]
    search = [o for o in result.outcomes if o.variant == "sn"]
    assert all(o.status == "TERMINATED" for o in search)
    for outcome in search:
        for record in outcome.history:
            assert record["val_perplexity"] == pytest.approx(math.exp(record["val_loss"]))
    verification = report["verification"]
    assert verification["metric_name"] == "perplexity" and not verification["higher_is_better"]
    assert "perplexity" in verification["metric"]
    for row in verification["results"].values():
        assert row["val_perplexity"] > 1 and "val_accuracy" not in row
    decided = verification["verdict"]
    assert decided["metric"] == "perplexity" and decided["chosen"] in ("plan", "ln")
    assert decided["configs"]["ln"]["mean"] == pytest.approx(
        verification["results"]["ln"]["val_perplexity"]
    )
    # Each token layer's torch layer as apply_plan builds it in the char_lm (not the GroupNorm a
    # convolutional network's (ln, ln) becomes).
    described = report["recommendation"]["torch_layers"]
    assert list(described) == list(result.recommendation.plan.names)
    assert set(described.values()) <= {"LayerNorm(16)", "RMSNormWithBias(16)"}, described
    summary = job_result(result.verification, result.recommendation, result.outcomes, metric=_ppl())
    assert summary["accuracy"] is None and summary["perplexity"] > 1
    assert "ppl" in summary["text"]
    # The checkpoint is the chosen configuration, finalized to plain torch layers.
    model, _, model_spec = sn_core.load_finalized(result.checkpoint)
    assert model_spec["arch"] == "char_lm" and model_spec["kwargs"]["context"] == 32
    assert not any(isinstance(m, sn_core.SwitchNorm) for m in model.modules())
    data = load_dataset(spec.dataset)
    loss, _ = evaluate(model, data.x_val, data.y_val, "cpu")
    assert result.outputs["checkpoint"]["val_perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)


def _ppl():
    from service.metrics import PERPLEXITY

    return PERPLEXITY


def test_vit_job_on_digits_reports_accuracy_and_token_ratios(tmp_path):
    spec, result, report = _run(
        {
            "model": {"arch": "vit", "kwargs": {**TINY, "qk_norm": True}},
            "dataset": {"kind": "digits"},
            "training": {"epochs": 1, "batch_size": 128, "optimizer": "adamw", "lr": 3e-3},
            "search": {**FAST, "trials": {"seeds": [0]}},
            "verify": {"epochs": 1},
        },
        tmp_path,
    )
    assert spec.metric == "accuracy"
    (search,) = [o for o in result.outcomes if o.variant == "sn"]
    ratios = search.history[-1]["ratios"]
    assert set(ratios) == {
        "blocks.0.norm1", "blocks.0.attn.q_norm", "blocks.0.attn.k_norm", "blocks.0.norm2", "norm",
    }  # fmt: skip
    assert all(set(r["mean"]) == set(spec.search.pool) for r in ratios.values())
    verification = report["verification"]
    assert "metric_name" not in verification  # a classifier's report reads as before
    assert verification["results"]["ln"]["val_accuracy"] is not None
    assert verification["verdict"]["chosen"] in ("plan", "ln")
    model, _, _ = sn_core.load_finalized(result.search_checkpoint)
    data = load_dataset(spec.dataset)
    with torch.no_grad():
        assert model.eval()(data.x_val[:4]).shape == (4, 10)
