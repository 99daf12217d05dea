"""worker.verdict: paired statistics of the verification and the decision rule."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from worker.verdict import COST_ORDER, REASONS, paired_difference, verdict

PLAN_HI = {0: 0.92, 1: 0.93, 2: 0.945}
FLAT = {0: 0.90, 1: 0.90, 2: 0.90}


def test_paired_interval_matches_a_hand_computation_and_scipy():
    d = paired_difference(PLAN_HI, FLAT)
    diffs = np.array([2.0, 3.0, 4.5])  # points, by hand
    half = 4.302652729911275 * diffs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2 dof) from a table
    assert d.seeds == [0, 1, 2] and d.n == 3
    assert d.mean_points == pytest.approx(diffs.mean())
    assert d.ci_low_points == pytest.approx(diffs.mean() - half)
    assert d.ci_high_points == pytest.approx(diffs.mean() + half)
    ci = stats.ttest_rel(list(PLAN_HI.values()), list(FLAT.values())).confidence_interval(0.95)
    assert (d.ci_low_points, d.ci_high_points) == pytest.approx((100 * ci.low, 100 * ci.high))
    assert d.better and not d.worse
    wide = paired_difference(PLAN_HI, FLAT, confidence=0.99)
    assert wide.ci_low_points < d.ci_low_points < d.ci_high_points < wide.ci_high_points


def test_per_configuration_statistics_use_the_sample_std():
    v = verdict({"plan": PLAN_HI, "bn": FLAT, "sn": {0: 0.8}})
    plan = v.configs["plan"]
    assert plan.n == 3 and plan.per_seed == PLAN_HI
    assert plan.mean == pytest.approx(np.mean(list(PLAN_HI.values())))
    assert plan.std == pytest.approx(np.std(list(PLAN_HI.values()), ddof=1))
    assert v.configs["bn"].std == 0.0
    assert v.configs["sn"].n == 1 and v.configs["sn"].std is None


def test_plan_clearly_better():
    plan = {0: 0.912, 1: 0.905, 2: 0.925}
    bn = {0: 0.50, 1: 0.49, 2: 0.52}
    gn = {0: 0.60, 1: 0.58, 2: 0.61}
    v = verdict({"plan": plan, "bn": bn, "gn": gn, "sn": {0: 0.99, 1: 0.99, 2: 0.99}})
    assert (v.chosen, v.reason) == ("plan", "plan_better")
    d = paired_difference(plan, gn, baseline="gn")  # all-GN is the best uniform baseline
    assert v.text == (
        f"use the per-layer plan: +{d.mean_points:.1f} points over all-GN, the best uniform "
        f"baseline (95% CI {d.ci_low_points:.1f} to {d.ci_high_points:.1f}; 3 seeds)"
    )
    assert [(c.baseline, c.better) for c in v.comparisons] == [("bn", True), ("gn", True)]


def test_within_noise_picks_the_cheapest_uniform_baseline():
    v = verdict({"plan": {0: 0.90, 1: 0.92, 2: 0.91}, "bn": {0: 0.901, 1: 0.918, 2: 0.912}})
    assert (v.chosen, v.reason) == ("bn", "within_noise")
    assert v.text.startswith("use all-BN: the plan is not better, within noise (")
    d = v.comparisons[0]
    assert d.ci_low_points < 0 < d.ci_high_points


def test_a_plan_that_is_a_uniform_baseline_says_the_search_found_it():
    # The MLP at batch 2: the search picks GN everywhere, BN collapses.
    plan = {0: 0.978, 1: 0.975, 2: 0.980, 3: 0.977}
    gn = {0: 0.979, 1: 0.976, 2: 0.978, 3: 0.977}
    bn = {0: 0.72, 1: 0.80, 2: 0.75, 3: 0.77}
    v = verdict({"plan": plan, "bn": bn, "gn": gn}, plan_uniform="gn")
    assert (v.chosen, v.reason) == ("gn", "plan_is_baseline")
    assert v.text.startswith(
        "use all-GN: the search chose GN for every layer, so the plan is all-GN itself "
        "(trained twice: "
    )
    assert "; all-GN beats the cheaper all-BN by +" in v.text and "within noise" not in v.text
    # The same accuracies with a mixed plan: the usual words.
    mixed = verdict({"plan": plan, "bn": bn, "gn": gn})
    assert (mixed.chosen, mixed.reason) == ("gn", "within_noise")
    # A uniform plan that loses to a cheaper baseline is not that baseline's verdict.
    cheaper = verdict({"plan": gn, "bn": plan}, plan_uniform="gn")
    assert cheaper.chosen == "bn" and cheaper.reason == "within_noise"


def test_plan_worse():
    v = verdict({"plan": {0: 0.80, 1: 0.83, 2: 0.81}, "bn": {0: 0.90, 1: 0.92, 2: 0.91}})
    assert (v.chosen, v.reason) == ("bn", "plan_worse")
    assert v.text.startswith("use all-BN: the plan is worse (-9.7 points, 95% CI ")
    assert v.comparisons[0].worse


def test_a_cheaper_baseline_within_noise_wins_over_a_slightly_better_one():
    bn = {0: 0.900, 1: 0.921, 2: 0.909}
    gn = {0: 0.905, 1: 0.920, 2: 0.910}  # higher mean, not significantly
    v = verdict({"plan": {0: 0.90, 1: 0.92, 2: 0.91}, "gn": gn, "bn": bn})
    assert v.chosen == "bn"
    assert "all-GN scores +0.2 points more, within noise" in v.text
    assert "BN folds into the convolution" in v.text
    assert COST_ORDER == ("bn", "gn", "ln", "in", "rms", "none", "dyt", "plan")


def test_between_baselines_of_the_same_cost_the_better_mean_wins():
    lower = {0: 0.900, 1: 0.921, 2: 0.909}
    higher = {0: 0.905, 1: 0.920, 2: 0.910}  # within noise of lower
    v = verdict({"in": higher, "ln": lower})  # one standard layer each
    assert (v.chosen, v.reason) == ("in", "no_plan")
    v = verdict({"plan": lower, "gn": lower, "ln": higher})
    assert v.chosen == "ln" and "cheaper" not in v.text
    # The MLP at batch 2: the plan is all-LN, all-GN ties it, both beat all-BN by far.
    ln = {0: 0.978, 1: 0.975, 2: 0.980, 3: 0.977}
    gn = {0: 0.9785, 1: 0.975, 2: 0.980, 3: 0.977}  # +0.0 points: not worth a clause
    bn = {0: 0.72, 1: 0.80, 2: 0.75, 3: 0.77}
    v = verdict({"plan": ln, "bn": bn, "gn": gn, "ln": ln}, plan_uniform="ln")
    assert (v.chosen, v.reason) == ("ln", "plan_is_baseline")
    assert "all-GN" not in v.text  # neither "scores more" nor "beats the cheaper"
    assert "; all-LN beats the cheaper all-BN by +" in v.text
    # ... unless the plan is one of them: the search found it, and it is as good
    v = verdict({"plan": lower, "gn": lower, "ln": higher}, plan_uniform="gn")
    assert (v.chosen, v.reason) == ("gn", "plan_is_baseline")
    assert "all-LN scores +0.2 points more, within noise (" in v.text
    assert v.text.endswith("at the same cost at inference as all-GN")


def test_a_significantly_better_baseline_beats_the_cheaper_one():
    bn = {0: 0.80, 1: 0.82, 2: 0.81}
    gn = {0: 0.905, 1: 0.92, 2: 0.91}
    plan = {0: 0.90, 1: 0.925, 2: 0.91}  # beats all-BN, within noise of all-GN
    v = verdict({"plan": plan, "bn": bn, "gn": gn})
    assert (v.chosen, v.reason) == ("gn", "within_noise")
    assert "beats the cheaper all-BN by" in v.text
    assert [(c.baseline, c.better) for c in v.comparisons] == [("bn", True), ("gn", False)]


def test_one_seed_gives_no_interval_and_claims_no_confidence():
    v = verdict({"plan": {3: 0.95}, "bn": {3: 0.90}, "gn": {3: 0.91}})
    assert (v.chosen, v.reason) == ("plan", "single_seed")
    assert v.text.startswith("1 seed: no interval; add seeds.")
    assert "CI" not in v.text and "%" not in v.text
    assert all(c.ci_low_points is None and c.ci_high_points is None for c in v.comparisons)
    assert v.comparisons[1].mean_points == pytest.approx(4.0)
    assert v.configs["plan"].std is None
    # equal single-seed accuracies go to the cheaper configuration
    assert verdict({"plan": {0: 0.9}, "gn": {0: 0.9}, "bn": {0: 0.9}}).chosen == "bn"


def test_missing_seeds_pair_on_the_common_seeds_and_say_so():
    plan = {0: 0.91, 1: 0.93}  # seed 2 failed
    bn = {0: 0.80, 1: 0.81, 2: 0.79}
    v = verdict({"plan": plan, "bn": bn})
    assert v.seeds == [0, 1] and v.missing == {"plan": [2]}
    assert v.comparisons[0].seeds == [0, 1]
    assert v.comparisons[0].mean_points == pytest.approx(100 * ((0.11 + 0.12) / 2))
    assert v.configs["bn"].n == 3  # the configuration's own statistics keep all its seeds
    assert "Paired on the common seeds 0, 1 only (the per-layer plan lacks seed 2)" in v.text
    # failures that leave one common seed: no interval
    v = verdict({"plan": {0: 0.9, 1: 0.9}, "bn": {1: 0.8, 2: 0.8}})
    assert v.reason == "single_seed" and v.seeds == [1]


@pytest.mark.parametrize(
    ("accuracies", "chosen", "reason"),
    [
        ({}, None, "no_results"),
        ({"plan": {}, "bn": {}, "sn": {0: 0.9}}, None, "no_results"),
        ({"plan": {0: 0.9}, "bn": {1: 0.9}}, None, "no_common_seeds"),
        ({"plan": {0: 0.9, 1: 0.8}, "sn": {0: 0.9}}, "plan", "no_baseline"),
        ({"plan": {}, "bn": {0: 0.9, 1: 0.8}, "gn": {0: 0.5, 1: 0.45}}, "bn", "no_plan"),
    ],
)
def test_degenerate_inputs_give_a_clear_reason(accuracies, chosen, reason):
    v = verdict(accuracies)
    assert (v.chosen, v.reason) == (chosen, reason)
    assert reason in REASONS and v.text
    json.dumps(v.to_dict())


@pytest.mark.parametrize(
    ("accuracies", "message"),
    [
        ({"bogus": {0: 0.5}}, "unknown configuration"),
        ({"bn": {0: 1.5}}, "not in \\[0, 1\\]"),
        ({"bn": {0: float("nan")}}, "not in \\[0, 1\\]"),
        ({"bn": {"0": 0.5}}, "not an integer"),
        ({"bn": {0: None}}, "not a number"),
    ],
)
def test_bad_input_is_a_clear_error(accuracies, message):
    with pytest.raises(ValueError, match=message):
        verdict(accuracies)
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 0.5}, {1: 0.5})


def test_to_dict_is_json_with_the_machine_readable_fields():
    v = verdict({"plan": PLAN_HI, "bn": FLAT, "sn": {0: 0.9, 1: 0.91}})
    d = json.loads(json.dumps(v.to_dict()))
    assert d["chosen"] == "plan" and d["reason"] == "plan_better" and d["text"] == v.text
    assert d["configs"]["plan"]["per_seed"] == {"0": 0.92, "1": 0.93, "2": 0.945}
    assert d["configs"]["sn"]["label"] == "the SN model (search, annealed)"
    assert d["comparisons"][0]["baseline"] == "bn" and d["comparisons"][0]["n"] == 3


def test_the_modules_load_no_torch():
    code = (
        "import sys, worker.verdict, worker.aggregate; "
        "print(sorted({'torch', 'sn_core', 'ray'} & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
