"""worker.recommend and worker.report on synthetic trials built from a real resnet20 SN model."""

from __future__ import annotations

import csv
import json
import math

import matplotlib.image
import pytest
import torch

import sn_core
from sn_core import LayerChoice, NormalizerPlan, plan_torch_layers
from worker.recommend import AGGREGATION_RULE, recommend
from worker.report import CSV_COLUMNS, plot_ratios, write_report
from worker.results import TrialOutcome

FULL: dict[str, dict] = {}  # trial id -> sn_core.switch_ratios of its final model


def _record_ratios(model):
    return {
        name: {key: r[key] for key in ("mean", "var", "fixed")}
        for name, r in sn_core.switch_ratios(model).items()
    }


def make_trial(
    trial_id,
    seed,
    batch_size,
    *,
    fixed=None,
    soft=None,
    default=("bn", "bn"),
    epochs=3,
    acc=0.9,
    status="TERMINATED",
    effective_lr=None,
):
    """Layers by index: ``fixed`` {i: (mean, var)} (else ``default``); ``soft`` {i: (mean ratios
    over in/ln/bn, fixed var)} leaves the mean free with exactly those softmax ratios."""
    fixed, soft = fixed or {}, soft or {}
    model = sn_core.convert_to_switchnorm(
        sn_core.build_model("resnet20", num_classes=10, in_channels=1)
    )
    early = _record_ratios(model)  # uniform ratios, nothing fixed
    for i, (_, layer) in enumerate(sn_core.switch_layers(model)):
        if i in soft:
            with torch.no_grad():
                layer.mean_weight.copy_(torch.tensor(soft[i][0]).log())
            layer.fix(var=soft[i][1])
        else:
            layer.fix(*fixed.get(i, default))
    FULL[trial_id] = sn_core.switch_ratios(model)
    records = [{"epoch": e + 1, "val_accuracy": acc, "ratios": early} for e in range(epochs - 1)]
    records.append({"epoch": epochs, "val_accuracy": acc, "ratios": _record_ratios(model)})
    ok = status == "TERMINATED"
    return TrialOutcome(
        trial_id=trial_id,
        seed=seed,
        batch_size=batch_size,
        lr=0.1,
        effective_lr=effective_lr,
        status=status,
        epochs_used=epochs,
        epochs_budget=3,
        val_accuracy=acc if ok else None,
        history=records,
        plan=sn_core.plan_from_model(model).to_dict() if ok else None,
        error=None if ok else "RuntimeError: boom",
    )


@pytest.fixture(scope="module")
def trials():
    a = make_trial(
        "A",
        0,
        32,
        fixed={0: ("in", "bn"), 1: ("ln", "bn"), 2: ("in", "bn"), 3: ("bn", "ln")},
        acc=0.90,
    )
    b = make_trial(
        "B",
        1,
        32,
        fixed={0: ("in", "bn"), 2: ("ln", "bn"), 3: ("bn", "ln")},
        soft={1: ([0.2, 0.3, 0.5], "bn")},
        acc=0.95,
    )
    c = make_trial(
        "C", 2, 32, fixed={0: ("ln", "bn")}, soft={1: ([0.4, 0.35, 0.25], "bn")}, epochs=2, acc=0.95
    )
    # Batch 8 of a sweep whose lr 0.1 is for batch 32, linearly scaled.
    d = make_trial("D", 0, 8, default=("ln", "ln"), acc=0.99, effective_lr=0.025)
    e = make_trial("E", 3, 32, epochs=1, status="ERROR")
    return [a, b, c, d, e]


@pytest.fixture(scope="module")
def rec(trials):
    return recommend(trials, target_batch_size=32)


