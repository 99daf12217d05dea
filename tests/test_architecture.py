"""Layering rules from ARCHITECTURE.md: imports point down only."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"sn_core", "service", "worker", "api"}
# sn_core's only third-party imports; safetensors and yaml only inside the functions that use them.
SN_CORE_ALLOWED = {"sn_core", "torch", "numpy", "safetensors", "yaml"}
SN_CORE_LAZY = {"safetensors", "yaml"}


def top_level_imports(path: Path, *, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_sn_core_imports_only_torch_numpy_and_stdlib():
    stdlib = set(sys.stdlib_module_names)
    for path in (ROOT / "sn_core").rglob("*.py"):
        imported = top_level_imports(path, module_level_only=False) - stdlib
        assert imported <= SN_CORE_ALLOWED, f"{path.relative_to(ROOT)} imports {imported}"
        eager = top_level_imports(path, module_level_only=True) & SN_CORE_LAZY
        assert not eager, f"{path.relative_to(ROOT)} imports {eager} at module level"


def test_importing_sn_core_loads_no_other_layer_or_optional_format_library():
    code = (
        "import sys, sn_core; bad = {'service', 'worker', 'api', 'yaml', 'safetensors', "
        "'sklearn'} & {m.split('.')[0] for m in sys.modules}; print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_api_never_imports_worker_at_module_level():
    for path in (ROOT / "api").rglob("*.py"):
        assert "worker" not in top_level_imports(path, module_level_only=True), path


def test_sn_core_never_reads_environment_variables():
    for path in (ROOT / "sn_core").rglob("*.py"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path


def test_service_imports_no_training_stack_and_no_upper_layer():
    """The API process loads service/ (spec, settings, database): no torch, Ray or worker."""
    forbidden = {"torch", "ray", "worker", "api", "sn_core"}
    for path in (ROOT / "service").rglob("*.py"):
        imported = top_level_imports(path, module_level_only=False)
        assert not imported & forbidden, f"{path.relative_to(ROOT)} imports {imported & forbidden}"


# Counts every Celery app the process builds (even one garbage-collected since).
_COUNT_CELERY_APPS = """
import celery
built = []
_init = celery.Celery.__init__
def _counting(self, *args, **kwargs):
    built.append(1)
    _init(self, *args, **kwargs)
celery.Celery.__init__ = _counting
"""


def run_python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter on this checkout; its stdout, stripped."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_api_builds_no_celery_app_until_create_app():
    code = _COUNT_CELERY_APPS + (
        "import api.app, api.deps, api.routes.jobs, service.reaper, service.unit_of_work\n"
        "print(len(built))\n"
        "from service.settings import Settings\n"
        "api.app.create_app(Settings(database_url='sqlite://', broker_url='memory://'))\n"
        "print(len(built))\n"
    )
    assert run_python(code).split() == ["0", "1"]


def test_the_celery_modules_read_no_settings_at_import():
    """With a setting that cannot be parsed in the environment, importing the Celery app module
    and the worker's tasks still works (and builds no app): they read no settings."""
    code = _COUNT_CELERY_APPS + (
        "import service.celery_app, service.dispatch, worker.tasks\n"
        "print(len(built))\n"
        "from service.settings import Settings\n"
        "try:\n"
        "    Settings()\n"
        "except ValueError:\n"
        "    print('unreadable')\n"
    )
    assert run_python(code, NORMSEARCH_TASK_TIME_LIMIT_S="not-a-number").split() == [
        "0",
        "unreadable",
    ]
