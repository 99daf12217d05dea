"""Job spec files: YAML or JSON on disk, validated into a ``JobSpec`` with one line per problem."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.render import console


def load_spec_file(path: Path):
    """Parse a YAML or JSON job spec; exits with one line per problem on bad input."""
    import yaml
    from pydantic import ValidationError

    from service.spec import JobSpec, format_validation_error

    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise typer.BadParameter(f"spec file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise typer.BadParameter(f"{path} is not valid YAML/JSON: {error}") from None
    if not isinstance(raw, dict):
        raise typer.BadParameter(f"{path} must hold a mapping with at least model and dataset")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as error:
        for line in format_validation_error(error):
            console.print(f"[red]spec error[/red] {line}")
        raise typer.Exit(code=2) from None
