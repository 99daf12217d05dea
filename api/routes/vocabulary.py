"""The names the API speaks, in one answer: job statuses (and which of them are final), artifact
kinds and the normalizers with their display labels. The web UI fetches this once at start-up
instead of keeping copies; the values come from ``service.vocabulary`` and
``sn_core.vocabulary`` (torch-free)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser
from api.schemas import NormalizerOut, Vocabulary
from service.vocabulary import FINISHED_JOB_STATUSES, ArtifactKind, JobStatus
from sn_core.vocabulary import NORMALIZER_LABELS, NORMALIZERS

router = APIRouter(tags=["vocabulary"])

VOCABULARY = Vocabulary(
    statuses=list(JobStatus),
    finished_statuses=[status for status in JobStatus if status in FINISHED_JOB_STATUSES],
    artifact_kinds=list(ArtifactKind),
    normalizers=[NormalizerOut(name=name, label=NORMALIZER_LABELS[name]) for name in NORMALIZERS],
)


@router.get("/vocabulary", response_model=Vocabulary)
def vocabulary(_user: CurrentUser) -> Vocabulary:
    """Job statuses in lifecycle order, the finished ones, artifact kinds, and the normalizers
    in ratio order with their labels (what the UI shows)."""
    return VOCABULARY
