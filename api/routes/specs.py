"""What a job form needs: the job spec's JSON Schema, the example specs as templates, and a
dry-run validation that answers like a submission would (200 or 422 naming the fields)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import CurrentUser, JsonBody, SettingsDep
from api.schemas import ErrorBody
from service import submissions
from service.examples import load_examples
from service.spec import JobSpec, job_spec_schema

router = APIRouter(tags=["specs"])


class Example(BaseModel):
    name: str
    title: str
    spec: dict[str, Any]


class SpecValid(BaseModel):
    valid: bool = True
    spec: dict[str, Any]


@lru_cache(maxsize=1)
def _examples() -> tuple[Example, ...]:
    return tuple(Example(**example) for example in load_examples())


@router.get("/spec/schema", response_model=dict[str, Any])
def spec_schema(_user: CurrentUser) -> dict[str, Any]:
    """JSON Schema of a job spec (``POST /jobs`` body)."""
    return job_spec_schema()


@router.get("/spec/examples", response_model=list[Example])
def spec_examples(_user: CurrentUser) -> list[Example]:
    """The example specs shipped with the service, with every default filled in."""
    return list(_examples())


@router.post(
    "/spec/validate",
    response_model=SpecValid,
    responses={
        400: {"model": ErrorBody, "description": "The body could not be read (not UTF-8)."},
        415: {"model": ErrorBody, "description": "Body is not JSON."},
    },
)
def validate_spec(
    spec: JobSpec, _user: CurrentUser, _json: JsonBody, settings: SettingsDep
) -> SpecValid:
    """Validate a spec without submitting it: the same checks (422 naming each field or limit),
    and the spec with its defaults filled in."""
    submissions.check_spec(spec, settings=settings)
    return SpecValid(spec=spec.model_dump(mode="json"))
