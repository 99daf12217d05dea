"""Abuse probes: replay issue 11's attacks and careless inputs against a running service.

Plain script (no pytest)::

    python bench/abuse.py [--only NAME,NAME] [--job-timeout 30] [--json] [--keep]

It starts the embedded stack (``normsearch up``: API, one Celery worker with a local Ray bound
to loopback, SQLite database and broker) in a temporary runs directory on a free loopback port,
with ``NORMSEARCH_PUBLIC_URL`` set (for the Host-header probe), a short token re-check interval
for event streams and a small jobs quota; makes a user's token with ``normsearch token create``
and runs each probe: a name, what the service should answer, what it answered, pass or fail and
how long it took. It prints a table (``--json``: one JSON document) and exits 1 if any probe
failed, 2 if the service did not start. Bounded: every request has a timeout, every job it
submits is small or refused, and it cancels what it started before it stops the stack. Nothing
leaves loopback.

The probes (issue 11's "Why" list): a 640,000-trial grid, cpus_per_trial 256 and
gpus_per_trial 16 (the cluster-fit check: 422, or the job fails fast naming the resource), 50
jobs of 10,000 epochs, the jobs quota, verify.epochs 1e30, num_samples 1e9, num_classes and
in_channels 1e9, an MLP of 40000x40000, 10,000 duplicate baselines, unknown model kwargs, JSON
nested 300 and 989 deep, Last-Event-ID 2^63, a token revoked under an open event stream, a forged
Host header, cancel then retry of a running job (cancelling, then cancelled; a retry while
cancelling is 409), a job whose trials fail (its error carries the exception), and at the end
that the service is still up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from cli.embedded import CLI_PREFIX  # noqa: E402

API = "/api/v1"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 30
STREAM_AUTH_INTERVAL_S = 1.0
JOBS_QUOTA = 4
FINISHED = ("succeeded", "failed", "cancelled")
SPOOFED_HOST = "evil.example.com"


# -- results (pure: what tests/test_bench_abuse.py checks) -----------------------------------


@dataclass
class ProbeResult:
    name: str
    expected: str
    observed: str
    passed: bool
    elapsed_s: float


@dataclass
class Outcome:
    """What a probe returns: whether it held and what was seen."""

    passed: bool
    observed: str


def exit_status(results: list[ProbeResult]) -> int:
    """0 when every probe held (and there was at least one), else 1."""
    return 0 if results and all(r.passed for r in results) else 1


def summary(results: list[ProbeResult]) -> str:
    failed = [r.name for r in results if not r.passed]
    line = f"{len(results) - len(failed)} of {len(results)} probes held"
    return line + (f"; failed: {', '.join(failed)}" if failed else "")


def as_json(results: list[ProbeResult]) -> str:
    return json.dumps(
        {
            "passed": exit_status(results) == 0,
            "summary": summary(results),
            "probes": [asdict(r) | {"elapsed_s": round(r.elapsed_s, 2)} for r in results],
        },
        indent=2,
    )


def table(results: list[ProbeResult]):
    """A rich Table of the results (probe, expected, observed, verdict, seconds)."""
    from rich.table import Table

    grid = Table(title="normsearch abuse probes", show_lines=False)
    grid.add_column("probe", style="bold")
    grid.add_column("expected")
    grid.add_column("observed")
    grid.add_column("verdict")
    grid.add_column("s", justify="right")
    for r in results:
        verdict = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        grid.add_row(r.name, r.expected, r.observed, verdict, f"{r.elapsed_s:.1f}")
    return grid


def describe(response: httpx.Response) -> str:
    """``"422 limit_exceeded (search.trials.seeds)"``: status, error code and field."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return str(response.status_code)
    code, where = body.get("code"), body.get("field")
    text = str(response.status_code)
    if code:
        text += f" {code}"
    if where:
        text += f" ({where})"
    return text


