"""ORM rows to response bodies (the only place that knows both)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import ValidationError

from api.schemas import ArtifactOut, JobDetail, JobEventOut, JobResult, JobSummary, TrialOut
from service.db.models import Job, Trial
from service.spec import metric_of


def _target_batch_size(spec: dict[str, Any]) -> int | None:
    search = spec.get("search") or {}
    if search.get("target_batch_size"):
        return int(search["target_batch_size"])
    sizes = (search.get("trials") or {}).get("batch_sizes") or [
        (spec.get("training") or {}).get("batch_size")
    ]
    sizes = [int(size) for size in sizes if size]
    return max(sizes) if sizes else None


def _dataset_label(spec: dict[str, Any]) -> str:
    dataset = spec.get("dataset") or {}
    kind = str(dataset.get("kind", "?"))
    return f"{kind}:{dataset['path']}" if dataset.get("path") else kind


def _job_result(job: Job) -> JobResult | None:
    """The stored short result; one the schema cannot read (a future worker's) is left out
    rather than failing the whole listing."""
    if not job.result:
        return None
    try:
        return JobResult.model_validate(job.result)
    except ValidationError:
        return None


def job_summary(job: Job) -> JobSummary:
    spec = job.spec or {}
    return JobSummary(
        id=job.id,
        name=job.name,
        status=job.status,
        progress=min(max(job.progress or 0.0, 0.0), 1.0),
        error=job.error,
        attempts=job.attempts or 0,
        run=job.run,
        arch=str((spec.get("model") or {}).get("arch", "?")),
        metric=metric_of(str((spec.get("model") or {}).get("arch", ""))),
        dataset=_dataset_label(spec),
        target_batch_size=_target_batch_size(spec),
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        result=_job_result(job),
    )


def absolute_url(request: Request, name: str, **path_params: Any) -> str:
    """The absolute URL of route ``name``: under NORMSEARCH_PUBLIC_URL when it is set (the
    request's Host header, which any client may forge, is then never echoed), else built from
    the request as Starlette does."""
    public_url = request.app.state.settings.public_url
    if public_url:
        return public_url + request.app.url_path_for(name, **path_params)
    return str(request.url_for(name, **path_params))


def job_detail(job: Job, request: Request) -> JobDetail:
    artifacts = [
        ArtifactOut(
            kind=a.kind,
            sha256=a.sha256,
            size_bytes=a.size_bytes,
            created_at=a.created_at,
            url=absolute_url(request, "download_artifact", job_id=job.id, kind=a.kind),
        )
        for a in sorted(job.artifacts, key=lambda a: a.kind)
    ]
    return JobDetail(
        **job_summary(job).model_dump(),
        spec=job.spec,
        idempotency_key=job.idempotency_key,
        events=[JobEventOut.model_validate(e) for e in job.events],
        artifacts=artifacts,
    )


def _effective_lr(config: dict[str, Any]) -> float | None:
    """The trial's ``effective_lr`` as its grid point recorded it; trials recorded before batch
    scaling existed trained with their base ``lr``."""
    point = config.get("trial") or {}
    value = point.get("effective_lr", point.get("lr"))
    return None if value is None else float(value)


def trial_out(trial: Trial, number: int) -> TrialOut:
    """``number``: the trial's place (1-based) among its job's trials in creation order."""
    out = TrialOut.model_validate(trial)
    return out.model_copy(
        update={"effective_lr": _effective_lr(trial.config or {}), "number": number}
    )
