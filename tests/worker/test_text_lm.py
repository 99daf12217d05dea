"""The ``text`` dataset kind and what a language model's trial reports (no Ray)."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import pytest
import torch

from service.metrics import PERPLEXITY
from service.spec import DatasetSpec, JobSpec
from worker.data import DatasetError, load_dataset
from worker.data.text import stdlib_files
from worker.trainable import TrialTraining, evaluate, perplexity, token_loss
from worker.verdict import verdict


def _text_spec(**fields) -> DatasetSpec:
    return DatasetSpec(kind="text", **fields)


def test_the_builtin_corpus_is_the_stdlib_sorted_and_deterministic():
    files = stdlib_files()
    assert files == sorted(files) and len(files) > 50
    assert all(p.parent == Path(sysconfig.get_paths()["stdlib"]) for p in files)
    spec = _text_spec(max_chars=5_000, context_length=16)
    first, again = load_dataset(spec), load_dataset(spec)
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert first.name.startswith("text:python-stdlib-")
    other = load_dataset(_text_spec(max_chars=5_000, context_length=16, seed=1))
    assert not torch.equal(first.x_val, other.x_val)  # the seed draws the split


def test_windows_are_next_character_targets_and_the_split_is_disjoint(tmp_path):
    (tmp_path / "abc.txt").write_text("abcdefgh" * 50, encoding="utf-8")
    data = load_dataset(
        _text_spec(path="abc.txt", max_chars=1_000, context_length=8, val_fraction=0.25),
        data_roots=[tmp_path],
    )
    assert data.class_names == list("abcdefgh") and data.num_classes == 8
    assert data.x_train.dtype == torch.int64 and data.x_train.shape[1:] == (8,)
    assert torch.equal(data.y_train[:, :-1], data.x_train[:, 1:])  # shifted by one
    assert torch.equal(data.y_train, (data.x_train + 1) % 8)
    windows = (400 - 1) // 8
    assert len(data.x_train) + len(data.x_val) == windows
    assert len(data.x_val) == round(windows * 0.25)


def test_text_files_are_confined_to_the_data_roots_and_must_be_utf8(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("x" * 5_000, encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        load_dataset(_text_spec(path="../outside.txt"), data_roots=[root])
    assert caught.value.field == "dataset.path"
    (root / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 500)
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(_text_spec(path="latin1.txt"), data_roots=[root])
    (root / "short.txt").write_text("ab" * 40, encoding="utf-8")
    with pytest.raises(DatasetError, match="window") as caught:
        load_dataset(_text_spec(path="short.txt"), data_roots=[root])
    assert caught.value.field == "dataset.context_length"


def test_token_loss_and_perplexity_are_per_position():
    logits = torch.randn(3, 5, 7)
    targets = torch.randint(0, 7, (3, 5))
    flat = torch.nn.functional.cross_entropy(logits.reshape(15, 7), targets.reshape(15))
    torch.testing.assert_close(token_loss(logits, targets), flat)
    assert perplexity(math.log(4.0)) == pytest.approx(4.0)
    assert perplexity(float("nan")) is None and perplexity(1e6) is None
    model = torch.nn.Identity()
    loss, accuracy = evaluate(model, logits, targets, "cpu", batch_size=2)
    assert loss == pytest.approx(float(flat)) and 0 <= accuracy <= 1


def test_a_language_model_trial_reports_its_validation_perplexity():
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "char_lm", "kwargs": {"dim": 16, "depth": 1, "heads": 2}},
            "dataset": {"kind": "text", "max_chars": 3_000, "context_length": 16},
            "training": {"epochs": 1, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3},
        }
    )
    data = load_dataset(spec.dataset)
    training = TrialTraining(spec, data, variant="sn", seed=0, batch_size=32, lr=3e-3, epochs=1)
    (record,) = list(training.epochs())
    assert record["val_perplexity"] == pytest.approx(math.exp(record["val_loss"]))
    assert 1 < record["val_perplexity"] < data.num_classes * 2  # about uniform after a few steps
    assert all(name.startswith(("blocks.", "norm")) for name in record["ratios"])


def test_the_perplexity_verdict_prefers_the_lower_perplexity():
    # the plan's perplexity is lower on every seed by 5-7%: it wins, in log-perplexity points
    values = {"plan": {0: 3.0, 1: 3.1, 2: 2.9}, "ln": {0: 3.2, 1: 3.3, 2: 3.1}}
    decided = verdict(values, metric=PERPLEXITY)
    assert decided.chosen == "plan" and decided.reason == "plan_better"
    (diff,) = decided.comparisons
    expected = sum(100 * math.log(values["ln"][s] / values["plan"][s]) for s in range(3)) / 3
    assert diff.mean_points == pytest.approx(expected)  # about 6.5% lower perplexity
    assert "log-perplexity points" in decided.text
    assert decided.configs["plan"].mean == pytest.approx(3.0)  # statistics in perplexity
    assert decided.to_dict()["metric"] == "perplexity"
    worse = verdict({"plan": values["ln"], "ln": values["plan"]}, metric=PERPLEXITY)
    assert worse.chosen == "ln" and worse.reason == "plan_worse"
    with pytest.raises(ValueError, match="perplexity 0.5 is not a finite number >= 1"):
        verdict({"ln": {0: 0.5}}, metric=PERPLEXITY)
