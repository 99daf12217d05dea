"""The ``normsearch`` command line (entry point ``cli.main:app``)."""
