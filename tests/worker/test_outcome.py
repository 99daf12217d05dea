"""worker.outcome: the jobs list's one-line result, from a real verdict and recommendation."""

from __future__ import annotations

import json

import pytest

from sn_core import NormalizerPlan
from worker.outcome import job_result, result_text, short_label
from worker.recommend import Recommendation
from worker.results import TrialOutcome
from worker.verdict import verdict


def make_trial(trial_id: str, seed: int, batch_size: int, *, acc: float) -> TrialOutcome:
    return TrialOutcome(
        trial_id=trial_id, seed=seed, batch_size=batch_size, lr=0.1, status="TERMINATED",
        epochs_used=3, epochs_budget=3, val_accuracy=acc,
    )  # fmt: skip


def _verification(accuracies: dict[str, dict[int, float]]) -> dict:
    return {"verdict": verdict(accuracies).to_dict()}


@pytest.fixture(scope="module")
def recommendation() -> Recommendation:
    """The recommendation of trials A and B (only its trial ids matter here)."""
    plan = NormalizerPlan(layers=())
    return Recommendation(
        plan=plan, target_batch_size=32, trial_ids=["A", "B"], best_trial="B", summary={}
    )


def test_chosen_configuration_with_final_epoch_accuracy_over_seeds(recommendation):
    # The plan beats all-BN clearly on every seed: the plan is chosen.
    accuracies = {
        "plan": {0: 0.98, 1: 0.985, 2: 0.975, 3: 0.98},
        "bn": {0: 0.90, 1: 0.91, 2: 0.89, 3: 0.90},
    }
    result = job_result(_verification(accuracies), recommendation, [])
    decided = verdict(accuracies)
    assert decided.chosen == "plan"
    stats = decided.configs["plan"]
    assert result["configuration"] == "plan" and result["verified"] is True
    assert result["accuracy"] == pytest.approx(stats.mean) and result["std"] == stats.std
    assert result["n"] == 4 and result["accuracy_kind"] == "final epoch"
    assert result["text"] == f"plan {stats.mean:.3f} ± {stats.std:.3f} (4 seeds, final epoch)"
    json.dumps(result, allow_nan=False)


def test_a_baseline_chosen_and_a_single_seed_says_no_interval(recommendation):
    result = job_result(_verification({"plan": {0: 0.90}, "bn": {0: 0.95}}), recommendation, [])
    assert result["configuration"] == "bn" and result["reason"] == "single_seed"
    assert result["std"] is None and result["n"] == 1
    assert result["text"] == "all-BN 0.950 (1 seed: no interval, final epoch)"


def test_a_verdict_that_chose_nothing_says_why(recommendation):
    result = job_result(_verification({"plan": {}, "bn": {}}), recommendation, [])
    assert result["configuration"] is None and result["accuracy"] is None
    assert result["reason"] == "no_results" and result["text"].startswith("no verdict: ")


def test_without_verification_the_search_plan_is_not_verified(recommendation):
    trials = [make_trial("A", 0, 32, acc=0.90), make_trial("B", 1, 32, acc=0.94)]
    trials.append(make_trial("C", 2, 8, acc=0.10))  # another batch size: not the plan's trials
    result = job_result(None, recommendation, trials)
    assert result["configuration"] == "search_plan" and result["verified"] is False
    assert result["n"] == 2 and result["accuracy"] == pytest.approx(0.92)
    assert result["std"] == pytest.approx(0.0282842712)
    assert result["text"] == "search plan, not verified: 0.920 ± 0.028 (2 trials, final epoch)"


def test_labels_and_text_of_an_accuracy_less_result():
    assert [short_label(c) for c in ("plan", "sn", "gn")] == ["plan", "SN model", "all-GN"]
    text = result_text(
        {"label": "plan", "accuracy": None, "std": None, "n": 0, "verified": True,
         "accuracy_kind": "final epoch"}
    )  # fmt: skip
    assert text == "plan: no accuracy"
