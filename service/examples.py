"""The example job specs (``examples/*.yaml`` at the project root) as templates for new jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.spec import JobSpec, applicable_dump

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


def load_examples(directory: Path = EXAMPLES_DIR) -> list[dict[str, Any]]:
    """``[{name, title, spec}]`` for every valid example; ``title`` is the file's first comment,
    ``spec`` has every default filled in but the dataset fields its kind has no use for."""
    examples = []
    for path in sorted(Path(directory).glob("*.yaml")):
        text = path.read_text()
        first = text.splitlines()[0] if text else ""
        title = first.lstrip("# ").strip() if first.startswith("#") else path.stem
        spec = JobSpec.model_validate(yaml.safe_load(text))
        examples.append({"name": path.stem, "title": title, "spec": applicable_dump(spec)})
    return examples
