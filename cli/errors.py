"""How the command line fails: one line on stderr, ``error: <what went wrong>``, and exit status 2
for every expected failure (a bad argument, a missing or unreachable database, a bad spec file,
an unreachable server), so that a script can tell them from a crash and a terminal shows no
traceback or box that wraps the message.

``OneLineErrors`` is the ``normsearch`` app's click group: click's usage errors (exit status 2)
become one line naming the command's help, instead of typer's boxed, wrapped usage panel.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer 0.2x carries its own copy of click, whose exceptions its commands raise
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer: click itself
    from click import exceptions as click_exceptions

# Exit status of every expected failure (click's own for a usage error).
EXPECTED_FAILURE = 2


def one_line(message: str) -> str:
    """``message`` on one line (a library's message may hold newlines)."""
    return " ".join(str(message).split())


def error_line(message: str) -> None:
    """Print ``error: message`` on stderr, on one line however narrow the terminal (no rich
    wrapping: a pasted message must stay whole)."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


def fail(message: str, *, code: int = EXPECTED_FAILURE) -> typer.Exit:
    """Print ``message`` as the one error line; the exit to raise."""
    error_line(message)
    return typer.Exit(code=code)


def database_reason(error: BaseException) -> str:
    """The first line of a database error's own reason (the DBAPI's, else SQLAlchemy's)."""
    reason = str(getattr(error, "orig", None) or error).strip()
    return reason.splitlines()[0] if reason else type(error).__name__


def settings_problem(error: BaseException) -> str | None:
    """One line naming each environment variable whose value ``Settings`` refused (pydantic's
    ``ValidationError`` of the settings), or None for any other error."""
    if type(error).__name__ != "ValidationError" or getattr(error, "title", None) != "Settings":
        return None
    from service.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    problems = []
    for item in error.errors():
        if item.get("type") == "default_factory_not_called":  # a consequence, not a cause
            continue
        name = str(item["loc"][0]) if item.get("loc") else "?"
        field = Settings.model_fields.get(name)
        alias = field.validation_alias if field is not None else None
        variable = alias if isinstance(alias, str) else f"{prefix}{name}".upper()
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        problems.append(f"{variable}: {message}")
    return "invalid setting " + "; ".join(problems)


def _whole_short_help(group: Any) -> None:
    """Give every command under ``group`` its docstring's first paragraph on one line as its
    short help."""
    for command in getattr(group, "commands", {}).values():
        if command.short_help is None and command.help:
            first = command.help.split("\n\n", 1)[0].partition("\f")[0]
            command.short_help = one_line(first)
        _whole_short_help(command)


class OneLineErrors(TyperGroup):
    """The app's group: a click usage error is one line on stderr and exit status 2, and each
    command's line in a command list is its whole first paragraph (typer keeps the docstring's
    line breaks there, which cut a sentence short in a narrow column)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _whole_short_help(self)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click_exceptions.NoArgsIsHelpError as error:
            # a group without its command: the help itself (typer's rich help prints it while
            # the message is built), exit status 2 as click gives it
            if error.format_message():
                print(error.format_message(), file=sys.stderr)
            if not standalone_mode:
                raise
            sys.exit(error.exit_code)
        except click_exceptions.UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else "normsearch"
            error_line(f"{error.format_message()} (`{where} --help` shows the usage)")
            if not standalone_mode:
                raise
            sys.exit(error.exit_code)
        except click_exceptions.ClickException as error:
            error_line(error.format_message())
            if not standalone_mode:
                raise
            sys.exit(error.exit_code)
        except typer.Abort:
            error_line("aborted")
            if not standalone_mode:
                raise
            sys.exit(1)
        except Exception as error:
            problem = settings_problem(error)  # a bad NORMSEARCH_* value: one line, no traceback
            if problem is None or not standalone_mode:
                raise
            error_line(problem)
            sys.exit(EXPECTED_FAILURE)
        if not standalone_mode:
            return result
        # Not standalone, typer answers a raised ``typer.Exit`` with its code.
        sys.exit(result if isinstance(result, int) else 0)
