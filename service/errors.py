"""Domain errors: exceptions that carry the HTTP status and a stable machine-readable code.

Services and repositories raise these; the HTTP edge renders them in one exception handler, so no
domain code imports a web framework (no ``HTTPException`` below ``api/``).
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every domain error: ``status_code`` (HTTP), ``code`` (stable, machine-readable)
    and a human-readable ``message``."""

    status_code: int = 500
    code: str = "internal_error"
    default_message: str = "internal error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def to_dict(self) -> dict[str, str]:
        """The body an edge renders: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"
    default_message = "not found"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"
    default_message = "forbidden"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"
    default_message = "conflict"


class InvalidTransition(Conflict):
    """A job status change the lifecycle does not allow (e.g. succeeded -> running)."""

    code = "invalid_transition"
    default_message = "invalid status transition"


class InvalidInput(ServiceError):
    """Input that parses but cannot be accepted (e.g. a dataset path outside the data roots);
    ``field`` names the job-spec field at fault, ``path`` the offending path if any."""

    status_code = 422
    code = "invalid_input"
    default_message = "invalid input"

    def __init__(
        self, message: str | None = None, *, field: str | None = None, path: str | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.path = path

    def to_dict(self) -> dict:
        """Shaped like a request validation error: the field first, and in ``errors``."""
        if self.field is None:
            return super().to_dict()
        return {
            "code": self.code,
            "message": f"{self.field}: {self.message}",
            "field": self.field,
            "errors": [{"field": self.field, "message": self.message}],
        }


class BrokerUnavailable(ServiceError):
    """The task broker refused a job's task after the commit; the job was taken back
    (``service.unit_of_work``), so nothing is acknowledged that was not queued."""

    status_code = 503
    code = "broker_unavailable"
    default_message = "the task broker is unavailable; the job was not queued, try again"
