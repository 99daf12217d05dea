"""Job spec files: YAML or JSON on disk, validated into a ``JobSpec`` with one line per problem."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.errors import EXPECTED_FAILURE, error_line, fail


def load_spec_file(path: Path):
    """Parse a YAML or JSON job spec; on bad input, one ``error:`` line per problem on stderr
    (``FILE: field: reason``) and exit status 2."""
    import yaml
    from pydantic import ValidationError

    from service.spec import JobSpec, format_validation_error

    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise fail(f"spec file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"cannot read the spec file {path}: {error}") from None
    except yaml.YAMLError as error:
        raise fail(f"{path} is not valid YAML/JSON: {_yaml_reason(error)}") from None
    if not isinstance(raw, dict):
        raise fail(f"{path} must hold a mapping with at least model and dataset")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as error:
        for line in format_validation_error(error):
            error_line(f"{path}: {line}")
        raise typer.Exit(code=EXPECTED_FAILURE) from None


def _yaml_reason(error) -> str:
    """A YAML error's problem and where it is (without PyYAML's quoted source excerpt)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(error)
