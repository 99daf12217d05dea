"""``python -m cli``: the ``normsearch`` command line without the console script on PATH."""

from cli.main import app

app(prog_name="normsearch")