def refused(response: httpx.Response, *, status: int = 422, codes: tuple[str, ...] = ()) -> Outcome:
    """Held when the answer is ``status`` (with one of ``codes``, when given)."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        code = None
    ok = response.status_code == status and (not codes or code in codes)
    return Outcome(ok, describe(response))


def all_refused(responses: list[httpx.Response], **kwargs) -> Outcome:
    """Held when each response is refused as ``refused`` says; observed: counts per answer."""
    outcomes = [refused(r, **kwargs) for r in responses]
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.observed] = counts.get(outcome.observed, 0) + 1
    observed = ", ".join(f"{n} x {what}" for what, n in counts.items())
    return Outcome(all(o.passed for o in outcomes), observed)


# -- specs -----------------------------------------------------------------------------------


def small_spec(epochs: int = 1, **overrides: Any) -> dict[str, Any]:
    """A job that trains for seconds: an MLP on the built-in digits, one seed, no baselines."""
    spec: dict[str, Any] = {
        "model": {"arch": "mlp"},
        "dataset": {"kind": "digits"},
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.1},
        "search": {
            "sparsity": {"end": 0.5},
            "stop_when_stable": {"enabled": False},
            "trials": {"seeds": [0]},
        },
        "verify": {"enabled": False},
    }
    spec.update(overrides)
    return spec


def nested_body(depth: int) -> bytes:
    """``small_spec`` with ``model.kwargs`` nested ``depth`` objects deep, as bytes (Python's
    encoder gives up near 1000 levels, so the nesting is written by hand)."""
    spec = small_spec()
    spec["model"] = {"arch": "mlp", "kwargs": "HOLE"}
    return json.dumps(spec).replace('"HOLE"', '{"a": ' * depth + "1" + "}" * depth).encode()


# -- the service -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@dataclass
class Service:
    """``normsearch up`` in a temporary directory; ``token`` is a plain user's."""

    directory: Path
    process: subprocess.Popen
    base_url: str
    env: dict[str, str]
    token: str = ""
    log_path: Path = field(default_factory=Path)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *CLI_PREFIX, *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running_service(keep: bool = False) -> Iterator[Service]:
    """Start the embedded stack on a free loopback port and wait until it is ready."""
    directory = Path(tempfile.mkdtemp(prefix="normsearch-abuse-"))
    runs, data = directory / "runs", directory / "data"
    data.mkdir()
    port = free_port()
    base_url = f"http://{LOOPBACK}:{port}"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("NORMSEARCH_") and key != "RAY_ADDRESS"
    }
    env |= {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "NORMSEARCH_RUNS_DIR": str(runs),
        "NORMSEARCH_DATA_ROOTS": str(data),
        "NORMSEARCH_API_HOST": LOOPBACK,
        "NORMSEARCH_PUBLIC_URL": base_url,
        "NORMSEARCH_RAY_NUM_CPUS": "2",
        "NORMSEARCH_STREAM_AUTH_INTERVAL_S": str(STREAM_AUTH_INTERVAL_S),
        "NORMSEARCH_MAX_JOBS_PER_USER": str(JOBS_QUOTA),
    }
    log_path = directory / "up.log"
    command = [sys.executable, *CLI_PREFIX, "up", "--runs-dir", str(runs), "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it reaches its worker and Ray
        )
    service = Service(directory, process, base_url, env, log_path=log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "normsearch is up at" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"normsearch up did not start:\n{service.log_tail()}")
            time.sleep(0.5)
        made = service.cli("token", "create", "--user", "abuser", "--name", "abuse")
        if made.returncode != 0:
            raise RuntimeError(f"token create failed: {made.stderr.strip()}")
        service.token = made.stdout.strip().splitlines()[-1]
        yield service
    finally:
        _stop(process)
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    """Ctrl-C to `up` (it stops its children), then kill -9 of its group if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# -- probes ----------------------------------------------------------------------------------


@dataclass
class Context:
    client: httpx.Client
    service: Service
    job_timeout_s: float
    started_jobs: list[str] = field(default_factory=list)
    finished_job: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.service.token}"}

    def post_spec(self, spec: dict, path: str = "/jobs", **headers: str) -> httpx.Response:
        response = self.client.post(f"{API}{path}", json=spec, headers={**self.auth, **headers})
        if path == "/jobs" and response.status_code in (200, 201):
            self.started_jobs.append(response.json()["id"])
        return response

    def job(self, job_id: str) -> dict:
        return self.client.get(f"{API}/jobs/{job_id}", headers=self.auth).json()

    def wait(self, job_id: str, statuses: tuple[str, ...], timeout_s: float) -> dict:
        """The job once its status is one of ``statuses``, or as it is at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["status"] in statuses or time.monotonic() > deadline:
                return job
            time.sleep(0.25)

    def cancel(self, job_id: str) -> httpx.Response:
        return self.client.post(f"{API}/jobs/{job_id}/cancel", headers=self.auth)

    def cancel_all(self) -> None:
        for job_id in self.started_jobs:
            with contextlib.suppress(httpx.HTTPError):
                if self.job(job_id)["status"] not in FINISHED:
                    self.cancel(job_id)


