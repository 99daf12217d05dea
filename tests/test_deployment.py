"""The production deployment files agree with the code (no Docker needed).

docker-compose.yml, the Dockerfile, .dockerignore, .env.example and README's Configuration table
are checked against what they name: Settings fields (by pydantic-settings' environment-name
rules, derived from ``Settings.model_fields``), the ``normsearch`` and ``ray`` command lines
(parsed with their own click commands), the API's routes, and the torch pin of pyproject.toml.
The compose file is also validated against the Compose Specification's JSON schema (vendored by
the check-jsonschema package, so no network is needed).
"""

from __future__ import annotations

import importlib.resources
import inspect
import json
import re
import shlex
import shutil
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from service.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
README = REPO / "README.md"
PYPROJECT = REPO / "pyproject.toml"

SERVICES = {"postgres", "redis", "migrate", "api", "worker", "ray-head", "ray-worker"}
APP_SERVICES = ("migrate", "api", "worker", "ray-head", "ray-worker")
RUNS_SHARERS = ("api", "worker", "ray-head", "ray-worker")


# --- helpers ---------------------------------------------------------------------------------


def settings_env_names() -> dict[str, str]:
    """Environment variable name -> Settings field, by pydantic-settings' rules: a string
    validation alias (or each string of AliasChoices) is the name as it is; otherwise the
    prefix followed by the field name. Case-insensitive unless the model says otherwise."""
    config = Settings.model_config
    prefix = config.get("env_prefix", "")
    case_sensitive = config.get("case_sensitive", False)
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            candidates = [alias]
        elif isinstance(alias, AliasChoices):
            candidates = [choice for choice in alias.choices if isinstance(choice, str)]
        elif field.alias:
            candidates = [field.alias]
        else:
            candidates = [f"{prefix}{field_name}"]
        for name in candidates:
            names[name if case_sensitive else name.upper()] = field_name
    return names


class InterpolationError(ValueError):
    pass


_VARIABLE = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", re.S)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
    ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}."""

    def replace(match: re.Match) -> str:
        if match.group(1):
            return "$"
        if match.group(3):
            return env.get(match.group(3), "")
        braced = _BRACED.match(match.group(2))
        if braced is None:
            raise InterpolationError(f"bad substitution {match.group(0)!r}")
        name, operator, argument = braced.groups()
        is_set = name in env
        is_nonempty = bool(env.get(name))
        if operator is None:
            return env.get(name, "")
        present = is_nonempty if operator.startswith(":") else is_set
        if operator.endswith("-"):
            return env[name] if present else interpolate(argument, env)
        if operator.endswith("?"):
            if not present:
                raise InterpolationError(f"{name}: {argument}")
            return env[name]
        return interpolate(argument, env) if present else ""  # '+'

    return _VARIABLE.sub(replace, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(item, env) for key, item in node.items()}
    return node


def referenced_variables(text: str) -> dict[str, str | None]:
    """Variables the compose file substitutes -> their operator (None: plain)."""
    found: dict[str, str | None] = {}
    for match in _VARIABLE.finditer(text):
        if match.group(1):
            continue
        if match.group(3):
            found[match.group(3)] = None
            continue
        braced = _BRACED.match(match.group(2))
        assert braced, match.group(0)
        found[braced.group(1)] = braced.group(2)
    return found


def read_env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """KEY=VALUE lines of an env file; with ``commented``, also '# KEY=VALUE' examples."""
    pattern = r"^\s*(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$"
    values = {}
    for line in path.read_text().splitlines():
        match = re.match(pattern, line)
        if match and (commented or not match.group(1)):
            values[match.group(2)] = match.group(3).strip()
    return values


def service_environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def shell_commands(command: str | list[str]) -> list[list[str]]:
    """The simple commands a service's command runs (``sh -c "a && exec b"`` -> [a, b])."""
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        commands = []
        for segment in re.split(r"&&|\|\||;", argv[2]):
            words = shlex.split(segment)
            if words and words[0] == "exec":
                words = words[1:]
            if words:
                commands.append(words)
        return commands
    return [argv]


def find_command(service: dict, program: str) -> list[str]:
    found = [words[1:] for words in shell_commands(service["command"]) if words[0] == program]
    assert len(found) == 1, f"expected one {program!r} command in {service['command']!r}"
    return found[0]


class CommandLineError(Exception):
    """A command line that its program would reject (unknown command or option, bad value)."""


