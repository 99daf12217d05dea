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
