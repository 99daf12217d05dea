"""Property-based test of the whole HTTP API against its own OpenAPI document (schemathesis).

Every operation of ``/api/v1/openapi.json`` (plus ``/healthz``, ``/readyz``, ``/metrics``) is
called in-process (schemathesis' ASGI transport) on a fresh app of the real ``create_app`` over
the module's migrated Postgres database, with a valid bearer token, and each response is checked:

- ``not_a_server_error``: no 5xx, whatever the input;
- ``status_code_conformance``: the status is one the operation documents;
- ``content_type_conformance``: the content type is one documented for that status;
- ``response_schema_conformance``: the body validates against the documented schema;
- ``response_headers_conformance``: documented response headers are present and valid.

Phases: ``examples`` (the schema's examples), ``coverage`` (boundary and invalid values for each
parameter, deterministic) and ``fuzzing`` (Hypothesis, positive and negative data,
``max_examples`` per operation). Reproducible: a fixed seed (each operation's seed is derived
from it and the operation's label), ``deterministic`` (Hypothesis ``derandomize``), no example
database, ``deadline=None``.

Job-scoped operations reach their handlers with real jobs: a ``flatmap_path_parameters`` hook
draws ``job_id`` from the seeded jobs (succeeded with history and artifacts, queued, failed,
cancelled, another user's) as well as from the generated (unknown) ids, and a
``flatmap_body`` hook mixes a valid spec into ``POST /jobs`` bodies (generated specs hardly ever
pass the spec's own validators: known architecture, dataset path). Destructive operations
are kept away from the jobs and token the other operations need (``_guard``, which also covers
the coverage phase, where hooks do not apply): ``DELETE /jobs/{id}`` only ever deletes jobs
seeded to be deleted, ``DELETE /tokens/{id}`` never revokes the token the test runs with.

Beyond what the fuzzer draws, an explicit set of abusive specs goes through the same checks on
``POST /jobs`` and ``POST /spec/validate`` and must each be a 422 naming the field: a huge
integer (2^63, 10^30, -2^63-1) in every integer field of the spec's JSON Schema and of every
built-in architecture's ``model.kwargs`` (found by walking the schemas, so a new field is
covered without naming it here), and nesting past the depth limit (33 and 300 levels) in
``model.kwargs``, in a typed object, in a list and under an unknown key.

The event stream (``GET /jobs/{id}/events``) streams until its job is finished: it is called only
for finished jobs (the succeeded one, which no operation can change: cancel and retry answer 409,
and it is never deleted), for another user's job (403) and for unknown ids (404); an unfinished
job would hold the request open for ever. The request timeout is a safety net only.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import checks as schemathesis_checks
from schemathesis.python import asgi as schemathesis_asgi

from api.app import create_app
from service import auth, jobs, repositories
from service.db import make_engine, make_session_factory
from tests.support.api import bearer, tiny_spec

SEED = 20240611
MAX_EXAMPLES = 25
LAYERS, STEPS = 4, 6

CHECK_NAMES = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
]
# Exploration: more of schemathesis' checks by name, e.g.
# NORMSEARCH_SCHEMATHESIS_EXTRA_CHECKS=negative_data_rejection,positive_data_acceptance
EXTRA_CHECKS = [
    name.strip()
    for name in os.environ.get("NORMSEARCH_SCHEMATHESIS_EXTRA_CHECKS", "").split(",")
    if name.strip()
]
CHECKS = [getattr(schemathesis_checks, name) for name in CHECK_NAMES + EXTRA_CHECKS]

# Operations that must have been answered with these statuses by the end of the run: proof
# that the fuzzer reached the handlers with the seeded jobs (and the auth worked), not only
# 404s for made-up ids and 422s.
MUST_REACH = {
    "GET /api/v1/jobs": {200},
    "POST /api/v1/jobs": {201, 422},
    "POST /api/v1/spec/validate": {200, 422},
    "GET /api/v1/jobs/{job_id}": {200, 404},
    "GET /api/v1/jobs/{job_id}/trials": {200},
    "GET /api/v1/jobs/{job_id}/ratios": {200},
    "GET /api/v1/jobs/{job_id}/metrics": {200},
    "GET /api/v1/jobs/{job_id}/events": {200, 403, 404},
    "GET /api/v1/jobs/{job_id}/artifacts": {200},
    "GET /api/v1/jobs/{job_id}/artifacts/{kind}": {200, 409},
    "GET /api/v1/jobs/{job_id}/recommendation": {200, 409},
    "GET /api/v1/jobs/{job_id}/checkpoint": {200},
    "GET /api/v1/jobs/{job_id}/search-checkpoint": {200},
    "GET /api/v1/jobs/{job_id}/report": {200},
    "POST /api/v1/jobs/{job_id}/cancel": {200, 409},
    "POST /api/v1/jobs/{job_id}/retry": {200, 409},
    "DELETE /api/v1/jobs/{job_id}": {204},
    "GET /api/v1/me": {200},
    "POST /api/v1/tokens": {201},
}


SPEC_PATHS = ("/api/v1/jobs", "/api/v1/spec/validate")


def _nested(depth: int) -> dict:
    root: dict = {}
    inner = root
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return root


# Probes of issue 11: model.kwargs nested 300 deep (a 500 once), integers past 64 bits, 1056
# trials (over NORMSEARCH_MAX_TRIALS), duplicate baselines. Deeper nesting is tested in
# test_api_limits.py: Python's own encoder, which schemathesis uses, gives up near 1000 levels.
ABUSIVE_SPECS = [
    tiny_spec(model={"arch": "resnet20", "kwargs": _nested(300)}),
    tiny_spec(verify={"epochs": 10**30}),
    tiny_spec(model={"arch": "resnet20", "num_classes": 2**64}),
    tiny_spec(dataset={"kind": "synthetic", "num_samples": 10**9}),
    tiny_spec(
        training={"epochs": 1, "batch_size": 32, "lr": 0.001, "lr_scaling": "none"},
        search={
            "trials": {
                "seeds": list(range(16)),
                "batch_sizes": [1, 2, 4, 8, 16, 32, 64, 128],
                "lrs": [0.001 * n for n in range(1, 9)],
            }
        },
    ),
    tiny_spec(verify={"baselines": ["bn"] * 1000}),
]


# Integers past every bound a field could have: past int64 (the database's widest column, and
# where a C conversion overflows), far past it, and below int64.
HUGE_INTEGERS = [2**63, 10**30, -(2**63) - 1]
DEEP = [33, 300]  # just past NORMSEARCH_MAX_JSON_DEPTH's default, and the probe


def integer_paths(schema: dict) -> list[tuple[str, ...]]:
    """Every integer field of a JSON Schema, as a path ("[]" for an array's items), found by
    walking its properties, arrays, unions and references: a field added to the spec is fuzzed
    without this test naming it."""
    definitions = schema.get("$defs", {})
    found: list[tuple[str, ...]] = []

    def walk(node: dict, path: tuple[str, ...]) -> None:
        while "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[-1]]
        for alternative in node.get("anyOf", []) + node.get("oneOf", []) + node.get("allOf", []):
            walk(alternative, path)
        if node.get("type") == "integer" and path not in found:
            found.append(path)
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            walk(node["items"], (*path, "[]"))
        for name, child in node.get("properties", {}).items():
            walk(child, (*path, name))

    walk(schema, ())
    return found


def with_value(spec: dict, path: tuple[str, ...], value) -> dict:
    """A deep copy of ``spec`` with ``value`` at ``path`` (objects made on the way; "[]" makes a
    one-item list)."""
    spec = json.loads(json.dumps(spec))
    node = spec
    for index, key in enumerate(path[:-1]):
        if path[index + 1] == "[]":
            node[key] = [None]
            node = node[key]
            continue
        if key == "[]":
            node[0] = node[0] if isinstance(node[0], dict) else {}
            node = node[0]
            continue
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if path[-1] == "[]":
        node[0] = value
    else:
        node[path[-1]] = value
    return spec


def huge_integer_specs() -> list[tuple[str, dict]]:
    """(label, spec): a valid spec with one integer field, of the spec or of a built-in
    architecture's ``model.kwargs``, set to each of ``HUGE_INTEGERS``."""
    from service.spec import _KWARGS_MODELS, JobSpec

    base = tiny_spec()
    cases = []
    for path in integer_paths(JobSpec.model_json_schema()):
        for value in HUGE_INTEGERS:
            cases.append((f"{'.'.join(path)}={value}", with_value(base, path, value)))
    for arch, kwargs_model in sorted(_KWARGS_MODELS.items()):
        for path in integer_paths(kwargs_model.model_json_schema()):
            for value in HUGE_INTEGERS:
                spec = {**base, "model": {"arch": arch, "kwargs": with_value({}, path, value)}}
                cases.append((f"{arch}.kwargs.{'.'.join(path)}={value}", spec))
    return cases


def deep_specs() -> list[tuple[str, dict]]:
    """(label, spec): nesting past the depth limit where a spec holds free-form objects
    (``model.kwargs``), where it holds typed objects and lists, and under an unknown key."""
    base = tiny_spec()
    cases = []
    for depth in DEEP:
        nested_list: list = []
        for _ in range(depth):
            nested_list = [nested_list]
        cases += [
            (f"model.kwargs nested {depth}", with_value(base, ("model", "kwargs"), _nested(depth))),
            (f"dataset nested {depth}", with_value(base, ("dataset", "extra"), _nested(depth))),
            (f"seeds nested {depth}", with_value(base, ("search", "trials", "seeds"), nested_list)),
            (f"unknown key nested {depth}", {**base, "extra": _nested(depth)}),
        ]
    return cases


EXPLICIT_ABUSE = huge_integer_specs() + deep_specs()


@dataclass
class Seeded:
    """What the fixture put in the database: the token the test calls with and job ids."""

    token: str
    token_id: int
    succeeded: str  # history, metrics and every artifact kind; immutable through the API
    queued: str
    failed: str
    cancelled: str
    foreign: str  # another user's job (403)
    disposable: list[str] = field(default_factory=list)  # for DELETE /jobs/{id}

    @property
    def readable(self) -> list[str]:
        return [self.succeeded, self.queued, self.failed, self.cancelled, self.foreign]

    @property
    def finished(self) -> list[str]:
        """Jobs whose event stream ends by itself, whatever else the run does to them."""
        return [self.succeeded, self.foreign]


def _history_rows(trial_id: int) -> tuple[list[dict], list[dict]]:
    snapshots, metrics = [], []
    for step in range(1, STEPS + 1):
        for index in range(LAYERS):
            mean = {"in": 0.2, "ln": 0.3, "bn": 0.5, "gn": None}
            var = {"in": 0.1, "ln": 0.1, "bn": 0.8, "gn": None}
            snapshots.append(
                {
                    "trial_id": trial_id,
                    "step": step,
                    "epoch": step,
                    "layer_index": index,
                    "layer": f"layer{index + 1}.bn",
                    "mean_fixed": step == STEPS,
                    "var_fixed": False,
                    **{f"mean_{norm}": value for norm, value in mean.items()},
                    **{f"var_{norm}": value for norm, value in var.items()},
                }
            )
        for name, value in (("val_accuracy", 0.5 + step / 100), ("train_loss", 1.0 / step)):
            metrics.append(
                {"trial_id": trial_id, "step": step, "epoch": step, "name": name, "value": value}
            )
    return snapshots, metrics


def _artifact_files(job_dir: Path) -> list[jobs.ArtifactFile]:
    job_dir.mkdir(parents=True)
    plan = {"version": 1, "layers": {"layer1.bn": "bn"}}
    (job_dir / "plan.json").write_text(json.dumps(plan))
    (job_dir / "plan.yaml").write_text("version: 1\nlayers:\n  layer1.bn: bn\n")
    (job_dir / "report.json").write_text(json.dumps({"recommendation": plan}))
    (job_dir / "ratios.csv").write_text("step,layer,mean_bn\n1,layer1.bn,0.5\n")
    (job_dir / "ratios.png").write_bytes(b"\x89PNG\r\n\x1a\n" + hashlib.sha256().digest())
    for name in ("checkpoint.zip", "search_checkpoint.zip"):
        with zipfile.ZipFile(job_dir / name, "w") as archive:
            archive.writestr("model.json", json.dumps({"arch": "resnet20"}))
            archive.writestr("plan.json", json.dumps(plan))
    (job_dir / "search_plan.json").write_text(json.dumps(plan))
    files = [
        jobs.ArtifactFile(kind, job_dir / name)
        for kind, name in (
            ("plan_json", "plan.json"),
            ("plan_yaml", "plan.yaml"),
            ("report_json", "report.json"),
            ("ratios_csv", "ratios.csv"),
            ("ratios_png", "ratios.png"),
            ("checkpoint", "checkpoint.zip"),
            ("search_plan_json", "search_plan.json"),
            ("search_checkpoint", "search_checkpoint.zip"),
        )
    ]
    return files


@pytest.fixture(scope="module")
def seeded(api_settings) -> Seeded:
    engine = make_engine(api_settings.database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            # Other users' tokens first, so the test's token id is none of the small ids (1, 2)
            # the coverage phase tries on DELETE /tokens/{token_id}.
            other = auth.get_or_create_user(session, name="schemathesis-other")
            for n in range(3):
                auth.create_token(session, user=other, name=f"other-{n}")
            user = auth.get_or_create_user(session, name="schemathesis")
            raw, token = auth.create_token(session, user=user, name="schemathesis")

            def new_job(owner) -> str:
                return repositories.create_job(session, owner_id=owner.id, spec=tiny_spec()).id

            def succeed(owner, *, history: bool) -> str:
                job_id = new_job(owner)
                session.flush()
                jobs.start_job(session, job_id=job_id)
                if history:
                    trial = repositories.upsert_trial(
                        session,
                        job_id=job_id,
                        ray_trial_id="trial_0",
                        variant="sn",
                        config={"seed": 0},
                        status="TERMINATED",
                        epochs_budget=STEPS,
                    )
                    snapshots, metrics = _history_rows(trial.id)
                    repositories.insert_snapshots(session, snapshots)
                    repositories.insert_metrics(session, metrics)
                    repositories.update_trial(
                        session,
                        trial.id,
                        epochs_used=STEPS,
                        best_metrics={"val_accuracy": 0.56, "epoch": STEPS},
                    )
                files = _artifact_files(api_settings.runs_dir / job_id)
                jobs.finish_job(session, job_id=job_id, files=files)
                return job_id

            succeeded = succeed(user, history=True)
            queued = new_job(user)
            failed = new_job(user)
            cancelled = new_job(user)
            session.flush()
            jobs.start_job(session, job_id=failed)
            jobs.fail_job(session, job_id=failed, error="out of memory")
            jobs.cancel_job(session, job_id=cancelled)
            foreign = succeed(other, history=False)
            disposable = [succeed(user, history=False) for _ in range(2)]
            return Seeded(
                token=raw,
                token_id=token.id,
                succeeded=succeeded,
                queued=queued,
                failed=failed,
                cancelled=cancelled,
                foreign=foreign,
                disposable=disposable,
            )
    finally:
        engine.dispose()


def _config(token: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": bearer(token),
            "request-timeout": 20,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
        }
    )


@pytest.fixture(scope="module")
def api_schema(api_settings, seeded):
    """The OpenAPI document of a real app on the module database, with the hooks that steer
    generated job ids to the seeded jobs."""
    app = create_app(api_settings, run_reaper=False)
    schema = schemathesis.openapi.from_asgi(
        "/api/v1/openapi.json", app, config=_config(seeded.token)
    )

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        if not path_parameters or "job_id" not in path_parameters:
            return st.just(path_parameters)
        operation = context.operation
        if operation.method.upper() == "DELETE":
            pool = seeded.disposable
        elif operation.path.endswith("/events"):
            pool = seeded.finished
        else:
            pool = seeded.readable
        return st.sampled_from([*pool, path_parameters["job_id"]]).map(
            lambda job_id: {**path_parameters, "job_id": job_id}
        )

    @schema.hook
    def flatmap_body(context, body):
        # A spec passes JSON Schema long before it passes the spec's own validators (known
        # architecture, dataset path, ...): mix a valid one in, so submissions succeed too,
        # and the abusive ones (deep nesting, huge integers, a grid over the limits), which
        # must be 4xx like any other bad body. The valid spec is the first choice: Hypothesis
        # tries the simplest draw (index 0) first, so each operation is reached with it
        # whatever the schema; behind the generated body it was drawn only by the luck of the
        # derandomized draws, which any change to the spec's schema reshuffles (a new field
        # once left POST /spec/validate without a 200).
        operation = context.operation
        if operation.method.upper() != "POST" or operation.path not in SPEC_PATHS:
            return st.just(body)
        return st.sampled_from([tiny_spec(epochs=1), body, *ABUSIVE_SPECS])

    yield schema
    # schemathesis started the app's lifespan on its own event loop; end it (closes the engine).
    schemathesis_asgi.shutdown_lifespans()


def _guard(case, seeded: Seeded) -> None:
    """Keep destructive or never-ending calls off the fixtures the rest of the run needs (the
    coverage phase generates values without the hooks)."""
    params = case.path_parameters or {}
    method, path = case.operation.method.upper(), case.operation.path
    job_id = params.get("job_id")
    if isinstance(job_id, str):
        if method == "DELETE" and job_id in seeded.readable:
            params["job_id"] = seeded.disposable[0]
        if path.endswith("/events") and job_id in seeded.readable and job_id not in seeded.finished:
            params["job_id"] = seeded.succeeded
    own_token = str(params.get("token_id")) == str(seeded.token_id)
    if method == "DELETE" and path.startswith("/api/v1/tokens/") and own_token:
        params["token_id"] = 2**31 - 1


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis' lazy-schema runner reads and rewrites ``node._nodeid`` (to name each
    operation in reports), an attribute pytest 9.2 no longer has: give it one."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def answered() -> Iterator[dict[str, set[int]]]:
    """Operation label -> statuses answered, over every generated case of this module. After the
    last case (teardown) it checks that each job-scoped operation was answered from a real job,
    not only rejected: an error of the run itself, not a test that depends on another."""
    statuses: dict[str, set[int]] = defaultdict(set)
    yield statuses
    missing = {
        label: sorted(wanted - statuses.get(label, set()))
        for label, wanted in MUST_REACH.items()
        if not wanted <= statuses.get(label, set())
    }
    assert not missing, f"statuses never answered: {missing}; answered: {dict(statuses)}"


@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case, seeded, answered):
    _guard(case, seeded)
    response = case.call_and_validate(checks=CHECKS)
    answered[case.operation.label].add(response.status_code)


@pytest.mark.parametrize("path", SPEC_PATHS)
def test_huge_integers_and_deep_nesting_in_every_field_are_422(api_schema, seeded, path):
    """The explicit abusive cases, through schemathesis with the same checks as the fuzzer: a
    huge integer in every integer field of the spec (and of every built-in model's kwargs), and
    nesting past the depth limit in free-form, typed and unknown places; each a 422 naming the
    field, none a 5xx."""
    assert len(EXPLICIT_ABUSE) > 40  # the walk found the spec's integer fields
    operation = api_schema[path]["POST"]
    failures = []
    for label, spec in EXPLICIT_ABUSE:
        case = operation.Case(
            body=spec, media_type="application/json", headers=bearer(seeded.token)
        )
        response = case.call_and_validate(checks=CHECKS)
        body = response.json()
        if response.status_code != 422 or not (body.get("field") or body.get("errors")):
            failures.append(f"{label}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
