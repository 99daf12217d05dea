"""One place that turns errors into responses: ``{"code", "message", "field"?}`` bodies.

Domain errors (``service.errors.ServiceError``) carry their status; request validation errors
become 422 naming every field at fault (``training.epochs``, not ``body -> training -> epochs``);
framework errors (404 route, 405, 413 body too large) keep their status with the same body shape;
a JSON body nested too deep is a 422 before it is parsed (``JsonDepthLimit``).
Unexpected exceptions are logged with their traceback and answered with a bare 500.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schemas import ErrorBody, ValidationErrorBody
from service.errors import ServiceError
from service.spec import error_message

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
    return {"field": field_path(error.get("loc", ())), "message": error_message(error)}


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


_JSON_SPECIAL = re.compile(rb'[\[\]{}"\\]')


def json_nesting_over(body: bytes, limit: int) -> bool:
    """Whether ``body``'s arrays and objects nest deeper than ``limit``, read from the bytes
    without parsing them: one pass over its brackets, quotes and backslashes, skipping what is
    inside strings (malformed JSON is left to the parser)."""
    depth, in_string, escaped_at = 0, False, -1
    for match in _JSON_SPECIAL.finditer(body):
        at, char = match.start(), match.group()
        if at == escaped_at:  # the character after a backslash, inside a string
            continue
        if in_string:
            if char == b"\\":
                escaped_at = at + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth = max(depth - 1, 0)
    return False


class JsonDepthLimit:
    """422 for a JSON request body nested deeper than ``max_depth``, before anything parses or
    serializes it: Python's parser and pydantic's serializer fail on deep nesting with errors
    that would otherwise end as a 500. Sits inside ``BodySizeLimit``, so what it buffers is
    bounded; bodies that declare a type other than JSON pass untouched."""

    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        content_type = dict(scope.get("headers") or ()).get(b"content-type", b"json")
        if b"json" not in content_type.lower():
            await self.app(scope, receive, send)
            return
        body, gone = await read_whole_body(receive)
        if gone is not None:  # the client went away
            await self.app(scope, replay_body(gone, receive), send)
            return
        if json_nesting_over(body, self.max_depth):
            reason = (
                f"JSON nested deeper than {self.max_depth} levels; the limit is "
                "NORMSEARCH_MAX_JSON_DEPTH"
            )
            error = {"type": "json_too_deep", "loc": ("body",), "msg": reason}
            await validation_response([error])(scope, receive, send)
            return
        replayed = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay_body(replayed, receive), send)


async def read_whole_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The request body, read to its end (for a middleware that must look at all of it before
    the app does), and None; or, when the client went away first, what was read and the
    disconnect message, to be replayed (``replay_body``)."""
    chunks, message = [], {"type": "http.request", "more_body": True}
    while message["type"] == "http.request" and message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks), (None if message["type"] == "http.request" else message)


def replay_body(first: Message, receive: Receive) -> Receive:
    """A ``receive`` that answers ``first`` once, then whatever ``receive`` answers."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


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
