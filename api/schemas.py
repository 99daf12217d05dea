"""Response and request bodies of the REST API (pydantic); the OpenAPI document is built from
these. The job spec itself is ``service.spec.JobSpec``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The wire vocabulary is the service's, re-exported for ``api.client`` and its users.
from service.vocabulary import FINISHED_JOB_STATUSES as FINISHED_JOB_STATUSES
from service.vocabulary import ArtifactKind, JobStatus


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    """Every error response: a stable machine-readable ``code``, a human-readable ``message``,
    and for input errors the ``field`` at fault."""

    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["job 5f0c... not found"])
    field: str | None = Field(default=None, examples=["training.epochs"])


class FieldError(BaseModel):
    field: str = Field(examples=["training.epochs"])
    message: str = Field(examples=["Input should be greater than or equal to 1"])


class ValidationErrorBody(ErrorBody):
    """422: the request did not validate; ``errors`` lists every problem by field."""

    errors: list[FieldError] = Field(default_factory=list)


class QuotaErrorBody(ErrorBody):
    """429 (try again after ``Retry-After``) or 403 (the job alone is over it): a quota per user,
    named by its setting (``limit``) and environment variable, its value and what is in use."""

    limit: str | None = Field(default=None, examples=["max_jobs_per_user"])
    variable: str | None = Field(default=None, examples=["NORMSEARCH_MAX_JOBS_PER_USER"])
    quota: int | None = Field(default=None, examples=[10])
    in_use: int | None = Field(default=None, examples=[10])
    requested: int | None = Field(default=None, examples=[1])


class JobEventOut(_Out):
    id: int
    at: datetime
    from_status: JobStatus | None
    to_status: JobStatus
    message: str | None


class JobResult(BaseModel):
    """A succeeded job's result in short, as the worker wrote it when the job succeeded: the
    configuration the verification's verdict chose and its final-epoch validation accuracy
    (mean and sample std over the seeds), or the search plan, not verified."""

    model_config = ConfigDict(extra="ignore")

    configuration: str | None = Field(
        description="plan, bn, gn, ... (the verdict's choice), search_plan (not verified), or "
        "null when the verdict could choose nothing.",
        examples=["plan"],
    )
    label: str = Field(examples=["plan"])
    verified: bool
    reason: str = Field(description="The verdict's reason code (worker.verdict.REASONS).")
    accuracy: float | None = Field(
        description="Mean validation accuracy (a fraction); null for a language model."
    )
    perplexity: float | None = Field(
        default=None,
        description="A language model's mean validation perplexity (lower is better); null "
        "for classifiers.",
    )
    std: float | None = Field(description="Sample std over the seeds; null below 2.")
    n: int = Field(description="Seeds (verified) or search trials (not verified) averaged.")
    accuracy_kind: str = Field(
        description="Which epoch the accuracy is from.", examples=["final epoch"]
    )
    text: str = Field(examples=["all-LN 0.978 ± 0.002 (4 seeds, final epoch)"])


# The longest job name (``POST /jobs?name=``; the column ``jobs.name`` is as wide).
JOB_NAME_MAX_LENGTH = 100


class JobSummary(_Out):
    """A job as listed: enough for a jobs table. ``result``: null until it succeeded (and for
    jobs that finished before results were recorded); a failed job's reason is ``error``."""

    id: str
    name: str | None = None
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    error: str | None
    attempts: int
    run: int = 1
    arch: str
    metric: Literal["accuracy", "perplexity"] = Field(
        default="accuracy",
        description="What its trials are judged by: validation accuracy (a classifier) or "
        "validation perplexity (a language model, lower is better).",
    )
    dataset: str
    target_batch_size: int | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    result: JobResult | None = None


class ArtifactOut(_Out):
    kind: ArtifactKind
    sha256: str
    size_bytes: int
    created_at: datetime
    url: str


class JobDetail(JobSummary):
    """One job: its spec, status timeline and downloadable outputs."""

    spec: dict[str, Any]
    idempotency_key: str | None
    events: list[JobEventOut]
    artifacts: list[ArtifactOut]