def parse_cli(group: Any, argv: list[str], prog: str) -> tuple[list[str], dict]:
    """Resolve ``argv`` through click (sub)commands and parse the options, as the program would
    before running. Duck-typed: typer ships its own copy of click. Returns the command path
    and the parsed params; raises CommandLineError where the program would refuse ``argv``."""
    command, path, rest = group, [prog], list(argv)
    while isinstance(getattr(command, "commands", None), dict):
        if not rest or rest[0].startswith("-"):
            raise CommandLineError(f"`{' '.join(path)}` needs a subcommand")
        name = rest.pop(0)
        if name not in command.commands:
            raise CommandLineError(
                f"`{' '.join(path)}` has no command {name!r} (has {sorted(command.commands)})"
            )
        command, path = command.commands[name], [*path, name]
    try:
        context = command.make_context(" ".join(path), rest, resilient_parsing=False)
    except Exception as error:
        if hasattr(error, "format_message"):  # click's (or typer's click's) UsageError
            message = f"`{' '.join([*path, *rest])}`: {error.format_message()}"
            raise CommandLineError(message) from error
        raise
    return path[1:], context.params


def normsearch_cli() -> Any:
    import typer

    from cli.main import app

    return typer.main.get_command(app)


def ray_cli() -> Any:
    from ray.scripts.scripts import cli

    return cli


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def settings_from(environment: Mapping[str, str], monkeypatch) -> Settings:
    """Settings as a container with ``environment`` (and nothing else) would load them."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("NORMSEARCH_") or name.upper() == "RAY_ADDRESS":
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings()


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(raw_compose, env_example) -> dict:
    """The compose file as docker compose sees it after `cp .env.example .env`."""
    return interpolate_tree(raw_compose, env_example)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_validates_against_the_compose_spec(compose):
    import jsonschema

    try:
        vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.fail("check-jsonschema (a dev dependency) ships the compose-spec schema: install it")
    schema = json.loads((vendored / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose)
    ]
    assert not errors, "\n".join(errors)


def test_all_services_present(services):
    assert set(services) >= SERVICES, sorted(SERVICES - set(services))


def test_app_services_share_one_image(services):
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, images
    for name in APP_SERVICES:
        build = services[name].get("build")
        assert build and build["context"] == ".", f"{name} does not build the repo's Dockerfile"
        declared = {arg for keyword, arg in dockerfile_instructions() if keyword == "ARG"}
        declared = {arg.split("=", 1)[0] for arg in declared}
        assert set(build.get("args", {})) <= declared, f"{name}: build args the Dockerfile lacks"


def test_substituted_variables_come_from_env_example(env_example):
    """`cp .env.example .env` is enough: every ${VAR} the compose file needs is given there or
    has a default; the required ones (${VAR:?...}) are all in .env.example."""
    variables = referenced_variables(COMPOSE_FILE.read_text())
    assert variables, "the compose file substitutes nothing (no .env-driven settings?)"
    for name, operator in variables.items():
        if operator in (None, "?", ":?"):
            assert name in env_example, f"${{{name}}} is required but not in .env.example"
    unused = set(env_example) - set(variables) - set(settings_env_names())
    assert not unused, f".env.example sets variables nothing reads: {sorted(unused)}"


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"])
def test_secrets_are_required_variables(raw_compose, env_example, secret):
    """No secret is written into the compose file: each comes from .env and must be set."""
    assert f"${{{secret}:?" in COMPOSE_FILE.read_text()
    env = {key: value for key, value in env_example.items() if key != secret}
    with pytest.raises(InterpolationError, match=secret):
        interpolate_tree(raw_compose, env)
    assert env_example[secret] in ("", "change-me"), f"a real secret in .env.example: {secret}"


def test_postgres_password_reaches_postgres_and_the_database_url(raw_compose, env_example):
    compose = interpolate_tree(raw_compose, {**env_example, "POSTGRES_PASSWORD": "pw-from-env"})
    services = compose["services"]
    assert service_environment(services["postgres"])["POSTGRES_PASSWORD"] == "pw-from-env"
    for name in ("migrate", "api", "worker"):
        url = service_environment(services[name])["NORMSEARCH_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and ":pw-from-env@postgres:" in url


def test_normsearch_variables_are_settings_fields(services):
    known = settings_env_names()
    examples = read_env_file(ENV_EXAMPLE, commented=True)
    sources = {f"services.{name}": service_environment(svc) for name, svc in services.items()}
    sources[".env.example"] = examples
    for source, environment in sources.items():
        for variable in environment:
            if variable.upper().startswith("NORMSEARCH_"):
                assert variable.upper() in known, f"{source}: {variable} is no Settings field"


def settings_reached_by(name: str, environment: dict, monkeypatch) -> Settings:
    """The Settings ``environment`` loads into, after asserting that each of its NORMSEARCH_
    variables changed its field from the default (a wrong name would be silently ignored:
    Settings has extra='ignore'); ``name`` says whose environment it is in a failure."""
    known = settings_env_names()
    settings = settings_from(environment, monkeypatch)
    for variable in environment:
        field = known.get(variable.upper())
        if field is None:
            continue
        default = Settings.model_fields[field].get_default(
            call_default_factory=True, validated_data={}
        )
        assert getattr(settings, field) != default, f"{name}: {variable} did not reach {field}"
    return settings


@pytest.mark.parametrize("name", ["migrate", "api", "worker"])
def test_service_environment_loads_into_settings(services, name, monkeypatch):
    """Every variable the compose file sets reaches its field (a wrong name would be silently
    ignored: Settings has extra='ignore')."""
    settings = settings_reached_by(name, service_environment(services[name]), monkeypatch)
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url.startswith("redis://redis:")


def test_worker_joins_the_ray_cluster(raw_compose, services, monkeypatch):
    ray_address = raw_compose["x-ray-address"]
    host, _, port = ray_address.partition(":")
    assert host == "ray-head" and port.isdigit()
    worker = services["worker"]
    worker_env = service_environment(worker)
    assert worker_env.get("RAY_ADDRESS") == ray_address
    assert settings_from(worker_env, monkeypatch).ray_address == ray_address
    # The driver needs a local raylet: the worker container joins as a node without resources.
    start = find_command(worker, "ray")
    start = [interpolate(word, worker_env) for word in start]  # the shell expands $RAY_ADDRESS
    path, params = parse_cli(ray_cli(), start, "ray")
    assert path == ["start"] and params["address"] == ray_address
    assert params["num_cpus"] == 0 and params["num_gpus"] == 0 and not params["block"]
    # The head listens where everyone connects.
    path, params = parse_cli(ray_cli(), find_command(services["ray-head"], "ray"), "ray")
    assert path == ["start"] and params["head"] and params["block"]
    assert params["port"] == int(port) and params["num_gpus"] == 0
    path, params = parse_cli(ray_cli(), find_command(services["ray-worker"], "ray"), "ray")
    assert path == ["start"] and params["address"] == ray_address and params["block"]
    assert not params["head"]
    for name in ("migrate", "api"):
        assert "RAY_ADDRESS" not in service_environment(services[name])


def test_ray_processes_share_one_auth_token(services):
    """Ray token auth on every Ray process, one token from .env (a node or driver without it
    is refused by the head's GCS)."""
    assert "${RAY_AUTH_TOKEN:?" in COMPOSE_FILE.read_text()
    tokens = set()
    for name in ("worker", "ray-head", "ray-worker"):
        environment = service_environment(services[name])
        assert environment.get("RAY_AUTH_MODE") == "token", name
        tokens.add(environment.get("RAY_AUTH_TOKEN"))
    assert len(tokens) == 1 and None not in tokens and "" not in tokens


def test_ray_head_healthcheck_is_a_ray_command(raw_compose, services):
    test = services["ray-head"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    path, params = parse_cli(ray_cli(), test[2:], test[1])
    assert path == ["health-check"]
    port = raw_compose["x-ray-address"].rpartition(":")[2]
    assert params["address"] == f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("migrate", ["db", "upgrade"]), ("api", ["serve"]), ("worker", ["worker"])],
)
def test_commands_are_normsearch_commands(services, name, expected):
    """The commands resolve to typer commands of `normsearch` with options that exist."""
    argv = find_command(services[name], "normsearch")
    try:
        path, params = parse_cli(normsearch_cli(), argv, "normsearch")
    except CommandLineError as error:
        pytest.fail(f"{name}: {error}")
    assert path == expected
    if name == "api":
        assert params["host"] == "0.0.0.0"
        published = {str(port).rsplit(":", 1)[-1] for port in services["api"]["ports"]}
        assert str(params["port"]) in published