def probe_grid(ctx: Context) -> Outcome:
    spec = small_spec(
        training={"epochs": 1, "batch_size": 32, "lr": 0.001, "lr_scaling": "none"},
        search={
            "trials": {
                "seeds": list(range(64)),
                "batch_sizes": list(range(1, 101)),
                "lrs": [0.0001 * n for n in range(1, 101)],
            }
        },
    )
    return refused(ctx.post_spec(spec))


def _fails_fast(ctx: Context, spec: dict, reason: re.Pattern) -> Outcome:
    """Held when the spec is refused (422), or its job fails within the job timeout with an
    error matching ``reason``."""
    started = time.monotonic()
    response = ctx.post_spec(spec)
    if response.status_code == 422:
        return Outcome(True, describe(response))
    if response.status_code != 201:
        return Outcome(False, describe(response))
    job_id = response.json()["id"]
    job = ctx.wait(job_id, FINISHED, ctx.job_timeout_s)
    took = time.monotonic() - started
    if job["status"] == "failed" and reason.search(job.get("error") or ""):
        return Outcome(True, f"201, failed in {took:.0f} s: {job['error'][:120]}")
    ctx.cancel(job_id)
    error = f": {job['error'][:100]}" if job.get("error") else ""
    return Outcome(
        False, f"201, {job['status']} at progress {job['progress']} after {took:.0f} s{error}"
    )


def probe_cpus(ctx: Context) -> Outcome:
    spec = small_spec(resources={"cpus_per_trial": 256})
    return _fails_fast(ctx, spec, re.compile(r"cpu", re.I))


def probe_gpus(ctx: Context) -> Outcome:
    spec = small_spec(resources={"gpus_per_trial": 16})
    return _fails_fast(ctx, spec, re.compile(r"gpu", re.I))


def probe_epochs_jobs(ctx: Context) -> Outcome:
    spec = small_spec(training={"epochs": 10_000, "batch_size": 64, "lr": 0.1})
    return all_refused([ctx.post_spec(spec) for _ in range(50)], codes=("limit_exceeded",))


def probe_quota(ctx: Context) -> Outcome:
    accepted, refusal = 0, None
    for _ in range(50):
        response = ctx.post_spec(small_spec())
        if response.status_code == 201:
            accepted += 1
            continue
        refusal = response
        break
    ctx.cancel_all()
    if refusal is None:
        return Outcome(False, f"all {accepted} accepted")
    retry_after = refusal.headers.get("retry-after")
    observed = f"{accepted} accepted, then {describe(refusal)}, Retry-After {retry_after}"
    held = refusal.status_code == 429 and retry_after is not None and accepted <= JOBS_QUOTA
    return Outcome(held, observed)


def probe_verify_epochs(ctx: Context) -> Outcome:
    return refused(ctx.post_spec(small_spec(verify={"enabled": True, "epochs": 10**30})))


