"""Database factories shared by the tests: plain functions that add and flush."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.db.models import User


def make_user(session: Session, name: str = "alice") -> User:
    user = User(name=name)
    session.add(user)
    session.flush()
    return user