def test_api_healthcheck_is_a_route_of_the_app(services, tmp_path, monkeypatch):
    api = services["api"]
    test = " ".join(api["healthcheck"]["test"])
    match = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[^'\"\s]*)", test)
    assert match, f"no local URL in the api healthcheck {test!r}"
    port, path = int(match.group(1)), match.group(2)
    _, params = parse_cli(normsearch_cli(), find_command(api, "normsearch"), "normsearch")
    assert port == params["port"], "the healthcheck probes another port than the API listens on"
    assert path == "/healthz"

    settings = settings_from(
        {
            "NORMSEARCH_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
            "NORMSEARCH_RUNS_DIR": str(tmp_path / "runs"),
            "NORMSEARCH_DATA_ROOTS": str(tmp_path),
        },
        monkeypatch,
    )
    get_settings.cache_clear()
    try:
        from fastapi.testclient import TestClient

        from api.app import create_app

        parameters = inspect.signature(create_app).parameters
        options = {"run_reaper": False} if "run_reaper" in parameters else {}
        app = create_app(settings, **options) if parameters else create_app()
        # No lifespan (no `with`): liveness must answer without the database or the broker.
        response = TestClient(app).get(path)
    finally:
        get_settings.cache_clear()
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:200]}"


def test_gpu_reservation_on_ray_worker_only(services):
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])
        for device in devices
    ), devices
    for name, service in services.items():
        if name != "ray-worker":
            assert "deploy" not in service and "gpus" not in service, f"{name} reserves GPUs"


