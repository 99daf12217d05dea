"""Layering rules (docs/architecture.md): imports point down only.

    cli/ (composition root) -> api/, worker/ -> service/ -> sn_core/ (pure torch)

service/ and api/ (the API process, torch-free) may import exactly one sn_core module:
``sn_core.vocabulary``, the normalizer names (stdlib only; ``sn_core/__init__`` is lazy).

Imports are read from the source with ``ast`` at every depth (function-level imports included),
so a lazy import cannot hide a dependency that a module-level one would show.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"sn_core", "service", "worker", "api", "cli"}
# sn_core's only third-party imports; safetensors and yaml only inside the functions that use them.
SN_CORE_ALLOWED = {"sn_core", "torch", "numpy", "safetensors", "yaml"}
SN_CORE_LAZY = {"safetensors", "yaml"}
# The one sn_core module the torch-free layers (service/, api/) may import.
SN_CORE_SHARED = "sn_core.vocabulary"


def run_python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter on this checkout; its stdout, stripped."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


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
    assert run_python(code) == "[]"


def test_api_never_imports_worker_or_cli_at_any_depth():
    """The API process sends tasks by name: it never loads training code, nor the CLI."""
    for path in (ROOT / "api").rglob("*.py"):
        imported = top_level_imports(path, module_level_only=False)
        assert not imported & {"worker", "cli", "torch", "ray"}, (
            f"{path.relative_to(ROOT)} imports {imported & {'worker', 'cli', 'torch', 'ray'}}"
        )
        assert not sn_core_imports_beyond_vocabulary(path), path


def test_worker_never_imports_api_or_cli():
    for path in (ROOT / "worker").rglob("*.py"):
        imported = top_level_imports(path, module_level_only=False)
        assert not imported & {"api", "cli"}, f"{path.relative_to(ROOT)} imports {imported}"


def imported_modules(path: Path) -> set[str]:
    """Full dotted names of the modules a file imports, at every depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from a.b import c``: c may be a module a.b.c or an attribute of a.b.
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sn_core_imports_beyond_vocabulary(path: Path) -> set[str]:
    """The sn_core modules ``path`` imports other than ``sn_core.vocabulary`` (and its names)."""
    return {
        name
        for name in imported_modules(path)
        if name.split(".")[0] == "sn_core"
        and name != SN_CORE_SHARED
        and not name.startswith(SN_CORE_SHARED + ".")
    }


def test_the_torch_free_layers_use_sn_core_vocabulary_and_nothing_else_of_it():
    """The rule above can fail: service/ and api/ do read the shared names from sn_core."""
    users = [
        path
        for package in ("service", "api")
        for path in (ROOT / package).rglob("*.py")
        if "sn_core" in top_level_imports(path, module_level_only=False)
    ]
    assert users, "nothing in service/ or api/ imports sn_core.vocabulary"
    for path in users:
        assert not sn_core_imports_beyond_vocabulary(path), path


def test_sn_core_vocabulary_is_stdlib_only():
    path = ROOT / "sn_core" / "vocabulary.py"
    imported = top_level_imports(path, module_level_only=False)
    assert imported <= set(sys.stdlib_module_names), imported


def test_importing_the_service_and_the_api_loads_no_torch():
    """The API process (spec, settings, database, routes, UI) runs without the training stack,
    although it reads the normalizer names from sn_core: importing a package's vocabulary must
    not run the torch imports of ``sn_core/__init__``."""
    code = (
        "import sys, service.spec, service.history, api.app, api.client, sn_core; "
        "assert sn_core.NORMALIZERS; "
        "bad = {'torch', 'numpy', 'ray', 'worker', 'cli'} & {m.split('.')[0] for m in sys.modules};"
        " print(sorted(bad))"
    )
    assert run_python(code) == "[]"


def test_sn_core_names_resolve_lazily_and_keep_their_meaning():
    """``sn_core/__init__`` imports on first use: every name of ``__all__`` resolves, a submodule
    is an attribute, and ``sn_core.finalize`` stays the function even when the module of that
    name was imported first by another route (which sets the package attribute)."""
    code = (
        "import sys, sn_core.vocabulary; assert 'torch' not in sys.modules; "
        "import sn_core.checkpoint, sn_core; import sn_core.finalize as f; "
        "assert callable(sn_core.finalize) and f is sn_core.finalize, sn_core.finalize; "
        "assert sn_core.checkpoint.WEIGHTS_MEMBER and sn_core.zoo.build_model; "
        "ns = {}; exec('from sn_core import *', ns); "
        "missing = [n for n in sn_core.__all__ if n not in ns]; "
        "assert not missing and ns['finalize'] is sn_core.finalize, missing; "
        "assert sn_core.NORMALIZERS is sn_core.vocabulary.NORMALIZERS; "
        "assert not hasattr(sn_core, 'no_such_name'); print('ok')"
    )
    assert run_python(code) == "ok"


def test_the_python_client_depends_only_on_the_wire_schemas():
    """``api.client`` is what outside users import: httpx, pydantic and ``api.schemas`` only (no
    FastAPI, no database, no settings)."""
    project = {
        n
        for n in imported_modules(ROOT / "api" / "client.py")
        if n.split(".")[0] in PROJECT_PACKAGES
    }
    assert project and all(n == "api.schemas" or n.startswith("api.schemas.") for n in project), (
        project
    )
    schema_deps = {n.split(".")[0] for n in imported_modules(ROOT / "api" / "schemas.py")}
    assert not schema_deps & {"fastapi", "sqlalchemy", "worker", "cli", "torch"}, schema_deps


def test_project_modules_import_each_other_without_cycles():
    """No import cycle between the project's modules (the old CLI kept one alive with a
    bottom-of-file import)."""
    modules = {}
    for package in PROJECT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        targets = {m for m in imported_modules(path) if m in modules and m != name}
        # A submodule importing its own package's ``__init__`` (re-exports) is not a layer cycle.
        graph[name] = {target for target in targets if not name.startswith(target + ".")}
    on_path: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        on_path.append(node)
        for target in sorted(graph[node]):
            if target in on_path:
                cycle = on_path[on_path.index(target) :] + [target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in done:
                visit(target)
        on_path.pop()
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name)


def test_sn_core_never_reads_environment_variables():
    for path in (ROOT / "sn_core").rglob("*.py"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path


def test_service_imports_no_training_stack_and_no_upper_layer():
    """The API process loads service/ (spec, settings, database): no torch, Ray or worker, and
    of sn_core only its vocabulary."""
    forbidden = {"torch", "ray", "worker", "api"}
    for path in (ROOT / "service").rglob("*.py"):
        imported = top_level_imports(path, module_level_only=False)
        assert not imported & forbidden, f"{path.relative_to(ROOT)} imports {imported & forbidden}"
        assert not sn_core_imports_beyond_vocabulary(path), path


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
