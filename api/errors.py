"""One place that turns errors into responses: ``{"code", "message", "field"?}`` bodies.

Domain errors (``service.errors.ServiceError``) carry their status; request validation errors
become 422 naming every field at fault (``training.epochs``, not ``body -> training -> epochs``);
framework errors (404 route, 405, 413 body too large) keep their status with the same body shape.
Unexpected exceptions are logged with their traceback and answered with a bare 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schemas import ErrorBody, ValidationErrorBody
from service.errors import ServiceError

log = logging.getLogger(__name__)

# Where a request part is named in a validation location; dropped from the field path.
_LOCATION_PARTS = {"body", "query", "path", "header", "cookie"}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}

# Documented on every route (the app adds them to the OpenAPI document).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API token."},
    422: {"model": ValidationErrorBody, "description": "The request did not validate."},
}


def field_path(loc: tuple | list) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in _LOCATION_PARTS:
        parts = parts[1:]
    return ".".join(parts) or "(body)"


def _describe(error: dict[str, Any]) -> dict[str, str]:
    if error.get("type") == "json_invalid":  # loc is ("body", <character offset>)
        loc = error.get("loc", ())
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = (error.get("ctx") or {}).get("error", "")
        return {"field": "(body)", "message": f"malformed JSON{where}: {reason}".rstrip(": ")}
    return {"field": field_path(error.get("loc", ())), "message": str(error.get("msg", ""))}


def _error_list(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [_describe(e) for e in errors]


def validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    listed = _error_list(errors)
    message = "; ".join(f"{e['field']}: {e['message']}" for e in listed) or "invalid request"
    body = ValidationErrorBody(
        code="validation_error",
        message=message,
        field=listed[0]["field"] if listed else None,
        errors=listed,
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=422)


class BodySizeLimit:
    """413 with the usual error body for a request body over ``max_body_bytes``: at once when
    its Content-Length says so, or as soon as a streamed body crosses the limit (the app then
    sees a disconnect and its response is replaced by the 413)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self, declared: int | None = None) -> JSONResponse:
        size = f" ({declared} bytes)" if declared is not None else ""
        message = f"the request body{size} exceeds the limit of {self.max_body_bytes} bytes"
        return JSONResponse({"code": "payload_too_large", "message": message}, status_code=413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(int(declared))(scope, receive, send)
            return
        state = {"received": 0, "over": False, "answered": False}

        async def limited_receive() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body_bytes:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                if not state["answered"] and message["type"] == "http.response.start":
                    state["answered"] = True
                    await self._too_large()(scope, receive, send)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["answered"]:
            await self._too_large()(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, error: ServiceError) -> JSONResponse:
        headers = getattr(error, "headers", None)
        return JSONResponse(error.to_dict(), status_code=error.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return validation_response(list(error.errors()))

    @app.exception_handler(ValidationError)
    async def _pydantic_invalid(_request: Request, error: ValidationError) -> JSONResponse:
        return validation_response(list(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        message = error.detail if isinstance(error.detail, str) else code.replace("_", " ")
        return JSONResponse(
            {"code": code, "message": message},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"code": "internal_error", "message": "internal error"}, 500)