def test_start_order(services):
    def condition(name: str, on: str) -> str | None:
        depends = services[name].get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        return (depends.get(on) or {}).get("condition")

    assert condition("migrate", "postgres") == "service_healthy"
    for name in ("api", "worker"):
        assert condition(name, "migrate") == "service_completed_successfully"
        assert condition(name, "redis") == "service_healthy"
    assert condition("worker", "ray-head") == "service_healthy"
    assert condition("ray-worker", "ray-head") == "service_healthy"
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
    assert services["migrate"].get("restart", "no") == "no", "a one-shot must not restart"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def _volume(service: dict, target: str | None = None, source: str | None = None) -> dict:
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            volume = {"source": parts[0], "target": parts[1], "read_only": "ro" in parts[2:]}
        if (target is None or volume["target"] == target) and (
            source is None or volume["source"] == source
        ):
            return volume
    raise AssertionError(f"no volume {source or ''}:{target or ''} in {service.get('volumes')}")


def test_runs_volume_shared_at_the_runs_dir(compose, services, monkeypatch):
    assert "runs" in compose["volumes"], "the runs volume must be a named volume"
    targets = set()
    for name in RUNS_SHARERS:
        environment = service_environment(services[name])
        runs_dir = environment.get("NORMSEARCH_RUNS_DIR")
        assert runs_dir, f"{name} has no NORMSEARCH_RUNS_DIR"
        volume = _volume(services[name], source="runs")
        assert volume["target"] == runs_dir, f"{name}: runs volume at {volume['target']}"
        assert not volume["read_only"], f"{name}: the runs volume must be writable"
        targets.add(volume["target"])
        # The data roots: every root is a read-only mount.
        roots = settings_from(environment, monkeypatch).data_roots
        assert roots, name
        for root in roots:
            assert _volume(services[name], target=str(root))["read_only"], f"{name}: {root} rw"
    assert len(targets) == 1, f"the runs volume is mounted at different paths: {targets}"


# --- Dockerfile and .dockerignore ------------------------------------------------------------


def torch_pin() -> str:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"torch\s*[=<>!~]", d)]
    assert len(pins) == 1 and "==" in pins[0], f"torch must be pinned exactly: {pins}"
    return pins[0].replace(" ", "")


def test_dockerfile_installs_pinned_torch_first():
    instructions = dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    args = {arg.split("=", 1)[0]: arg.partition("=")[2] for k, arg in instructions if k == "ARG"}
    assert args.get("TORCH_INDEX_URL", "").startswith("https://download.pytorch.org/whl/")
    pin = torch_pin()
    torch_runs = [i for i, run in enumerate(runs) if "torch==" in run]
    assert len(torch_runs) == 1, "install torch in one RUN"
    torch_run = runs[torch_runs[0]]
    assert re.search(rf"[\"' ]{re.escape(pin)}[\"' ]?", torch_run + " "), (pin, torch_run)
    assert re.search(r"--index-url[ =]\"?\$\{?TORCH_INDEX_URL\}?", torch_run), torch_run
    project_runs = [i for i, run in enumerate(runs) if re.search(r"pip install .*(-r |-e )", run)]
    assert project_runs and min(project_runs) > torch_runs[0], "torch must come first"


