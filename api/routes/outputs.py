"""A finished job's outputs: the recommendation (plan JSON or YAML), the finalized checkpoint (a
zip that ``sn_core.load_finalized`` reads), the report, and every stored artifact by kind. Files
are served from the runs directory only, with their SHA-256 as ETag."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.presenters import job_detail
from api.routes.jobs import JOB_RESPONSES, JobId
from api.schemas import ArtifactKind, ArtifactOut, ErrorBody
from service import artifacts, submissions

router = APIRouter(prefix="/jobs/{job_id}", tags=["outputs"])

_NOT_READY = {409: {"model": ErrorBody, "description": "The job has not succeeded (yet)."}}
RESPONSES = {**JOB_RESPONSES, **_NOT_READY}

_BINARY = {"type": "string", "format": "binary"}
MEDIA_TYPES = {
    ArtifactKind.plan_json: "application/json",
    ArtifactKind.plan_yaml: "application/yaml",
    ArtifactKind.report_json: "application/json",
    ArtifactKind.ratios_csv: "text/csv",
    ArtifactKind.ratios_png: "image/png",
    ArtifactKind.checkpoint: "application/zip",
}


def _file(session, settings, user, job_id: str, kind: ArtifactKind) -> FileResponse:
    job = submissions.owned_job(session, job_id=job_id, user=user)
    artifact, path = submissions.artifact_file(job, kind, runs_dir=settings.runs_dir)
    if path.is_dir():
        path = artifacts.zipped_directory(path)
        filename = f"{job_id}-{kind}.zip"
    else:
        filename = f"{job_id}-{path.name}"
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(kind, "application/octet-stream"),
        filename=filename,
        headers={"ETag": f'"{artifact.sha256}"', "X-Content-SHA256": artifact.sha256},
    )


# Every media type an artifact is served with (JSON ones with any JSON body).
_FILE_CONTENT = {
    media_type: {"schema": {} if media_type == "application/json" else _BINARY}
    for media_type in [*dict.fromkeys(MEDIA_TYPES.values()), "application/octet-stream"]
}


@router.get("/artifacts", response_model=list[ArtifactOut], responses=JOB_RESPONSES)
def list_artifacts(
    job_id: JobId, request: Request, user: CurrentUser, session: SessionDep
) -> list[ArtifactOut]:
    """The job's stored outputs with their size, SHA-256 and download URL."""
    job = submissions.owned_job(session, job_id=job_id, user=user)
    return job_detail(job, request).artifacts


@router.get(
    "/artifacts/{kind}",
    response_class=FileResponse,
    responses={**RESPONSES, 200: {"content": _FILE_CONTENT, "description": "The file."}},
)
def download_artifact(
    job_id: JobId, kind: ArtifactKind, user: CurrentUser, session: SessionDep, settings: SettingsDep
):
    """One output file (the checkpoint directory as a zip)."""
    return _file(session, settings, user, job_id, kind)


@router.get(
    "/recommendation",
    response_class=FileResponse,
    responses={
        **RESPONSES,
        200: {
            "description": "The recommended per-layer normalizer plan.",
            "content": {"application/json": {}, "application/yaml": {}},
        },
    },
)
def recommendation(
    job_id: JobId,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    format: Annotated[Literal["json", "yaml"], Query(description="Plan format.")] = "json",
):
    """The recommended plan (``sn_core.NormalizerPlan``: ``apply_plan`` builds the model)."""
    return _file(session, settings, user, job_id, ArtifactKind(f"plan_{format}"))


@router.get(
    "/checkpoint",
    response_class=FileResponse,
    responses={
        **RESPONSES,
        200: {
            "description": "Zip: model.safetensors, plan.json, model.json.",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        },
    },
)
def checkpoint(job_id: JobId, user: CurrentUser, session: SessionDep, settings: SettingsDep):
    """The finalized checkpoint (plain torch layers); ``sn_core.load_finalized`` loads it."""
    return _file(session, settings, user, job_id, ArtifactKind.checkpoint)


@router.get(
    "/report",
    response_class=FileResponse,
    responses={
        **RESPONSES,
        200: {"description": "report.json", "content": {"application/json": {}}},
    },
)
def report(job_id: JobId, user: CurrentUser, session: SessionDep, settings: SettingsDep):
    """The search report: recommendation with confidences, per-trial summaries, verification."""
    return _file(session, settings, user, job_id, ArtifactKind.report_json)
