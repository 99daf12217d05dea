"""The names the API speaks, in one answer: job statuses (and which of them are final), artifact
kinds, the normalizers and pool members with their display labels, and the output ratios'
names. The web UI fetches this once at start-up instead of keeping copies; the values come from
``service.vocabulary`` and ``sn_core.vocabulary`` (torch-free)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser
from api.schemas import MemberOut, NormalizerOut, Vocabulary
from service.vocabulary import FINISHED_JOB_STATUSES, ArtifactKind, JobStatus
from sn_core.vocabulary import MEMBER_LABELS, OUTPUT_CHOICES, POOL_MEMBERS, STATISTIC_MEMBERS

router = APIRouter(tags=["vocabulary"])

VOCABULARY = Vocabulary(
    statuses=list(JobStatus),
    finished_statuses=[status for status in JobStatus if status in FINISHED_JOB_STATUSES],
    artifact_kinds=list(ArtifactKind),
    normalizers=[NormalizerOut(name=name, label=MEMBER_LABELS[name]) for name in STATISTIC_MEMBERS],
    members=[
        MemberOut(
            name=name,
            label=MEMBER_LABELS[name],
            kind="statistics" if name in STATISTIC_MEMBERS else "pointwise",
        )
        for name in POOL_MEMBERS
    ],
    output_choices=[NormalizerOut(name=name, label=MEMBER_LABELS[name]) for name in OUTPUT_CHOICES],
)


@router.get("/vocabulary", response_model=Vocabulary)
def vocabulary(_user: CurrentUser) -> Vocabulary:
    """Job statuses in lifecycle order, the finished ones, artifact kinds, the statistics
    normalizers in ratio order (the keys of a snapshot's mean and var), every pool member, and
    the output choices (the keys of a snapshot's output), with their labels (what the UI
    shows)."""
    return VOCABULARY