def test_dockerfile_ships_migrations_with_the_code():
    """`normsearch db upgrade` finds migrations/ beside the packages (service/db/migrate.py):
    the image copies alembic.ini, migrations/ and every package into WORKDIR and installs the
    project in place there (-e), so that path exists in the container."""
    from service.db import migrate

    assert migrate.MIGRATIONS_DIR == REPO / "migrations"
    instructions = dockerfile_instructions()
    workdirs = [args for keyword, args in instructions if keyword == "WORKDIR"]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    copied = {}
    for keyword, args in instructions:
        if keyword == "COPY" and not args.startswith("--from"):
            words = [w for w in args.split() if not w.startswith("--")]
            for source in words[:-1]:
                copied[source.rstrip("/")] = words[-1]
    include = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in include["include"]}
    for needed in {"alembic.ini", "migrations", "pyproject.toml", "README.md"} | packages:
        assert needed in copied, f"the Dockerfile does not copy {needed}"
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert any(re.search(r"pip install .*-e \.(\s|$)", run) for run in runs), (
        "install the project editable from WORKDIR (a copy in site-packages has no migrations/)"
    )


def test_dockerfile_runs_as_non_root_without_secrets():
    instructions = dockerfile_instructions()
    assert instructions[0][0] in ("ARG", "FROM")
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) >= 1 and "python:" in froms[0]
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    for keyword, args in instructions:
        if keyword in ("ARG", "ENV"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN", args, re.I), f"{keyword} {args}"
    cmd = [args for keyword, args in instructions if keyword == "CMD"]
    assert cmd and json.loads(cmd[-1])[0] == "normsearch"


def _docker_context(paths: list[str], tmp_path: Path) -> set[str]:
    """What ``docker build`` would send of a context holding ``paths`` (empty files), by the
    Docker SDK's own .dockerignore implementation (not a copy of the rules)."""
    from docker.utils.build import exclude_paths

    for path in paths:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    shutil.copy(DOCKERIGNORE, tmp_path / ".dockerignore")
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return set(exclude_paths(str(tmp_path), patterns, dockerfile="Dockerfile"))


def test_dockerignore_keeps_what_the_image_needs_and_drops_secrets(tmp_path):
    include = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in include["include"]} | {"migrations"}
    files = [
        p.relative_to(REPO).as_posix()
        for package in sorted(packages)
        for p in (REPO / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert all(any(f.startswith(package + "/") for f in files) for package in packages), packages
    needed = ["alembic.ini", "pyproject.toml", "README.md"]
    dropped = [".env", ".git/config", ".venv/bin/python", "runs/normsearch.db"]
    sent = _docker_context(files + needed + dropped, tmp_path)
    missing = sorted(set(files + needed) - sent)
    assert not missing, f".dockerignore drops {missing[:5]}"
    for path in dropped:
        assert path not in sent, f".dockerignore must exclude {path}"


# --- README ----------------------------------------------------------------------------------


def configuration_section() -> str:
    text = README.read_text()
    match = re.search(r"^## Configuration\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, "README has no '## Configuration' section"
    return match.group(1)


def _default_spellings(value: Any) -> set[str]:
    if isinstance(value, list):
        return {", ".join(str(item) for item in value)}
    if isinstance(value, float) and value.is_integer():
        return {str(value), str(int(value))}
    return {str(value)}


def test_readme_documents_every_setting():
    section = configuration_section()
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|\n]*)\|", section, re.M)
    }
    documented = set(rows)
    known = settings_env_names()
    for name, field_name in known.items():
        field = Settings.model_fields[field_name]
        # validated_data: for a default derived from another field (the database URL from the
        # runs directory), from that field's default.
        default = field.get_default(call_default_factory=True, validated_data={})
        if name in rows and default is not None:
            cell = rows[name]
            assert any(
                f"`{text}`" in cell or cell.strip() == text for text in _default_spellings(default)
            ), f"README: the default of {name} is {default!r}, the table says {cell.strip()!r}"
    missing = sorted(set(known) - documented)
    assert not missing, f"README's Configuration table lacks {missing}"
    stale = sorted(
        name for name in documented if name.startswith("NORMSEARCH_") and name not in known
    )
    assert not stale, f"README documents settings that do not exist: {stale}"
    assert "docker compose up -d" in section


def test_readme_token_command_exists():
    section = configuration_section()
    match = re.search(r"docker compose run --rm api normsearch ([^`#\n]+)", section)
    assert match, "README shows no first-token command"
    try:
        parse_cli(normsearch_cli(), shlex.split(match.group(1)), "normsearch")
    except CommandLineError as error:
        pytest.fail(str(error))
