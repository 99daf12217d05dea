"""worker.aggregate: aggregated ratios, margin, agreement and the cost-aware tie rule."""

from __future__ import annotations

import json

import pytest
import torch

import sn_core
from worker.aggregate import (
    AGREEMENT_MIN,
    MARGIN_MIN,
    aggregate,
    pair_cost,
    plan_agreement,
    plan_choices,
    trial_ratios,
)
from worker.recommend import recommend
from worker.results import TrialOutcome

POOL = ("in", "ln", "bn", "gn")


def r(**p: float) -> dict[str, float]:
    """Ratios over the full pool, zeros where not given."""
    return {k: float(p.get(k, 0.0)) for k in POOL}


def layer(mean: dict[str, float], var: dict[str, float] | None = None) -> dict:
    return {"mean": mean, "var": var if var is not None else mean, "fixed": {}}


def test_ratios_are_averaged_not_voted():
    # two trials lean weakly to IN, one strongly to LN: the votes say IN, the evidence says LN
    trials = [
        {"a": layer(r(**{"in": 0.51, "ln": 0.49}), r(bn=1))},
        {"a": layer(r(**{"in": 0.51, "ln": 0.49}), r(bn=1))},
        {"a": layer(r(**{"in": 0.02, "ln": 0.98}), r(bn=1))},
    ]
    agg = aggregate(trials)
    a = agg.layers[0]
    assert a.mean_side.ratios == pytest.approx(r(**{"in": 1.04 / 3, "ln": 1.96 / 3}))
    assert a.mean_side.argmax == "ln" and a.choice == ("ln", "bn")
    assert a.mean_side.margin == pytest.approx(0.92 / 3)
    assert a.mean_side.agreement == pytest.approx(1 / 3)  # only one trial's own argmax is LN
    assert a.mean_side.indifferent and not a.var_side.indifferent
    assert a.mean_side.tied == ("ln",)  # IN is 0.31 behind: not within the margin threshold
    assert a.var_side.agreement == 1.0 and a.var_side.margin == 1.0
    assert a.indifferent and agg.indifferent_layers == ["a"]
    assert "mean 1 of 3 trials agree" in a.note


def test_in_half_bn_half_becomes_bn_not_in():
    agg = aggregate([{"a": layer(r(**{"in": 0.5, "bn": 0.5}))}])
    a = agg.layers[0]
    assert a.mean_side.tied == ("bn", "in") and a.var_side.tied == ("bn", "in")
    assert a.choice == ("bn", "bn") and a.indifferent
    assert a.note.startswith("1 trial;") and "BN folds into the convolution" in a.note


def test_the_cost_rule_considers_the_mean_var_pair():
    # mean tied IN/BN, var clearly IN: one standard InstanceNorm beats the mixed bn/in pair
    a = aggregate([{"a": layer(r(**{"in": 0.48, "bn": 0.52}), r(**{"in": 0.9, "bn": 0.1}))}])
    assert a.layers[0].choice == ("in", "in")
    # mean clearly BN, var tied LN/BN: bn/bn
    b = aggregate([{"a": layer(r(bn=0.9, ln=0.1), r(ln=0.47, bn=0.43, gn=0.1))}])
    assert b.layers[0].var_side.tied == ("bn", "ln") and b.layers[0].choice == ("bn", "bn")
    # mean clearly BN, var tied LN/GN (no BN in reach): a mixed pair, the higher ratio (LN)
    c = aggregate([{"a": layer(r(bn=1), r(ln=0.5, gn=0.45, bn=0.05))}])
    assert c.layers[0].choice == ("bn", "ln") and "mixed pair" in c.layers[0].note
    # equal cost and equal ratios: KIND_ORDER (gn before ln before in)
    d = aggregate([{"a": layer(r(ln=0.5, gn=0.5))}])
    assert d.layers[0].choice == ("gn", "gn")
    assert [pair_cost(*p) for p in [("bn", "bn"), ("ln", "ln"), ("bn", "ln")]] == [0, 1, 2]


def test_decided_layers_keep_their_argmax_even_when_it_costs_more():
    agg = aggregate([{"a": layer(r(**{"in": 0.7, "bn": 0.3}), r(ln=0.8, bn=0.2))}] * 2)
    a = agg.layers[0]
    assert not a.indifferent and a.choice == ("in", "ln")
    assert a.note == "all 2 trials agree; margin 0.40"


def test_thresholds():
    just_decided = {"a": layer(r(bn=0.55, ln=0.45))}  # margin 0.10 == MARGIN_MIN: decided
    just_tied = {"a": layer(r(ln=0.545, bn=0.455))}  # margin 0.09 < MARGIN_MIN: indifferent
    assert MARGIN_MIN == 0.1 and AGREEMENT_MIN == 2 / 3
    assert not aggregate([just_decided]).layers[0].indifferent
    tied = aggregate([just_tied]).layers[0]
    assert tied.indifferent and tied.choice == ("bn", "bn")
    assert aggregate([just_tied], margin_min=0.05).layers[0].choice == ("ln", "ln")
    ln, bn = {"a": layer(r(ln=1))}, {"a": layer(r(bn=1))}
    two_of_three = aggregate([ln, ln, bn]).layers[0]  # agreement 2/3: enough
    assert not two_of_three.indifferent and two_of_three.choice == ("ln", "ln")
    assert two_of_three.agreement == pytest.approx(2 / 3)
    split = aggregate([ln, bn]).layers[0]  # 1:1, margin 0: tied, BN is cheaper
    assert split.indifferent and split.agreement == 0.5 and split.choice == ("bn", "bn")
    # one trial in three disagreeing is indifferent under a stricter agreement threshold
    assert aggregate([ln, ln, bn], agreement_min=0.75).layers[0].indifferent


