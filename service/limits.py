"""What one job may ask for: the operator's bounds (``Settings.max_*``) on a job spec.

The spec's own schema (``service.spec``) refuses what could never run (a negative batch size, a
number too large to store); these bounds refuse what would run but cost too much (640,000 trials,
a million epochs) and are settings, so an operator can raise them. The API checks a spec with
``check_spec_limits`` before queueing it; every violation is named with the field at fault, the
limit, and the environment variable that raises it. The model's size needs torch, so the worker
checks it before any training (``worker.model_size``) against ``ModelLimits``.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import InvalidInput
from service.settings import Settings
from service.spec import JobSpec

ENV_PREFIX = "NORMSEARCH_"


def env_var(setting: str) -> str:
    """A ``Settings`` field's environment variable: ``max_seeds`` -> ``NORMSEARCH_MAX_SEEDS``."""
    return ENV_PREFIX + setting.upper()


@dataclass(frozen=True)
class Violation:
    field: str  # the spec field at fault, dotted (``search.trials.seeds``)
    message: str


class SpecLimitExceeded(InvalidInput):
    """A spec over one or more of the operator's bounds: 422, one entry per violation."""

    code = "limit_exceeded"

    def __init__(self, violations: list[Violation]) -> None:
        first = violations[0]
        super().__init__(first.message, field=first.field)
        self.violations = violations

    def to_dict(self) -> dict:
        errors = [{"field": v.field, "message": v.message} for v in self.violations]
        return {
            "code": self.code,
            "message": "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            "field": self.field,
            "errors": errors,
        }


def _over(what: str, value: int, setting: str, limit: int) -> str:
    return (
        f"{what} is {value}, over the limit of {limit}; ask for less, or have the operator "
        f"raise the limit ({env_var(setting)})"
    )


def spec_limit_violations(spec: JobSpec, settings: Settings) -> list[Violation]:
    """Every bound of ``settings`` that ``spec`` exceeds (empty: within them all)."""
    found: list[Violation] = []

    def check(field: str, what: str, value: int | None, setting: str) -> None:
        limit = getattr(settings, setting)
        if value is not None and value > limit:
            found.append(Violation(field, _over(what, value, setting, limit)))

    trials = spec.search.trials
    check("search.trials.seeds", "the number of seeds", len(trials.seeds), "max_seeds")
    if trials.batch_sizes is not None:
        check(
            "search.trials.batch_sizes",
            "the number of batch sizes",
            len(trials.batch_sizes),
            "max_batch_sizes",
        )
    if trials.lrs is not None:
        check("search.trials.lrs", "the number of learning rates", len(trials.lrs), "max_lrs")
    check("training.epochs", "the epochs per trial", spec.training.epochs, "max_epochs")
    if spec.verify.enabled:  # unset, it is training.epochs: checked above
        check("verify.epochs", "the verification's epochs", spec.verify.epochs, "max_epochs")
    batch_field = "search.trials.batch_sizes" if trials.batch_sizes else "training.batch_size"
    check(batch_field, "the largest batch size", max(spec.batch_sizes), "max_batch_size")
    if spec.training.batch_size not in spec.batch_sizes:  # the reference of lr scaling only
        check("training.batch_size", "the batch size", spec.training.batch_size, "max_batch_size")
    check(
        "dataset.num_samples", "the number of samples", spec.dataset.num_samples, "max_num_samples"
    )
    check(
        "dataset.num_classes", "the number of classes", spec.dataset.num_classes, "max_num_classes"
    )
    check("model.num_classes", "the number of classes", spec.model.num_classes, "max_num_classes")
    check("model.in_channels", "the input channels", spec.model.in_channels, "max_in_channels")
    check("dataset.image_size", "the image size", spec.dataset.image_size, "max_image_size")
    check(
        "search.trials",
        "the number of trials, search and verification together",
        spec.trial_count,
        "max_trials",
    )
    check(
        "search.trials",
        "the epochs of all trials together (trials x epochs each)",
        spec.trial_epochs,
        "max_trial_epochs",
    )
    return found


def check_spec_limits(spec: JobSpec, settings: Settings) -> None:
    """Raise ``SpecLimitExceeded`` (422) when ``spec`` exceeds any of the operator's bounds."""
    violations = spec_limit_violations(spec, settings)
    if violations:
        raise SpecLimitExceeded(violations)


@dataclass(frozen=True)
class ModelLimits:
    """The bounds on a model's size that the worker checks before training (it has torch)."""

    max_params: int
    max_activation_mib: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelLimits:
        return cls(
            max_params=settings.max_model_params,
            max_activation_mib=settings.max_activation_mib,
        )
