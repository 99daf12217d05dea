"""``normsearch db``: the service database's migrations (Alembic, via ``service.db.migrate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    from sqlalchemy.engine import make_url

    from service.db.migrate import current, upgrade

    url = _database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    upgrade(url, revision)
    typer.echo(f"{_shown(url)} is at revision {current(url) or 'none'}")


@db_app.command("current")
def db_current(url: DatabaseUrlOption = None) -> None:
    """Print the revision the database is at ("none": not migrated)."""
    from service.db.migrate import current

    typer.echo(current(_database_url(url)) or "none")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``normsearch`` app."""
    app.add_typer(db_app, name="db")
