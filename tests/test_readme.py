"""README's sn_core example runs as written (keeps the README true)."""

from __future__ import annotations

import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

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


# A shell block README marks runnable: the marker on the line before its fence.
RUNNABLE = re.compile(
    r"^<!-- runnable(?:: (?P<needs>service))? -->\n```bash\n(?P<code>.*?)^```", re.S | re.M
)
REPO = README.parent


def runnable_blocks() -> list[tuple[str, str | None, str]]:
    """(an id, what the block needs: None or "service", its code) for each marked block."""
    blocks = []
    text = README.read_text()
    for match in RUNNABLE.finditer(text):
        line = text[: match.start()].count("\n") + 1
        blocks.append((f"README.md:{line}", match["needs"], match["code"]))
    return blocks


def test_readme_marks_its_runnable_blocks():
    """The markers are found (a typo would silently run nothing): a block without and one with
    a service; every bash block is marked or one of the known unmarked ones."""
    blocks = runnable_blocks()
    assert {needs for _, needs, _ in blocks} == {None, "service"}, blocks
    bash_blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    unmarked = [b for b in bash_blocks if b not in {code for _, _, code in blocks}]
    assert all("make demo" in b or "docker compose" in b for b in unmarked), unmarked


# The demo's search (examples/mlp_digits.yaml: 8 trials of 4 epochs, half of them at batch size 2,
# 719 steps an epoch, and its verification at batch size 2) is the suite's longest run. README's
# commands are what this test checks, so they run on a copy of the examples whose demo search is
# one seed at batch size 32. The spec itself is checked as shipped elsewhere
# (tests/service/test_limits.py validates every example; `make demo` runs it whole).
SHORTENED = {
    "mlp_digits.yaml": {
        "search": {"trials": {"seeds": [0], "batch_sizes": [32]}, "target_batch_size": 32}
    }
}


def _examples_copy(target: Path) -> None:
    """``examples/`` with the ``SHORTENED`` specs' fields replaced (deep-merged)."""
    import shutil

    import yaml

    def merge(base: dict, changes: dict) -> dict:
        for key, value in changes.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return base

    shutil.copytree(REPO / "examples", target)
    for name, changes in SHORTENED.items():
        spec = merge(yaml.safe_load((target / name).read_text()), changes)
        (target / name).write_text(yaml.safe_dump(spec, sort_keys=False))


def _fresh_directory(tmp_path: Path) -> Path:
    """An empty directory with only what README's commands name: ``examples/`` (a copy, see
    ``SHORTENED``) and a ``.venv`` (the project's own when there is one, else the environment
    running the tests)."""
    import sys

    home = tmp_path / "project"
    home.mkdir()
    _examples_copy(home / "examples")
    venv = REPO / ".venv" if (REPO / ".venv" / "bin" / "normsearch").exists() else Path(sys.prefix)
    (home / ".venv").symlink_to(venv)
    return home


def _run_block(code: str, cwd: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),  # the code under test, as the editable install of a clone
        **extra_env,
    }
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-euo", "pipefail", "-c", code],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    ("where", "needs", "code"), runnable_blocks(), ids=[b[0] for b in runnable_blocks()]
)
def test_readme_shell_block_runs_as_written(where, needs, code, tmp_path):
    """Each runnable block, as a new user pastes it into a new shell (no activated venv, no
    NORMSEARCH_* variables): every command succeeds."""
    home = _fresh_directory(tmp_path)
    if needs is None:
        done = _run_block(code, home, {})
    else:
        with _service(home / "runs") as url:
            done = _run_block(code, home, {"NORMSEARCH_URL": url})
    assert done.returncode == 0, f"{where}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if needs == "service":
        assert (home / "checkpoint.zip").is_file() and (home / "plan.yaml").is_file()
    else:
        assert (home / "out" / "mlp" / "plan.json").is_file()


@contextmanager
def _service(runs: Path):
    """The embedded stack as ``normsearch up`` runs it, on ``runs``, with ``runs/demo-token``."""
    import threading

    from cli.embedded import EmbeddedStack, embedded_config
    from cli.server import demo_token
    from service.settings import Settings
    from tests.support.ui import free_port

    config = embedded_config(
        Settings(runs_dir=runs), runs_dir=runs, host="127.0.0.1", port=free_port()
    )
    stack = EmbeddedStack(config, log_dir=runs / "logs")
    stop = threading.Event()
    supervisor = threading.Thread(target=stack.supervise, args=(stop,), daemon=True)
    try:
        stack.start(ready_timeout_s=120)
        supervisor.start()
        demo_token(config)
        yield config.base_url
    finally:
        stop.set()
        if supervisor.is_alive():
            supervisor.join()
        stack.stop()