def probe_num_samples(ctx: Context) -> Outcome:
    return refused(ctx.post_spec(small_spec(dataset={"kind": "synthetic", "num_samples": 10**9})))


def probe_classes_channels(ctx: Context) -> Outcome:
    responses = [
        ctx.post_spec(small_spec(model={"arch": "mlp", "num_classes": 10**9})),
        ctx.post_spec(small_spec(model={"arch": "mlp", "in_channels": 10**9})),
    ]
    return all_refused(responses)


def probe_big_mlp(ctx: Context) -> Outcome:
    spec = small_spec(model={"arch": "mlp", "kwargs": {"hidden": [40_000, 40_000]}})
    return _fails_fast(ctx, spec, re.compile(r"NORMSEARCH_MAX_MODEL_PARAMS|parameters", re.I))


def probe_baselines(ctx: Context) -> Outcome:
    spec = small_spec(verify={"enabled": True, "epochs": 1, "baselines": ["bn"] * 10_000})
    return refused(ctx.post_spec(spec))


def probe_unknown_kwargs(ctx: Context) -> Outcome:
    response = ctx.post_spec(small_spec(model={"arch": "mlp", "kwargs": {"bogus": 1}}))
    outcome = refused(response)
    return Outcome(outcome.passed and "bogus" in response.text, outcome.observed)


def _nesting(ctx: Context, depth: int) -> Outcome:
    headers = {**ctx.auth, "Content-Type": "application/json"}
    answers = [
        ctx.client.post(f"{API}{path}", content=nested_body(depth), headers=headers)
        for path in ("/spec/validate", "/jobs")
    ]
    return all_refused(answers)


def probe_nesting_300(ctx: Context) -> Outcome:
    return _nesting(ctx, 300)


def probe_nesting_989(ctx: Context) -> Outcome:
    return _nesting(ctx, 989)


def probe_last_event_id(ctx: Context) -> Outcome:
    job_id = ctx.finished_job or _queued_job(ctx)
    headers = {**ctx.auth, "Last-Event-ID": str(2**63)}
    with ctx.client.stream("GET", f"{API}/jobs/{job_id}/events", headers=headers) as response:
        response.read()
        return refused(response)


def _queued_job(ctx: Context) -> str:
    response = ctx.post_spec(small_spec())
    response.raise_for_status()
    return response.json()["id"]


