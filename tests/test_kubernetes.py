"""The Kubernetes manifests (deploy/kubernetes/) agree with the code and with each other.

No cluster needed: the manifests are parsed with PyYAML and checked against what they name, as
test_deployment.py checks docker-compose.yml: Settings fields (pydantic-settings' environment
names), the ``normsearch`` and ``ray`` command lines (parsed by their own click commands, the
``ray start`` lines as KubeRay builds them from rayStartParams), the API's routes, the compose
file's image, and the names one object gives another (ConfigMap, Secret keys, claims, volumes,
labels, the head Service KubeRay creates).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from service.settings import get_settings
from tests.test_deployment import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    PYPROJECT,
    README,
    CommandLineError,
    interpolate,
    interpolate_tree,
    normsearch_cli,
    parse_cli,
    ray_cli,
    read_env_file,
    settings_env_names,
    settings_from,
    settings_reached_by,
    shell_commands,
)

REPO = Path(__file__).resolve().parents[1]
KUBE_DIR = REPO / "deploy" / "kubernetes"
SECRET_EXAMPLE = KUBE_DIR / "secret.yaml.example"
# The files `kubectl apply -f deploy/kubernetes/` reads (it skips other suffixes).
KUBECTL_SUFFIXES = (".yaml", ".yml", ".json")
RUNS_CLAIM = "normsearch-runs"
GPU = "nvidia.com/gpu"

# What a filled-in Secret holds, by key (the example only has placeholders): the shapes the
# settings expect, so the pods' environments can be loaded into Settings.
SAMPLE_SECRET_VALUES = {
    "database-url": "postgresql+psycopg://normsearch:pw@postgres.example:5432/normsearch",
    "broker-url": "redis://redis.example:6379/0",
    "ray-auth-token": "0123456789abcdef",
}


# --- helpers ---------------------------------------------------------------------------------


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE_DIR.iterdir() if p.suffix in KUBECTL_SUFFIXES)


def objects(kind: str | None = None) -> dict[tuple[str, str], dict]:
    """(kind, name) -> object, over every file kubectl applies plus the Secret example."""
    found: dict[tuple[str, str], dict] = {}
    for path in [*manifest_files(), SECRET_EXAMPLE]:
        for doc in load_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{path.name}: {key} defined twice"
            found[key] = doc
    return {k: v for k, v in found.items() if kind is None or k[0] == kind}


def get(kind: str, name: str) -> dict:
    found = objects(kind)
    assert (kind, name) in found, f"no {kind} {name} in deploy/kubernetes ({sorted(found)})"
    return found[(kind, name)]


def raycluster() -> dict:
    clusters = objects("RayCluster")
    assert len(clusters) == 1, sorted(clusters)
    cluster = next(iter(clusters.values()))
    assert cluster["apiVersion"] == "ray.io/v1"
    return cluster


def pod_templates() -> Iterator[tuple[str, dict]]:
    """(a name for messages, pod template) of every workload: Jobs, Deployments, Ray groups."""
    for (kind, name), obj in objects().items():
        if kind in ("Deployment", "Job"):
            yield name, obj["spec"]["template"]
    cluster = raycluster()
    yield "ray-head", cluster["spec"]["headGroupSpec"]["template"]
    for group in cluster["spec"]["workerGroupSpecs"]:
        yield f"ray-{group['groupName']}", group["template"]


def main_container(template: dict) -> dict:
    containers = template["spec"]["containers"]
    assert containers, "a pod without containers"
    return containers[0]  # KubeRay starts Ray in the first container


def workload_container(name: str) -> dict:
    templates = dict(pod_templates())
    assert name in templates, f"no workload {name} ({sorted(templates)})"
    return main_container(templates[name])


def head_service_address() -> str:
    """KubeRay's head Service is <cluster>-head-svc; the GCS port is the head's `port`."""
    cluster = raycluster()
    port = cluster["spec"]["headGroupSpec"]["rayStartParams"].get("port", "6379")
    return f"{cluster['metadata']['name']}-head-svc:{port}"


def container_environment(container: dict) -> dict[str, str]:
    """The environment the container gets: envFrom ConfigMaps, then env (literals; secretKeyRef
    values from SAMPLE_SECRET_VALUES, after checking the Secret has the key)."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"{container['name']}: envFrom {source}"
        environment.update(get("ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = str(variable["value"])
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        secret = get("Secret", ref["name"])
        assert ref["key"] in secret["stringData"], f"{variable['name']}: no key {ref['key']}"
        environment[variable["name"]] = SAMPLE_SECRET_VALUES[ref["key"]]
    return environment


def secret_refs(container: dict) -> dict[str, tuple[str, str]]:
    return {
        v["name"]: (v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
        for v in container.get("env", [])
        if "secretKeyRef" in (v.get("valueFrom") or {})
    }


def kuberay_ray_start(group: dict, *, head: bool) -> list[str]:
    """The `ray start` arguments KubeRay runs for a group: --head or --address=<head svc>,
    --block, and one --key=value per rayStartParams entry."""
    argv = ["start", "--head" if head else f"--address={head_service_address()}", "--block"]
    for key, value in (group.get("rayStartParams") or {}).items():
        assert isinstance(value, str), f"rayStartParams {key}: KubeRay wants strings"
        argv.append(f"--{key}={value}")
    return argv


def find_command(container: dict, program: str) -> list[str]:
    found = [w[1:] for w in shell_commands(container["command"]) if w[0] == program]
    assert len(found) == 1, f"expected one {program!r} command in {container['command']!r}"
    return found[0]


# --- the objects and their references --------------------------------------------------------


def test_manifests_parse_and_hold_the_layout():
    names = set(objects())
    expected = {
        ("ConfigMap", "normsearch-settings"),
        ("Secret", "normsearch-secrets"),
        ("PersistentVolumeClaim", RUNS_CLAIM),
        ("Job", "normsearch-migrate"),
        ("Deployment", "normsearch-api"),
        ("Service", "normsearch-api"),
        ("Deployment", "normsearch-worker"),
    }
    assert expected <= names, sorted(expected - names)
    groups = raycluster()["spec"]["workerGroupSpecs"]
    assert groups and all(g["groupName"] for g in groups)


def test_names_match_across_objects():
    """Every claim, ConfigMap, Secret key and volume a pod names exists; selectors select their
    templates; the API Service targets a port the API container declares."""
    for name, template in pod_templates():
        spec = template["spec"]
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                get("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        for container in spec["containers"]:
            container_environment(container)  # resolves every ConfigMap and Secret key
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: mount of unknown volume {mount['name']}"
    for (_, name), obj in objects("Deployment").items():
        labels = obj["spec"]["template"]["metadata"]["labels"]
        selector = obj["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{name}: selector selects no pod"
    service = get("Service", "normsearch-api")
    api = get("Deployment", "normsearch-api")
    assert (
        service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    )
    container_ports = {
        p["name"]: p["containerPort"] for p in workload_container("normsearch-api")["ports"]
    }
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in container_ports or target in container_ports.values(), target


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_only_through_secret_key_refs():
    """The Secret example holds placeholders and is not applied by `kubectl apply -f` on the
    directory; the database URL, broker URL and Ray token reach pods only via secretKeyRef, and
    no literal env value or ConfigMap entry looks like a secret."""
    assert SECRET_EXAMPLE.suffix not in KUBECTL_SUFFIXES
    secret = get("Secret", "normsearch-secrets")
    assert "data" not in secret
    assert set(secret["stringData"].values()) == {"change-me"}, "a real secret in the example"
    assert set(secret["stringData"]) == set(SAMPLE_SECRET_VALUES)
    for file in manifest_files():
        assert not any(doc["kind"] == "Secret" for doc in load_documents(file)), file.name
    secretive = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL|BROKER_URL|RESULT_BACKEND", re.I)
    for configmap in objects("ConfigMap").values():
        for key in configmap["data"]:
            assert not secretive.search(key), f"ConfigMap {configmap['metadata']['name']}: {key}"
    for name, template in pod_templates():
        for container in template["spec"]["containers"]:
            for variable in container.get("env", []):
                if secretive.search(variable["name"]):
                    assert "secretKeyRef" in (variable.get("valueFrom") or {}), (
                        f"{name}: {variable['name']} must come from a Secret"
                    )


def test_ray_processes_share_one_auth_token():
    """Token auth on the head, every worker group and the Celery worker's driver, one token."""
    refs = set()
    containers = {"normsearch-worker": workload_container("normsearch-worker")}
    cluster = raycluster()["spec"]
    containers["ray-head"] = main_container(cluster["headGroupSpec"]["template"])
    for group in cluster["workerGroupSpecs"]:
        containers[group["groupName"]] = main_container(group["template"])
    for name, container in containers.items():
        assert container_environment(container).get("RAY_AUTH_MODE") == "token", name
        assert "RAY_AUTH_TOKEN" in secret_refs(container), name
        refs.add(secret_refs(container)["RAY_AUTH_TOKEN"])
    assert len(refs) == 1, refs


# --- settings --------------------------------------------------------------------------------


def test_normsearch_variables_are_settings_fields():
    known = settings_env_names()
    configmap_text = (KUBE_DIR / "config.yaml").read_text()
    commented = re.findall(r"^\s*#\s*(NORMSEARCH_[A-Z0-9_]+):", configmap_text, re.M)
    assert commented, "config.yaml shows no optional setting"
    for variable in commented:
        assert variable in known, f"config.yaml: {variable} is no Settings field"
    for name, template in pod_templates():
        for container in template["spec"]["containers"]:
            for variable in container_environment(container):
                if variable.upper().startswith("NORMSEARCH_"):
                    assert variable.upper() in known, f"{name}: {variable} is no Settings field"


@pytest.mark.parametrize("name", ["normsearch-migrate", "normsearch-api", "normsearch-worker"])
def test_pod_environment_loads_into_settings(name, monkeypatch):
    environment = container_environment(workload_container(name))
    settings = settings_reached_by(name, environment, monkeypatch)
    assert settings.database_url == SAMPLE_SECRET_VALUES["database-url"]
    assert settings.broker_url == SAMPLE_SECRET_VALUES["broker-url"]


def test_paths_match_the_compose_file_and_the_image():
    """The ConfigMap's paths are the compose file's (and the Dockerfile's ENV)."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    data = get("ConfigMap", "normsearch-settings")["data"]
    for variable, value in compose["x-paths-env"].items():
        assert data.get(variable) == value, f"{variable}: {data.get(variable)} != {value}"


# --- commands and image ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("normsearch-migrate", ["db", "upgrade"]),
        ("normsearch-api", ["serve"]),
        ("normsearch-worker", ["worker"]),
    ],
)
def test_commands_are_normsearch_commands(name, expected):
    container = workload_container(name)
    try:
        path, params = parse_cli(
            normsearch_cli(), find_command(container, "normsearch"), "normsearch"
        )
    except CommandLineError as error:
        pytest.fail(f"{name}: {error}")
    assert path == expected
    if name == "normsearch-api":
        assert params["host"] == "0.0.0.0"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("http") == params["port"], "the container port is not the API's"


def test_one_image_for_every_pod_the_compose_one():
    compose = interpolate_tree(yaml.safe_load(COMPOSE_FILE.read_text()), read_env_file(ENV_EXAMPLE))
    compose_image = compose["services"]["api"]["image"]
    images = {
        container["image"]
        for _, template in pod_templates()
        for container in template["spec"]["containers"]
    }
    assert images == {compose_image}, images


def test_ray_version_is_the_pinned_one():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"ray(\[[^]]*\])?\s*==", d)]
    assert len(pins) == 1, pins
    assert raycluster()["spec"]["rayVersion"] == pins[0].partition("==")[2].strip()


# --- Ray -------------------------------------------------------------------------------------


def test_ray_start_params_are_ray_start_options():
    """The head runs control only (no CPUs, no GPUs for trials) on the port its container
    declares; the worker groups' `ray start` lines, as KubeRay builds them, parse."""
    cluster = raycluster()["spec"]
    head = cluster["headGroupSpec"]
    path, params = parse_cli(ray_cli(), kuberay_ray_start(head, head=True), "ray")
    assert path == ["start"] and params["head"]
    assert params["num_cpus"] == 0 and params["num_gpus"] == 0
    head_ports = {p["name"]: p["containerPort"] for p in main_container(head["template"])["ports"]}
    assert head_ports.get("gcs-server") == params["port"]
    assert head_service_address().endswith(f":{params['port']}")
    for group in cluster["workerGroupSpecs"]:
        path, params = parse_cli(ray_cli(), kuberay_ray_start(group, head=False), "ray")
        assert path == ["start"] and not params["head"]
        assert params["address"] == head_service_address()


def test_ray_probes_are_ray_health_checks():
    """The image has no wget (KubeRay's default probes): each Ray pod probes the head's GCS
    with `ray health-check`, the head on loopback, workers at the head Service."""
    cluster = raycluster()["spec"]
    head_port = head_service_address().rpartition(":")[2]
    pods = [(main_container(cluster["headGroupSpec"]["template"]), f"127.0.0.1:{head_port}")]
    pods += [
        (main_container(g["template"]), head_service_address()) for g in cluster["workerGroupSpecs"]
    ]
    for container, address in pods:
        for probe in ("readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            path, params = parse_cli(ray_cli(), command[1:], command[0])
            assert command[0] == "ray" and path == ["health-check"], command
            assert params["address"] == address, (container["name"], probe)


def test_worker_joins_the_head_service(monkeypatch):
    """The Celery worker joins the RayCluster at its head Service as a node without resources;
    the API and the migrations start no Ray."""
    worker = workload_container("normsearch-worker")
    environment = container_environment(worker)
    assert environment.get("RAY_ADDRESS") == head_service_address()
    assert settings_from(environment, monkeypatch).ray_address == head_service_address()
    start = [interpolate(word, environment) for word in find_command(worker, "ray")]
    path, params = parse_cli(ray_cli(), start, "ray")
    assert path == ["start"] and params["address"] == head_service_address()
    assert params["num_cpus"] == 0 and params["num_gpus"] == 0 and not params["block"]
    for name in ("normsearch-api", "normsearch-migrate"):
        assert "RAY_ADDRESS" not in container_environment(workload_container(name)), name


def test_gpu_limits_only_on_gpu_worker_groups():
    cluster = raycluster()["spec"]
    gpu_groups = []
    for group in cluster["workerGroupSpecs"]:
        limits = main_container(group["template"]).get("resources", {}).get("limits", {})
        if int(limits.get(GPU, 0)) >= 1:
            gpu_groups.append(group["groupName"])
    assert gpu_groups, "no worker group asks for GPUs"
    for name, template in pod_templates():
        for container in template["spec"]["containers"]:
            resources = container.get("resources", {})
            asks = {**resources.get("requests", {}), **resources.get("limits", {})}
            if name.removeprefix("ray-") not in gpu_groups:
                assert GPU not in asks, f"{name} asks for GPUs"


# --- storage ---------------------------------------------------------------------------------


def test_runs_claim_shared_at_the_runs_dir(monkeypatch):
    """Every pod that reads or writes searches (API, worker, Ray head and workers) mounts the
    one ReadWriteMany claim, writable, at its NORMSEARCH_RUNS_DIR; data roots are read-only."""
    claim = get("PersistentVolumeClaim", RUNS_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    sharers = {"normsearch-api", "normsearch-worker", "ray-head"}
    sharers |= {f"ray-{g['groupName']}" for g in raycluster()["spec"]["workerGroupSpecs"]}
    templates = dict(pod_templates())
    targets = set()
    for name in sorted(sharers):
        spec = templates[name]["spec"]
        container = main_container(templates[name])
        environment = container_environment(container)
        settings = settings_from(environment, monkeypatch)
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        runs_dir = str(settings.runs_dir)
        assert runs_dir in mounts, f"{name}: nothing mounted at {runs_dir}"
        assert claims.get(mounts[runs_dir]["name"]) == RUNS_CLAIM, f"{name}: {runs_dir}"
        assert not mounts[runs_dir].get("readOnly"), f"{name}: the runs dir must be writable"
        targets.add(runs_dir)
        for root in settings.data_roots:
            assert mounts.get(str(root), {}).get("readOnly"), f"{name}: {root} not read-only"
    assert len(targets) == 1, targets


# --- probes ----------------------------------------------------------------------------------


def test_api_probes_hit_routes_of_the_app(tmp_path, monkeypatch):
    container = workload_container("normsearch-api")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    for probe in probes.values():
        assert probe["port"] in ports or probe["port"] in ports.values(), probe
    # Liveness must not depend on the database or the broker (a DB outage would restart pods).
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"

    settings = settings_from(
        {
            "NORMSEARCH_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
            "NORMSEARCH_RUNS_DIR": str(tmp_path / "runs"),
            "NORMSEARCH_DATA_ROOTS": str(tmp_path),
            # Nothing listens on port 1: readiness must say the broker is down, liveness not.
            "NORMSEARCH_BROKER_URL": "redis://127.0.0.1:1/0",
        },
        monkeypatch,
    )
    get_settings.cache_clear()
    try:
        from fastapi.testclient import TestClient

        from api.app import create_app

        app = create_app(settings, run_reaper=False)
        with TestClient(app) as client:
            live = client.get(probes["livenessProbe"]["path"])
            ready = client.get(probes["readinessProbe"]["path"])
    finally:
        get_settings.cache_clear()
    assert live.status_code == 200, live.text[:200]
    assert ready.status_code == 503, ready.text[:200]
    checks = ready.json()["checks"]
    assert checks["database"] == "ok" and checks["broker"] != "ok", checks


# --- README ----------------------------------------------------------------------------------


def test_readme_applies_the_manifests_that_exist():
    text = README.read_text()
    commands = re.findall(r"kubectl apply (-f [^\n#]+)", text)
    assert commands, "README shows no `kubectl apply -f`"
    for command in commands:
        for target in re.findall(r"-f\s+(\S+)", command):
            assert (REPO / target).exists(), f"README applies {target}, which does not exist"
    assert "KubeRay" in text and "ReadWriteMany" in text
