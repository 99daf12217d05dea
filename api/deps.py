"""Request dependencies as ``Annotated`` aliases: settings, the database session (the request's
unit of work: committed when the handler returns, then the tasks it queued are sent) and the
authenticated user.

State built once per app (engine, session factory, Celery app) lives on ``app.state`` and is set
by ``api.app.create_app``; tests build an app with their own ``Settings``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service import auth
from service.db.models import User
from service.errors import ServiceError
from service.settings import Settings
from service.unit_of_work import unit_of_work


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"
    default_message = "a valid API token is required (Authorization: Bearer <token>)"
    headers = {"WWW-Authenticate": "Bearer"}


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"
    default_message = "the request body must be JSON (Content-Type: application/json)"


# Trivial dependencies are ``async`` so they run on the event loop, not via a thread hop.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One unit of work per request (``service.unit_of_work``): committed when the handler
    returns without error, then the tasks the handler's service call queued are sent (a send
    the broker refuses takes its job back and answers 503); rolled back otherwise. Its scope is
    the handler (``SessionDep``), so all of this happens before the response is sent and a
    failure reaches the client, never a response for work that was not done."""
    state = request.app.state
    with unit_of_work(state.session_factory, state.celery) as session:
        yield session


_bearer = HTTPBearer(auto_error=False, description="An API token: `normsearch token create`.")


# Scope "function": the session's exit (commit, sends) runs when the handler returns, before the
# response is sent. Every dependency uses this one alias, so a request has one session.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_current_user(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    user = auth.authenticate(session, credentials.credentials)
    if user is None:
        raise Unauthorized("the API token is unknown or revoked")
    return user


def get_stream_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The user, authenticated in a short session of its own: a long response (an event
    stream) must not hold a pooled connection for its whole life."""
    with request.app.state.session_factory() as session:
        user = get_current_user(session, credentials)
        session.commit()
        return user


def still_authorized(session_factory, raw_token: str, user_id: int) -> bool:
    """Whether ``raw_token`` still authenticates ``user_id`` (not revoked, its user not deleted),
    checked in a short session of its own: a long response re-checks its token with this."""
    with session_factory() as session:
        user = auth.authenticate(session, raw_token)
        session.commit()  # last_used_at, at most once a minute
        return user is not None and user.id == user_id


async def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (before the body is parsed)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"the request body must be JSON (Content-Type: application/json), not "
            f"{media_type or 'unspecified'!r}"
        )


SettingsDep = Annotated[Settings, Depends(get_settings)]
# The raw bearer credentials (after StreamUser, which has checked them), for a stream that
# re-checks its token while it runs.
BearerCredentials = Annotated[HTTPAuthorizationCredentials, Depends(_bearer)]
CurrentUser = Annotated[User, Depends(get_current_user)]
StreamUser = Annotated[User, Depends(get_stream_user)]
# After CurrentUser in a signature: dependencies are solved in order, so 401 comes before 415.
JsonBody = Annotated[None, Depends(require_json)]