class JobPage(BaseModel):
    items: list[JobSummary]
    total: int
    limit: int
    offset: int


class TrialOut(_Out):
    id: int = Field(description="Never reused, not even after a retry deleted earlier trials.")
    run: int = Field(default=1, description="The job run (the job's ``run``) that ran the trial.")
    number: int = Field(
        default=0,
        description="The trial's number within its job, 1 to n in creation order (what the UI "
        "shows; ``id`` is the database's, shared by every job).",
    )
    ray_trial_id: str
    variant: str
    status: str
    config: dict[str, Any]
    effective_lr: float | None = Field(
        default=None,
        description=(
            "The learning rate the trial trains with: its base lr (config.trial.lr) scaled to "
            "its batch size by the spec's training.lr_scaling; null before the trial started."
        ),
    )
    best_metrics: dict[str, Any] | None
    error: str | None = None
    epochs_used: int
    epochs_budget: int
    node_id: str | None = Field(
        default=None,
        description="The Ray node its last reported epoch trained on (a trial restarted after "
        "losing its node shows the one it continued on); null before its first epoch.",
    )
    created_at: datetime
    updated_at: datetime


class RatioPoint(BaseModel):
    """One layer's switch ratios at one step: ``mean`` and ``var`` per statistics member (in, ln,
    bn, gn always, None outside the pool; rms when the layer has it), and ``output`` over the
    output choices (norm, dyt, none) of a layer whose pool has point-wise members."""

    step: int
    epoch: int
    layer_index: int
    layer: str
    mean: dict[str, float | None]
    var: dict[str, float | None]
    output: dict[str, float] | None = Field(
        default=None, description="Output ratios; null for a layer without point-wise members."
    )
    mean_fixed: bool
    var_fixed: bool


class TrialRatios(BaseModel):
    trial_id: int
    ray_trial_id: str
    variant: str
    steps_total: int = Field(description="Steps after the cursor before downsampling.")
    downsampled: bool
    last_step: int | None = Field(description="The cursor for the next incremental read.")
    points: list[RatioPoint]


class RatioHistory(BaseModel):
    job_id: str
    trials: list[TrialRatios]


class MetricPoint(BaseModel):
    trial_id: int
    step: int
    epoch: int
    name: str
    value: float


class MetricHistory(BaseModel):
    job_id: str
    last_step: int | None
    points: list[MetricPoint]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="default", min_length=1, max_length=100)


class TokenOut(_Out):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The raw token: shown once, store it now.")


class UserOut(_Out):
    id: int
    name: str
    is_admin: bool = Field(
        default=False, description="Exempt from the quotas per user (`token create --admin`)."
    )
    created_at: datetime


class NormalizerOut(BaseModel):
    name: str = Field(examples=["bn"], description="As in a spec's pool and a plan's choices.")
    label: str = Field(examples=["BN"], description="How the UI shows it.")


class MemberOut(NormalizerOut):
    kind: Literal["statistics", "pointwise"] = Field(
        description="statistics: mixed in a layer's mean and variance ratios; pointwise: mixed "
        "with the normalized output by its output ratios."
    )


class Vocabulary(BaseModel):
    """The names the API speaks, for clients that display them (the web UI reads these instead
    of keeping a copy)."""

    statuses: list[JobStatus] = Field(description="Every job status, in lifecycle order.")
    finished_statuses: list[JobStatus] = Field(
        description="The statuses of a job that has ended (nothing runs until a retry)."
    )
    artifact_kinds: list[ArtifactKind] = Field(description="The kinds of a job's output files.")
    normalizers: list[NormalizerOut] = Field(
        description="The normalizers a search can mix, in ratio order."
    )
    members: list[MemberOut] = Field(
        description="Every pool member (statistics members in ratio order, then point-wise "
        "ones), as a spec's search.pool names them."
    )
    output_choices: list[NormalizerOut] = Field(
        description="The output ratios' names (norm: the normalized output; then the "
        "point-wise members), in ratio order."
    )


class Health(BaseModel):
    """``ok``; ``degraded``: the API serves but a worker is stuck (readiness still 200);
    ``unavailable``: the database or the broker is down (503)."""

    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
