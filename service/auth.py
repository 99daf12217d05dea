"""API tokens: creation, authentication and revocation.

A raw token (``ns_`` + 43 URL-safe characters, 256 random bits) is shown once, at creation; the
database keeps its SHA-256 (a fast hash suffices for random secrets of this length) and its first
characters to tell tokens apart in listings. Nothing here logs a raw token.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.base import now
from service.db.models import ApiToken, User
from service.errors import NotFound

TOKEN_PREFIX = "ns_"
PREFIX_CHARS = 8
# last_used_at is refreshed at most this often, so authenticated reads do not each write a row.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def get_or_create_user(session: Session, *, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).one_or_none()
    if user is None:
        user = User(name=name)
        session.add(user)
        session.flush()
    return user


def create_token(session: Session, *, user: User, name: str = "default") -> tuple[str, ApiToken]:
    """A new token for ``user``: (the raw token, to show once; its stored row)."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id, name=name, token_hash=hash_token(raw), prefix=raw[:PREFIX_CHARS]
    )
    session.add(token)
    session.flush()
    return raw, token


def authenticate(session: Session, raw: str) -> User | None:
    """The user a raw token belongs to, or None (unknown or revoked token)."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = session.scalars(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(raw), ApiToken.revoked_at.is_(None)
        )
    ).one_or_none()
    if token is None:
        return None
    at = now()
    if token.last_used_at is None or at - token.last_used_at > LAST_USED_RESOLUTION:
        token.last_used_at = at
    return token.user


def list_tokens(session: Session, *, user_id: int) -> list[ApiToken]:
    return list(
        session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id))
    )


def revoke_token(session: Session, *, user_id: int, token_id: int) -> ApiToken:
    """Revoke one of the user's tokens (idempotent); another user's token is not found."""
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != user_id:
        raise NotFound(f"token {token_id} not found")
    if token.revoked_at is None:
        token.revoked_at = now()
    return token
