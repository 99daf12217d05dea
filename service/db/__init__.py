"""The service database: SQLAlchemy 2 models, engine/session factories and Alembic migrations.

Entry points pass the database URL in (``Settings.database_url``); nothing here reads the
environment. The schema is created by the migrations in the top-level ``migrations/`` directory
(``normsearch db upgrade``), never by ``metadata.create_all``.
"""

from service.db.base import Base, JSONType, metadata, now
from service.db.session import make_engine, make_session_factory

__all__ = ["Base", "JSONType", "make_engine", "make_session_factory", "metadata", "now"]
