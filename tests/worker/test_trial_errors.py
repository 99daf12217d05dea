"""What users read when trials fail: the exception's type and message, unwrapped from Ray's
remote-traceback wrapper, and a job error that leads with the first failed trial's exception."""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError

from worker.job import TrialsFailed, recommend_or_explain
from worker.results import TrialOutcome
from worker.search import MAX_ERROR_CHARS, exception_text


def failed(seed: int, batch_size: int, error: str | None) -> TrialOutcome:
    return TrialOutcome(
        trial_id=f"t{seed}_{batch_size}",
        seed=seed,
        batch_size=batch_size,
        lr=0.1,
        status="ERROR",
        epochs_used=0,
        epochs_budget=2,
        val_accuracy=None,
        error=error,
    )


def test_exception_text_unwraps_rays_task_error_to_the_users_exception():
    cause = ValueError("batch_size should be a positive integer value, but got batch_size=0")
    wrapped = RayTaskError("train_trial", "Traceback (most recent call last):\n  ...", cause)
    assert exception_text(wrapped) == (
        "ValueError: batch_size should be a positive integer value, but got batch_size=0"
    )
    assert exception_text(KeyError("x")) == "KeyError: 'x'"
    assert len(exception_text(RuntimeError("y" * 10_000))) == MAX_ERROR_CHARS


def test_a_search_with_no_successful_trial_fails_with_the_first_trials_exception():
    outcomes = [
        failed(0, 32, "ValueError: input has 5 features, expected 64"),
        failed(1, 32, "RuntimeError: later"),
    ]
    with pytest.raises(TrialsFailed) as info:
        recommend_or_explain(outcomes, 32)
    message = str(info.value)
    assert message.startswith(
        "2 of 2 trial(s) failed; the first (seed 0, batch size 32, lr 0.1) with "
        "ValueError: input has 5 features, expected 64 (no successful trial"
    )
    assert "RuntimeError: later" not in message


def test_without_any_recorded_error_the_recommendations_own_reason_stands():
    with pytest.raises(ValueError, match="^no successful trial") as info:
        recommend_or_explain([failed(0, 32, None)], 32)
    assert not isinstance(info.value, TrialsFailed)