def test_aggregated_choices_confidence_and_indifference(trials, rec):
    """Choices from the trials' averaged ratios (worker.aggregate); confidence = agreement x
    aggregated margin (the smaller side of each); undecided layers take the cheapest pair."""
    layers = rec.plan.layers
    assert len(layers) == 21 and rec.plan.names == [n for n in FULL["A"]]
    assert rec.trial_ids == ["A", "B", "C"]
    names = rec.plan.names
    metadata = dict(rec.plan.metadata)
    assert metadata.pop("rule") == AGGREGATION_RULE
    assert metadata == {
        "target_batch_size": 32,
        "trials": 3,
        "seeds": [0, 1, 2],
        "indifferent_layers": [names[1], names[2]],
    }
    # 2 of 3 seeds agree on the mean (in, in, ln), all on the variance; margin 2/3 - 1/3
    assert layers[0].choice == "in/bn" and layers[0].confidence == pytest.approx(2 / 3 * 1 / 3)
    assert layers[0].mean_ratios == pytest.approx({"in": 2 / 3, "ln": 1 / 3, "bn": 0.0})
    # three-way split of the trials' argmaxes, but the averaged ratios separate ln (0.55) from
    # bn (0.25) by more than the margin threshold: ln, indifferent by agreement (1/3)
    assert layers[1].choice == "ln/bn"
    assert layers[1].mean_ratios == pytest.approx({"in": 0.2, "ln": 0.55, "bn": 0.25})
    assert layers[1].confidence == pytest.approx(1 / 3 * 0.30)
    # three-way split with equal averages: undecided, the cheapest pair wins (bn/bn folds)
    assert layers[2].choice == "bn/bn" and layers[2].confidence == pytest.approx(0.0)
    # mean and variance decided separately: a mixed pair (var ln 2/3 against bn 1/3)
    assert layers[3].choice == "bn/ln" and layers[3].confidence == pytest.approx(2 / 3 * 1 / 3)
    assert all(x.choice == "bn/bn" and x.confidence == 1.0 for x in layers[4:])
    aggregation = rec.summary["aggregation"]
    assert aggregation["indifferent_layers"] == [names[1], names[2]]
    assert aggregation["rule"] == AGGREGATION_RULE and aggregation["summary"]
    assert aggregation["layers"][names[2]]["indifferent"] is True
    assert aggregation["layers"][names[0]]["indifferent"] is False


def test_best_trial_and_summary(rec):
    assert rec.best_trial == "C"  # 0.95 like B, in fewer epochs; D (0.99) is another batch size
    s = rec.summary
    assert s["best_trial"]["trial_id"] == "C"
    assert s["choices"] == {"bn/bn": 18, "bn/ln": 1, "in/bn": 1, "ln/bn": 1}
    assert s["mean_counts"] == {"in": 1, "ln": 1, "bn": 19}
    assert s["var_counts"] == {"in": 0, "ln": 1, "bn": 20}
    depth = s["by_depth"]
    assert [x["layer"] for x in depth] == rec.plan.names
    assert depth[0]["depth_fraction"] == 0.0 and depth[-1]["depth_fraction"] == 1.0
    fractions = [x["depth_fraction"] for x in depth]
    assert fractions == sorted(fractions) and (depth[3]["mean"], depth[3]["var"]) == ("bn", "ln")
    div = s["divergence"]
    eps = 1e-8
    expected = sum(
        (p - q) * (math.log(p) - math.log(q)) for p, q in ((2 / 3, eps), (1 / 3, eps), (eps, 1.0))
    )
    assert div["bn1"] == pytest.approx(expected)
    assert all(div[name] == pytest.approx(0.0, abs=1e-9) for name in rec.plan.names[4:])
    assert s["max_divergence"] == max(div.values())
    assert s["mean_divergence"] == pytest.approx(sum(div.values()) / 21)
    json.dumps(rec.to_dict(), allow_nan=False)


def test_by_batch_size_moves_with_batch_size(rec):
    by = rec.by_batch_size
    assert sorted(by) == [8, 32] and by[8]["trial_ids"] == ["D"] and by[32]["trials"] == 3
    assert by[8]["mean_ratio"] == pytest.approx({"in": 0.0, "ln": 1.0, "bn": 0.0})
    assert by[32]["mean_ratio"]["bn"] > 0.8 > by[8]["mean_ratio"]["bn"]
    assert by[32]["var_ratio"]["bn"] > by[8]["var_ratio"]["bn"]
    assert set(by[8]["choices"].values()) == {"ln/ln"}
    assert by[32]["choices"] == {x.name: x.choice for x in rec.plan}
    assert list(rec.to_dict()["by_batch_size"]) == ["8", "32"]


def test_by_batch_size_has_each_layers_final_ratios_averaged_over_its_trials(trials, rec):
    """The heatmap's cells: per batch size and layer, the trials' final-epoch ratios averaged."""
    by = rec.by_batch_size
    names = rec.plan.names
    for bs in (8, 32):
        assert list(by[bs]["layers"]) == names  # network order
    # Batch 8 is trial D alone (every layer ln/ln): its final ratios, one-hot.
    assert by[8]["layers"][names[0]]["mean"] == pytest.approx({"in": 0.0, "ln": 1.0, "bn": 0.0})
    assert by[8]["layers"][names[5]]["var"] == pytest.approx({"in": 0.0, "ln": 1.0, "bn": 0.0})
    # Batch 32: A, B and C averaged (the failed E left out); layer 1's mean is A's one-hot ln,
    # B's soft (0.2, 0.3, 0.5) and C's soft (0.4, 0.35, 0.25).
    expected = {
        k: (a + b + c) / 3
        for k, a, b, c in zip(
            ["in", "ln", "bn"], (0, 1, 0), (0.2, 0.3, 0.5), (0.4, 0.35, 0.25), strict=True
        )
    }
    assert by[32]["layers"][names[1]]["mean"] == pytest.approx(expected)
    assert by[32]["layers"][names[1]]["mean"] == pytest.approx(rec.plan.layers[1].mean_ratios)
    # The SN paper's trend, per layer: BN's share is larger at the larger batch everywhere.
    for name in names:
        assert by[32]["layers"][name]["mean"]["bn"] >= by[8]["layers"][name]["mean"]["bn"]
    json.dumps(rec.to_dict()["by_batch_size"], allow_nan=False)


