"""README's sn_core example runs as written (keeps the README true)."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_sn_core_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the example writes out/readme-ckpt
    try:
        namespace: dict = {}
        exec(compile(blocks[0], "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "out" / "readme-ckpt" / "model.safetensors").exists()
    import sn_core

    assert len(namespace["plan"]) == len(sn_core.switch_layers(namespace["model"])) > 0
    assert sn_core.fraction_fixed(namespace["model"]) == 1.0
