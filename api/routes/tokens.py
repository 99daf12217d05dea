"""The caller's identity and API tokens (create, list, revoke). A raw token is returned once,
at creation; listings show its first characters only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from api.deps import CurrentUser, JsonBody, SessionDep
from api.schemas import ErrorBody, TokenCreate, TokenCreated, TokenOut, UserOut
from service import auth

router = APIRouter(tags=["tokens"])


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(user: CurrentUser, session: SessionDep) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in auth.list_tokens(session, user_id=user.id)]


@router.post(
    "/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses={
        400: {"model": ErrorBody, "description": "The body could not be read (not UTF-8)."},
        415: {"model": ErrorBody},
    },
)
def create_token(
    body: TokenCreate, user: CurrentUser, _json: JsonBody, session: SessionDep
) -> TokenCreated:
    """A new token for the caller (e.g. one per machine or CI job)."""
    raw, token = auth.create_token(session, user=user, name=body.name)
    return TokenCreated(**TokenOut.model_validate(token).model_dump(), token=raw)


@router.delete(
    "/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorBody, "description": "No such token of yours."}},
)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], user: CurrentUser, session: SessionDep
):
    auth.revoke_token(session, user_id=user.id, token_id=token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
