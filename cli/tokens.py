"""``normsearch token``: bootstrap API tokens straight in the service database (the first token
cannot come from the API, which needs one). The raw token is printed once, to stdout only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.errors import database_reason, fail

token_app = typer.Typer(help="API tokens (written to the service database).", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="SQLAlchemy database URL (default: NORMSEARCH_DATABASE_URL)."),
]


def _fail(message: str) -> typer.Exit:
    return fail(message)


def _session_factory(url: str | None):
    """The service database's sessions: ``--url``, else the settings' (the runs directory's
    SQLite file by default, as `normsearch up` uses). A missing or unreachable database is one
    line on stderr and exit status 2, never a traceback (nor a new empty SQLite file)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from service.db import make_engine, make_session_factory
    from service.db.migrate import current
    from service.settings import get_settings

    url = url or get_settings().database_url
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise _fail(f"not a database URL: {database_reason(error)}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        if not path.is_file():
            raise _fail(
                f"no database at {path.resolve()} (NORMSEARCH_RUNS_DIR, NORMSEARCH_DATABASE_URL "
                "or --url name it); start `normsearch up` once, or run `normsearch db upgrade`"
            )
    try:
        revision = current(url)
    except (ArgumentError, SQLAlchemyError) as error:
        shown = parsed.render_as_string(hide_password=True)
        raise _fail(f"cannot open the database {shown}: {database_reason(error)}") from None
    if revision is None:
        raise _fail("the database has no tables yet; run `normsearch db upgrade` first")
    return make_session_factory(make_engine(url))


@token_app.command("create")
def create(
    user: Annotated[str, typer.Option("--user", help="User name (created if new).")],
    name: Annotated[str, typer.Option("--name", help="A label for this token.")] = "cli",
    admin: Annotated[
        bool | None,
        typer.Option(
            "--admin/--no-admin",
            help="Make the user an admin (exempt from the quotas per user), or a plain user "
            "again; unset: the user stays as they are (new users are plain).",
        ),
    ] = None,
    url: UrlOption = None,
) -> None:
    """Create a user's API token and print it (shown once: store it now)."""
    from service import auth

    user = user.strip()
    if not user or len(user) > 100:
        raise _fail("--user must be 1 to 100 characters")
    with _session_factory(url)() as session, session.begin():
        owner = auth.get_or_create_user(session, name=user)
        if admin is not None:
            owner.is_admin = admin
        raw, _token = auth.create_token(session, user=owner, name=name)
    typer.echo(raw)
    if admin is not None:
        role = "an admin (exempt from the quotas)" if admin else "a plain user (quotas apply)"
        typer.echo(f"{user} is {role}", err=True)


@token_app.command("list")
def list_tokens(
    user: Annotated[str, typer.Option("--user", help="User name.")], url: UrlOption = None
) -> None:
    """List a user's tokens (prefix only)."""
    from sqlalchemy import select

    from service import auth
    from service.db.models import User

    with _session_factory(url)() as session:
        owner = session.scalars(select(User).where(User.name == user)).one_or_none()
        if owner is None:
            raise _fail(f"no user named {user!r}")
        for token in auth.list_tokens(session, user_id=owner.id):
            state = "revoked" if token.revoked_at else "active"
            typer.echo(f"{token.id}\t{token.prefix}…\t{token.name}\t{state}")


@token_app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (from `token list`).")],
    user: Annotated[str, typer.Option("--user", help="User name.")],
    url: UrlOption = None,
) -> None:
    """Revoke a token."""
    from sqlalchemy import select

    from service import auth
    from service.db.models import User
    from service.errors import NotFound

    with _session_factory(url)() as session, session.begin():
        owner = session.scalars(select(User).where(User.name == user)).one_or_none()
        try:
            if owner is None:
                raise NotFound(f"no user named {user!r}")
            auth.revoke_token(session, user_id=owner.id, token_id=token_id)
        except NotFound as error:
            raise _fail(error.message) from None
    typer.echo(f"revoked token {token_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
