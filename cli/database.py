"""``normsearch db``: the service database's migrations (Alembic, via ``service.db.migrate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.errors import database_reason, fail

db_app = typer.Typer(help="The service database (migrations).", no_args_is_help=True)

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="SQLAlchemy database URL (default: NORMSEARCH_DATABASE_URL or the settings)."
    ),
]


def _database_url(url: str | None) -> str:
    if url is not None:
        return url
    from service.settings import get_settings

    return get_settings().database_url


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def db_upgrade(
    url: DatabaseUrlOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the migrations (creates the database tables; safe to run again)."""
    from alembic.util import CommandError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from service.db.migrate import current, upgrade

    url = _database_url(url)
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        upgrade(url, revision)
        typer.echo(f"{_shown(url)} is at revision {current(url) or 'none'}")
    except (ArgumentError, SQLAlchemyError, CommandError, OSError) as error:
        raise fail(f"cannot migrate {_shown_or_raw(url)}: {database_reason(error)}") from None


@db_app.command("current")
def db_current(url: DatabaseUrlOption = None) -> None:
    """Print the revision the database is at ("none": not migrated)."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from service.db.migrate import current

    url = _database_url(url)
    try:
        revision = current(url)
    except (ArgumentError, SQLAlchemyError) as error:
        shown = _shown_or_raw(url)
        raise fail(f"cannot open the database {shown}: {database_reason(error)}") from None
    typer.echo(revision or "none")


def _shown_or_raw(url: str) -> str:
    """The URL without its password; as given when it is not a URL at all."""
    try:
        return _shown(url)
    except Exception:  # not parseable: nothing in it to hide
        return url


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``normsearch`` app."""
    app.add_typer(db_app, name="db")
