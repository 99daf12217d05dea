"""The service's vocabulary, defined once: job statuses and artifact kinds.

The ORM's CHECK constraint, the lifecycle, the API schemas, the Python client, the command line
and (through ``GET /api/v1/vocabulary``) the web UI all read these. The migrations keep their
literal copies (a migration is frozen history); a test checks that the CHECK constraints they
create still equal ``JobStatus``. Stdlib only: the API's client imports this through
``api.schemas``. Each member's name equals its value: psycopg sends an Enum by name, the ORM
and SQLite by value (tests/test_db.py stores every status on Postgres).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its lifecycle (``service.lifecycle`` moves it)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"


# A job in one of these has ended: nothing runs for it until a user retries it. ``cancelling``
# is not among them: its worker still holds it until its Ray run has stopped (it then confirms
# ``cancelled``; the reaper does so for a lost worker).
FINISHED_JOB_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class ArtifactKind(StrEnum):
    """The output files of a succeeded job, one per kind (``artifacts.kind``).

    ``plan_json``/``plan_yaml`` and ``checkpoint`` are the configuration the verification's
    verdict chose (its plan; a model of it, trained); ``search_plan_json`` and
    ``search_checkpoint`` are what the search itself produced (its recommended per-layer plan; its
    best trial finalized with its own choices). Jobs from before those two have none."""

    plan_json = "plan_json"
    plan_yaml = "plan_yaml"
    report_json = "report_json"
    ratios_csv = "ratios_csv"
    ratios_png = "ratios_png"
    checkpoint = "checkpoint"
    search_plan_json = "search_plan_json"
    search_checkpoint = "search_checkpoint"