def test_single_trial_matches_sn_core_and_errors(trials):
    one = recommend(trials, target_batch_size=8)
    assert one.trial_ids == ["D"] and one.best_trial == "D"
    for name, d in one.summary["divergence"].items():
        assert d == pytest.approx(FULL["D"][name]["divergence"])
    only_32 = recommend(trials[:3], target_batch_size=32)
    assert (
        only_32.by_batch_size == {} and only_32.plan == recommend(trials, target_batch_size=32).plan
    )
    with pytest.raises(ValueError, match="batch size 16"):
        recommend(trials, target_batch_size=16)
    with pytest.raises(ValueError, match="no successful trial"):
        recommend([trials[4]], target_batch_size=32)  # only the failed one
    other = make_trial("F", 5, 32)
    other.plan = {**other.plan, "layers": other.plan["layers"][1:]}
    with pytest.raises(ValueError, match="different norm layers"):
        recommend([trials[0], other], target_batch_size=32)


def _check_png(path, min_width):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] >= min_width
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_write_report(tmp_path, trials, rec):
    spec = {"model": {"arch": "resnet20"}, "search": {"seeds": [0, 1, 2]}}
    paths = write_report(
        tmp_path / "out",
        spec=spec,
        recommendation=rec,
        outcomes=trials,
        verification={"max_abs_diff": 0.0},
        extra={"duration_s": 1.5},
    )
    assert set(paths) == {
        "plan_json",
        "plan_yaml",
        "search_plan_json",
        "report_json",
        "ratios_csv",
        "ratios_png",
    }
    # Without a plan of the verdict's configuration, plan.json is the search's plan.
    assert NormalizerPlan.load(paths["plan_json"]) == rec.plan
    assert NormalizerPlan.load(paths["plan_yaml"]) == rec.plan
    assert NormalizerPlan.load(paths["search_plan_json"]) == rec.plan

    report = json.loads(paths["report_json"].read_text())
    assert set(report) == {"spec", "recommendation", "trials", "verification", "outputs", "extra"}
    assert report["outputs"] == {"plan": rec.plan.metadata}
    assert report["spec"] == spec and report["extra"] == {"duration_s": 1.5}
    assert report["recommendation"]["best_trial"] == "C"
    # Per planned layer, the torch layer sn_core builds for it (the UI shows this, not a rule).
    assert report["recommendation"]["torch_layers"] == plan_torch_layers(rec.plan)
    assert list(report["recommendation"]["torch_layers"]) == list(rec.plan.names)
    by_id = {t["trial_id"]: t for t in report["trials"]}
    assert list(by_id) == ["A", "B", "C", "D", "E"]
    assert by_id["E"]["status"] == "ERROR" and by_id["E"]["error"] == "RuntimeError: boom"
    assert by_id["C"]["epochs_used"] == 2 and by_id["C"]["val_accuracy"] == 0.95
    assert by_id["A"]["used"] and not by_id["D"]["used"]
    # Each trial's identity lr and the rate it trained with (unscaled where none is recorded).
    assert (by_id["D"]["lr"], by_id["D"]["effective_lr"]) == (0.1, 0.025)
    assert (by_id["A"]["lr"], by_id["A"]["effective_lr"]) == (0.1, 0.1)

    with paths["ratios_csv"].open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == CSV_COLUMNS
    assert len(rows) == sum(len(t.history) for t in trials) * 21 == 12 * 21
    assert all(r["mean_gn"] == "" and r["var_gn"] == "" for r in rows)
    last_c = [r for r in rows if r["trial_id"] == "C" and r["epoch"] == "2"]
    assert [r["layer"] for r in last_c] == rec.plan.names
    assert float(last_c[0]["mean_ln"]) == 1.0 and last_c[0]["mean_fixed"] == "1"
    assert last_c[1]["mean_fixed"] == "0" and float(last_c[1]["mean_in"]) == pytest.approx(0.4)
    assert {r["batch_size"] for r in rows if r["trial_id"] == "D"} == {"8"}

    _check_png(paths["ratios_png"], min_width=800)


