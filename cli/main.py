"""The ``normsearch`` command line: the composition root, the one package that imports every layer.

Commands are grouped by audience, each group in its own module: local searches (``cli.local``),
the service database (``cli.database``), the service processes (``cli.server``), API tokens
(``cli.tokens``) and the remote client (``cli.remote``).
"""

from __future__ import annotations

import typer

from cli import database, local, remote, server, tokens
from cli.errors import OneLineErrors

app = typer.Typer(
    help="normsearch: find which normalizer each layer of your network should use.",
    no_args_is_help=True,
    add_completion=False,
    cls=OneLineErrors,
)


@app.callback()
def main() -> None:
    """normsearch command line."""


for group in (local, database, server, tokens, remote):
    group.register(app)

if __name__ == "__main__":
    app()
