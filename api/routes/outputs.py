"""A finished job's outputs: the plan (JSON or YAML) and the checkpoint (a zip that
``sn_core.load_finalized`` reads) of the configuration the verification's verdict chose, the
search's own checkpoint, the report, and every stored artifact by kind. Files are served from the
runs directory only, with the SHA-256 of the very bytes sent as ETag and ``X-Content-SHA256``."""

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
    ArtifactKind.search_plan_json: "application/json",
    ArtifactKind.search_checkpoint: "application/zip",
}
_ZIP_CONTENT = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}


def _file(session, settings, user, job_id: str, kind: ArtifactKind) -> FileResponse:
    job = submissions.owned_job(session, job_id=job_id, user=user)
    artifact, path = submissions.artifact_file(job, kind, runs_dir=settings.runs_dir)
    digest = artifact.sha256  # of the stored file, which is what is sent
    if path.is_dir():  # an older job's directory checkpoint: sent as a zip, with that zip's digest
        path, digest = artifacts.zipped_directory(path)
        filename = f"{job_id}-{kind}.zip"
    else:
        filename = f"{job_id}-{path.name}"
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(kind, "application/octet-stream"),
        filename=filename,
        headers={"ETag": f'"{digest}"', "X-Content-SHA256": digest},
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
    """One output file, by kind."""
    return _file(session, settings, user, job_id, kind)


@router.get(
    "/recommendation",
    response_class=FileResponse,
    responses={
        **RESPONSES,
        200: {
            "description": "The plan of the configuration the verdict chose.",
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
    """The plan of the configuration the verdict chose (``sn_core.NormalizerPlan``:
    ``apply_plan`` builds the model): the search's per-layer plan, or a uniform baseline's;
    its metadata says which (the search's own plan: artifact ``search_plan_json``)."""
    return _file(session, settings, user, job_id, ArtifactKind(f"plan_{format}"))


@router.get(
    "/checkpoint",
    response_class=FileResponse,
    responses={
        **RESPONSES,
        200: {
            "description": "Zip: model.safetensors, plan.json, model.json.",
            "content": _ZIP_CONTENT,
        },
    },
)
def checkpoint(job_id: JobId, user: CurrentUser, session: SessionDep, settings: SettingsDep):
    """A trained model of the configuration the verdict chose (plain torch layers; its plan
    equals the recommendation's download), e.g. the best all-BN verification run; without
    verification the best search trial finalized with the recommended plan, marked "not
    verified" in its plan's metadata. ``sn_core.load_finalized`` loads it."""
    return _file(session, settings, user, job_id, ArtifactKind.checkpoint)


@router.get(
    "/search-checkpoint",
    response_class=FileResponse,
    responses={
        **RESPONSES,
        200: {
            "description": "Zip: model.safetensors, plan.json, model.json.",
            "content": _ZIP_CONTENT,
        },
    },
)
def search_checkpoint(job_id: JobId, user: CurrentUser, session: SessionDep, settings: SettingsDep):
    """The best search trial's SN model finalized with its own one-hot choices (what the search
    trained, not verified); ``sn_core.load_finalized`` loads it."""
    return _file(session, settings, user, job_id, ArtifactKind.search_checkpoint)


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