def test_write_report_puts_the_verdicts_plan_in_plan_json(tmp_path, trials, rec):
    """plan.json follows the verdict; search_plan.json and the report keep the search's plan."""
    uniform = NormalizerPlan(
        tuple(LayerChoice(x.name, "bn", "bn", x.num_features, pool=("bn",)) for x in rec.plan),
        {"configuration": "bn", "verified": True},
    )
    outputs = {"plan": uniform.metadata, "checkpoint": {"configuration": "bn", "seed": 1}}
    paths = write_report(
        tmp_path,
        spec={},
        recommendation=rec,
        outcomes=trials,
        verification=None,
        plan=uniform,
        outputs=outputs,
    )
    assert NormalizerPlan.load(paths["plan_json"]) == NormalizerPlan.load(paths["plan_yaml"])
    assert NormalizerPlan.load(paths["plan_json"]) == uniform
    assert NormalizerPlan.load(paths["search_plan_json"]) == rec.plan
    report = json.loads(paths["report_json"].read_text())
    assert report["outputs"] == outputs
    assert report["recommendation"]["plan"] == rec.plan.to_dict()


def test_plot_ratios_many_layers_with_gn(tmp_path):
    pool = ("in", "ln", "bn", "gn")
    layers = []
    for i in range(60):
        w = torch.softmax(torch.tensor([i / 20, 1.0, 3 - i / 20, 0.5]), 0).tolist()
        ratios = dict(zip(pool, w, strict=True))
        layers.append((f"stage{i // 20}.block{i % 20}.downsample.norm", ratios, ratios))
    path = plot_ratios(layers, tmp_path / "many.png", title="60 layers")
    _check_png(path, min_width=1500)


def _members_trial(trial_id, seed, outputs):
    """A cnn1d SN trial over pool (ln, rms), one-hot rms/rms, with synthetic output ratios per
    layer index (``outputs``: {i: {"norm": r, "dyt": r, "none": r}}) in its last record."""
    model = sn_core.convert_to_switchnorm(
        sn_core.build_model("cnn1d", num_classes=10, in_channels=1), pool=("ln", "rms")
    )
    for _, layer in sn_core.switch_layers(model):
        layer.fix("rms", "rms")
    ratios = _record_ratios(model)
    for i, name in enumerate(ratios):
        if i in outputs:
            ratios[name]["output"] = outputs[i]
    return TrialOutcome(
        trial_id=trial_id, seed=seed, batch_size=16, lr=0.1, effective_lr=None,
        status="TERMINATED", epochs_used=1, epochs_budget=1, val_accuracy=0.5,
        history=[{"epoch": 1, "val_accuracy": 0.5, "ratios": ratios}],
        plan=sn_core.plan_from_model(model).to_dict(), error=None,
    )  # fmt: skip


def test_output_ratios_give_each_layer_its_output_choice_and_torch_layer():
    """rms statistics are recommended like the others; output ratios are averaged over the
    trials: a clear winner is the layer's output, an undecided layer keeps "norm"; a point-wise
    choice becomes DynamicTanh / Identity in the report's torch layers."""
    from worker.recommend import torch_layers

    dyt = {"norm": 0.1, "dyt": 0.8, "none": 0.1}
    split = {"norm": 0.35, "dyt": 0.3, "none": 0.35}
    trials = [_members_trial(t, t, {0: dyt, 1: split, 2: {"norm": 0.9, "dyt": 0.05, "none": 0.05}})
              for t in (0, 1)]  # fmt: skip
    names = list(trials[0].final_ratios)
    rec = recommend(trials, target_batch_size=16)
    assert rec.summary["outputs"] == {names[0]: "dyt", names[1]: "norm", names[2]: "norm"}
    assert rec.plan.layers[0].output == "dyt" and rec.plan.layers[0].dyt_alpha == 0.5
    assert names[1] in rec.plan.metadata["indifferent_layers"]
    assert {layer.choice for layer in rec.plan} == {"dyt", "rms/rms"}  # choice: the output
    assert rec.summary["mean_counts"] == {"ln": 0, "rms": len(names)}
    described = torch_layers(rec.plan, {names[0]: "dyt", names[2]: "none"})
    width = rec.plan.layers[0].num_features
    assert described[names[0]] == f"DynamicTanh({width})" and described[names[2]] == "Identity"
    assert described[names[1]] == plan_torch_layers(rec.plan)[names[1]]


def test_ratios_csv_has_rms_and_output_columns(tmp_path):
    from worker.report import write_ratios_csv

    trial = _members_trial("M", 0, {0: {"norm": 0.25, "dyt": 0.5, "none": 0.25}})
    with write_ratios_csv(tmp_path / "r.csv", [trial]).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["mean_rms"]) == 1.0 and rows[0]["mean_in"] == ""
    assert (rows[0]["out_dyt"], rows[1]["out_dyt"]) == ("0.5", "")