def test_single_trial_says_one_trial():
    agg = aggregate([{"a": layer(r(bn=1)), "b": layer(r(ln=0.9, bn=0.1))}])
    assert agg.trials == 1 and all(x.agreement == 1.0 for x in agg.layers)
    assert all(x.note.startswith("1 trial;") for x in agg.layers)
    assert agg.summary.startswith("1 trial (agreement not measured)")
    assert "agree" not in agg.layers[0].note
    d = json.loads(json.dumps(agg.to_dict()))
    assert d["trials"] == 1 and [x["name"] for x in d["layers"]] == ["a", "b"]


def test_network_order_and_bad_input():
    agg = aggregate([{"z": layer(r(bn=1)), "a": layer(r(ln=1))}])
    assert [x.name for x in agg.layers] == ["z", "a"] and list(agg.choices()) == ["z", "a"]
    with pytest.raises(ValueError, match="no trial"):
        aggregate([])
    with pytest.raises(ValueError, match="different norm layers"):
        aggregate([{"a": layer(r(bn=1))}, {"b": layer(r(bn=1))}])
    with pytest.raises(ValueError, match="pools"):
        aggregate([{"a": layer(r(bn=1))}, {"a": layer({"bn": 1.0, "in": 0.0})}])
    with pytest.raises(ValueError, match="no var ratios"):
        aggregate([{"a": {"mean": r(bn=1)}}])
    with pytest.raises(ValueError, match="ratio bn=nan"):
        aggregate([{"a": layer(r(bn=float("nan")))}])


def test_plan_agreement():
    a = {"l1": ("bn", "bn"), "l2": ("in", "ln"), "l3": ("ln", "ln"), "l4": ("bn", "bn")}
    b = {"l1": ("bn", "bn"), "l2": ("in", "bn"), "l3": ("ln", "ln"), "l4": ("gn", "bn")}
    assert plan_agreement(a, b) == 0.5
    assert plan_agreement(a, a) == 1.0
    agg = aggregate([{k: layer(r(**{m: 1}), r(**{v: 1})) for k, (m, v) in a.items()}])
    assert plan_agreement(agg, b) == 0.5
    with pytest.raises(ValueError, match="different layers"):
        plan_agreement(a, {"l1": ("bn", "bn")})


def _sn_trial(weights: dict[int, tuple[list[float], list[float]]]) -> TrialOutcome:
    """A real resnet20 SN model: layer i gets mean/var ratios ``weights[i]``, others fix bn/bn."""
    model = sn_core.convert_to_switchnorm(
        sn_core.build_model("resnet20", num_classes=10, in_channels=1)
    )
    for i, (_, sn) in enumerate(sn_core.switch_layers(model)):
        if i in weights:
            with torch.no_grad():
                sn.mean_weight.copy_(torch.tensor(weights[i][0]).log())
                sn.var_weight.copy_(torch.tensor(weights[i][1]).log())
        else:
            sn.fix("bn", "bn")
    ratios = {
        name: {key: x[key] for key in ("mean", "var", "fixed")}
        for name, x in sn_core.switch_ratios(model).items()
    }
    return TrialOutcome(
        trial_id="t0",
        seed=0,
        batch_size=32,
        lr=0.1,
        status="TERMINATED",
        epochs_used=1,
        epochs_budget=1,
        val_accuracy=0.9,
        history=[{"epoch": 1, "ratios": ratios}],
        plan=sn_core.plan_from_model(model).to_dict(),
    )


def test_real_trial_in_half_bn_half_becomes_bn_bn():
    trial = _sn_trial({0: ([0.5, 1e-6, 0.5], [0.5, 1e-6, 0.5]), 1: ([0.1, 0.8, 0.1], [1, 1, 1])})
    pool = tuple(trial.plan["layers"][0]["pool"])
    assert pool == ("in", "ln", "bn")
    ratios = trial_ratios(trial)
    assert list(ratios) == [entry["name"] for entry in trial.plan["layers"]]
    agg = aggregate([ratios])
    first, second = agg.layers[0], agg.layers[1]
    today = recommend([trial], target_batch_size=32).plan.layers[0]
    # recommend() uses the aggregation: the tie no longer falls to pool order (in/in)
    assert (today.mean, today.var) == ("bn", "bn")
    assert first.choice == ("bn", "bn") and first.indifferent
    # var uniform, all three tied: ln/ln (one GroupNorm(1, C)) beats the mixed ln/bn
    assert second.var_side.tied == ("bn", "ln", "in") and second.choice == ("ln", "ln")
    assert all(x.choice == ("bn", "bn") for x in agg.layers[2:])
    assert plan_agreement(agg, plan_choices(trial.plan)) == pytest.approx(
        (len(agg.layers) - 2) / len(agg.layers)
    )