def read_events(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream response."""
    kind = "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            yield kind, line.split(":", 1)[1].strip()
        elif not line:
            kind = "message"


def probe_revoked_stream(ctx: Context) -> Outcome:
    made = ctx.client.post(f"{API}/tokens", json={"name": "doomed"}, headers=ctx.auth)
    made.raise_for_status()
    doomed = {"Authorization": f"Bearer {made.json()['token']}"}
    job_id = _queued_job(ctx)
    events: list[str] = []
    revoked_at: list[float] = []

    def revoke() -> None:
        time.sleep(1.0)
        revoked_at.append(time.monotonic())  # when the revocation is sent
        ctx.client.delete(f"{API}/tokens/{made.json()['id']}", headers=ctx.auth)

    limit = STREAM_AUTH_INTERVAL_S + 3.0
    thread = threading.Thread(target=revoke, daemon=True)
    try:
        with httpx.stream(
            "GET",
            f"{ctx.service.base_url}{API}/jobs/{job_id}/events",
            headers=doomed,
            timeout=httpx.Timeout(10.0, read=limit + 5.0),
        ) as response:
            if response.status_code != 200:
                return Outcome(False, f"stream answered {describe(response)}")
            thread.start()
            for kind, _data in read_events(response):
                events.append(kind)
                if revoked_at and time.monotonic() - revoked_at[0] > limit + 5.0:
                    break
        ended = time.monotonic()
    except httpx.ReadTimeout:
        return Outcome(False, f"stream still open {limit + 5.0:.0f} s after the revocation")
    finally:
        ctx.cancel(job_id)
    thread.join(timeout=5)
    if not revoked_at:
        return Outcome(False, f"stream ended before the revocation ({events})")
    after = ended - revoked_at[0]
    held = after <= limit and events[-1:] == ["error"]
    return Outcome(held, f"ended {after:.1f} s after the revocation, last event {events[-1:]}")


def probe_spoofed_host(ctx: Context) -> Outcome:
    response = ctx.post_spec(small_spec(), Host=SPOOFED_HOST)
    if response.status_code != 201:
        return Outcome(False, describe(response))
    location = response.headers.get("location", "")
    ctx.cancel(response.json()["id"])
    held = location.startswith(ctx.service.base_url + API) and SPOOFED_HOST not in location
    return Outcome(held, f"Location {location}")


def probe_cancel_retry(ctx: Context) -> Outcome:
    """Cancel of a running job answers ``cancelling`` until the worker has stopped the run (a
    retry meanwhile is 409), then the job is ``cancelled`` and a retry queues it again. Only a
    job not yet running may answer ``cancelled`` at once."""
    job_id = ctx.post_spec(small_spec(epochs=50)).raise_for_status().json()["id"]
    job = ctx.wait(job_id, ("running", *FINISHED), ctx.job_timeout_s * 2)
    if job["status"] != "running":
        ctx.cancel(job_id)
        return Outcome(False, f"never ran: {job['status']}")
    steps = []
    cancelled = ctx.cancel(job_id)
    status = cancelled.json().get("status") if cancelled.status_code == 200 else None
    steps.append(f"cancel of a running job: {cancelled.status_code} {status}")
    held = status == "cancelling"
    if status == "cancelling":
        early = ctx.client.post(f"{API}/jobs/{job_id}/retry", headers=ctx.auth)
        steps.append(f"retry while cancelling {early.status_code}")
        held = held and early.status_code == 409
    job = ctx.wait(job_id, FINISHED, ctx.job_timeout_s)
    steps.append(f"then {job['status']}")
    held = held and job["status"] == "cancelled"
    if job["status"] == "cancelled":
        again = ctx.client.post(f"{API}/jobs/{job_id}/retry", headers=ctx.auth)
        steps.append(f"retry {again.status_code} {again.json().get('status')}")
        held = held and again.status_code == 200
        ctx.cancel(job_id)
    return Outcome(held, "; ".join(steps))


def poisoned_npz(path: Path) -> Path:
    """An .npz dataset the loader accepts (finite float32) whose values overflow float32 once
    squared: every trial's first batch gives an infinite or NaN loss and the trial fails."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((200, 1, 8, 8)) * 1e30).astype(np.float32)
    y = np.arange(200) % 2
    np.savez(path, x=x, y=y)
    return path


def probe_failing_trials(ctx: Context) -> Outcome:
    poisoned_npz(ctx.service.directory / "data" / "poisoned.npz")
    spec = small_spec(dataset={"kind": "npz", "path": "poisoned.npz"})
    started = time.monotonic()
    response = ctx.post_spec(spec)
    if response.status_code != 201:
        return Outcome(False, describe(response))
    job_id = response.json()["id"]
    # Waits longer than the target, to say how long it took; holds only within the target.
    job = ctx.wait(job_id, FINISHED, ctx.job_timeout_s * 3)
    took = time.monotonic() - started
    error = job.get("error") or ""
    if job["status"] not in FINISHED:
        ctx.cancel(job_id)
    else:
        ctx.finished_job = job_id
    reason = re.search(r"trial.*(diverged|\b\w+(Error|Exception): )", error)
    held = job["status"] == "failed" and reason is not None and took <= ctx.job_timeout_s
    return Outcome(held, f"{job['status']} after {took:.0f} s: {error[:160]}")


def probe_still_up(ctx: Context) -> Outcome:
    health = ctx.client.get("/healthz")
    ready = ctx.client.get("/readyz")
    held = health.status_code == 200 and ready.status_code == 200
    return Outcome(held, f"healthz {health.status_code}, readyz {ready.status_code}")


@dataclass(frozen=True)
class Probe:
    name: str
    expected: str
    run: Callable[[Context], Outcome]


FAST = "422, or the job failed within the job timeout naming"
PROBES = [
    Probe("grid_640k", "422 (64 seeds x 100 batch sizes x 100 lrs)", probe_grid),
    Probe("epochs_10000_x50", "50 x 422 limit_exceeded", probe_epochs_jobs),
    Probe("verify_epochs_1e30", "422", probe_verify_epochs),
    Probe("num_samples_1e9", "422", probe_num_samples),
    Probe("classes_channels_1e9", "2 x 422", probe_classes_channels),
    Probe("baselines_10000", "422", probe_baselines),
    Probe("unknown_kwargs", "422 naming the key", probe_unknown_kwargs),
    Probe("nesting_300", "2 x 422 (validate, submit)", probe_nesting_300),
    Probe("nesting_989", "2 x 422 (validate, submit)", probe_nesting_989),
    Probe("spoofed_host", "Location under NORMSEARCH_PUBLIC_URL", probe_spoofed_host),
    Probe(
        "failing_trials",
        "failed within the job timeout, the error naming the first failed trial and why",
        probe_failing_trials,
    ),
    Probe("last_event_id_2^63", "422", probe_last_event_id),
    Probe("mlp_40000x40000", f"{FAST} the parameter limit", probe_big_mlp),
    Probe(
        "cancel_retry_running",
        "cancelling (retry 409), then cancelled; then retry 200",
        probe_cancel_retry,
    ),
    Probe(
        "revoked_token_stream",
        f"stream ends <= {STREAM_AUTH_INTERVAL_S + 3:.0f} s after revocation, `error` event",
        probe_revoked_stream,
    ),
    Probe("jobs_quota", f"<= {JOBS_QUOTA} accepted, then 429 + Retry-After", probe_quota),
    Probe("cpus_per_trial_256", f"{FAST} the CPUs", probe_cpus),
    Probe("gpus_per_trial_16", f"{FAST} the GPUs", probe_gpus),
    Probe("service_still_up", "healthz 200, readyz 200", probe_still_up),
]


def run_probes(ctx: Context, probes: list[Probe]) -> list[ProbeResult]:
    results = []
    for probe in probes:
        started = time.monotonic()
        try:
            outcome = probe.run(ctx)
        except Exception as error:  # a probe that breaks is a failed probe, with the reason
            outcome = Outcome(False, f"probe error {type(error).__name__}: {error}"[:200])
        results.append(
            ProbeResult(
                probe.name,
                probe.expected,
                outcome.observed,
                outcome.passed,
                time.monotonic() - started,
            )  # fmt: skip
        )
    return results


def select(names: str | None) -> list[Probe]:
    """The probes named (comma-separated), in their order; all when ``names`` is empty."""
    if not names:
        return list(PROBES)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {p.name for p in PROBES}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown probes: {', '.join(unknown)}; known: {', '.join(known)}")
    return [p for p in PROBES if p.name in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated probe names (default: all)")
    parser.add_argument("--job-timeout", type=float, default=30.0, help="seconds a job may take")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keep", action="store_true", help="keep the temporary runs directory")
    args = parser.parse_args(argv)
    probes = select(args.only)
    try:
        with (
            running_service(keep=args.keep) as service,
            httpx.Client(base_url=service.base_url, timeout=REQUEST_TIMEOUT_S) as client,
        ):
            ctx = Context(client, service, args.job_timeout)
            try:
                results = run_probes(ctx, probes)
            finally:
                ctx.cancel_all()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(as_json(results))
    else:
        from rich.console import Console

        console = Console(width=200)
        console.print(table(results))
        console.print(summary(results))
    return exit_status(results)


if __name__ == "__main__":
    raise SystemExit(main())
