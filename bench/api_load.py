"""Benchmark: the HTTP API under concurrent pollers, on Postgres and on the embedded SQLite file.

Plain script (no pytest)::

    python bench/api_load.py [--duration 10] [--pollers 50] [--full-pollers 5] [--interval 1]
                             [--workers 2] [--layers 50] [--steps 200]
                             [--backends postgres,sqlite] [--admin-url URL] [--no-ingest]

For each backend it makes a fresh database (Postgres: a scratch database on the server of
``--admin-url`` or ``NORMSEARCH_BENCH_POSTGRES_URL``, dropped at the end; SQLite: the embedded
mode's ``normsearch.db`` in a temporary runs directory), both migrated with Alembic, and seeds one
running job owned by a user with an API token: one trial with a ratio history of ``--layers`` x
``--steps`` snapshots (50 x 200 = 10,000 rows, inserted with ``repositories.insert_snapshots``)
and a few metrics per step. The API runs as a real server process::

    python -m uvicorn api.app:create_app --factory --workers N --no-access-log

configured through ``NORMSEARCH_*`` variables (database, broker on Redis db 12, runs directory).
Then, for ``--duration`` seconds each, ``--pollers`` asyncio tasks sharing one keep-alive
``httpx.AsyncClient`` (one connection per poller) request, twice: *paced*, each poller once every
``--interval`` seconds (a live view's poll; the latency a user sees), and *saturated*, back to
back (the throughput; latency is then mostly queueing, pollers / throughput):

1. ``GET /api/v1/jobs/{id}``: the job page's poll;
2. ``GET /api/v1/jobs/{id}/ratios?after=C``: a live chart's incremental read, ``C`` a
   latest-ish cursor (1, 2 or 5 steps before the newest: 50 to 250 new snapshots per answer);
3. ``GET /api/v1/jobs/{id}/ratios?max_points=5000``: a chart opened from scratch (the whole
   history, downsampled to 5,000 snapshots: about 1 MB of JSON), with ``--full-pollers`` tasks.

It prints p50 / p99 latency and requests/s per endpoint, mode and backend (target: p99 <= 50 ms
on Postgres for ``GET /jobs/{id}``, paced), then the ratio-snapshot ingestion rate of the worker's
``DatabaseRecorder`` (``bench/ingest.py``) on both backends. The load generator runs on the same
machine as the server and takes part of its CPU: on a small machine the figures are a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from service import auth, jobs, repositories  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from service.db.scratch import scratch_database  # noqa: E402
from service.db.session import make_engine, make_session_factory  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BROKER_URL = "redis://127.0.0.1:6379/12"
TARGET_P99_MS = 50.0
SPEC = {
    "model": {"arch": "resnet56"},
    "dataset": {"kind": "cifar10"},
    "training": {"epochs": 200, "batch_size": 128, "lr": 0.1},
    "search": {"trials": {"seeds": [0]}},
}


# -- seeding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    token: str
    job_id: str
    last_step: int
    snapshots: int


def seed_database(url: str, *, layers: int, steps: int) -> Seed:
    """A user with a token and one running job with one trial of ``layers`` x ``steps``."""
    rng = random.Random(0)
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        with factory() as session, session.begin():
            user = auth.get_or_create_user(session, name="bench")
            token, _ = auth.create_token(session, user=user, name="bench")
            job_id = repositories.create_job(session, owner_id=user.id, spec=SPEC).id
            session.flush()
            jobs.start_job(session, job_id=job_id)
            trial = repositories.upsert_trial(
                session,
                job_id=job_id,
                ray_trial_id="trial_0",
                variant="sn",
                config={"seed": 0},
                status="RUNNING",
                epochs_budget=steps,
            )
            trial_id = trial.id
        rows, metrics = [], []
        for step in range(1, steps + 1):
            for index in range(layers):
                raw = [rng.random() + 0.01 for _ in range(3)]
                mean = [value / sum(raw) for value in raw]
                raw = [rng.random() + 0.01 for _ in range(3)]
                var = [value / sum(raw) for value in raw]
                rows.append(
                    {
                        "trial_id": trial_id,
                        "step": step,
                        "epoch": step,
                        "layer_index": index,
                        "layer": f"stage{index // 10}.block{index % 10}.bn",
                        "mean_in": mean[0],
                        "mean_ln": mean[1],
                        "mean_bn": mean[2],
                        "mean_gn": None,
                        "var_in": var[0],
                        "var_ln": var[1],
                        "var_bn": var[2],
                        "var_gn": None,
                        "mean_fixed": step > steps * 0.8,
                        "var_fixed": step > steps * 0.9,
                    }
                )
            for name in ("train_loss", "val_loss", "val_accuracy", "fraction_fixed"):
                metrics.append(
                    {
                        "trial_id": trial_id,
                        "step": step,
                        "epoch": step,
                        "name": name,
                        "value": rng.random(),
                    }
                )
        with factory() as session, session.begin():
            for start in range(0, len(rows), 5000):
                repositories.insert_snapshots(session, rows[start : start + 5000])
            repositories.insert_metrics(session, metrics)
            repositories.update_trial(session, trial_id, epochs_used=steps)
        return Seed(token=token, job_id=job_id, last_step=steps, snapshots=len(rows))
    finally:
        engine.dispose()


@contextlib.contextmanager
def backend_database(name: str, admin_url: str) -> Iterator[tuple[str, Path]]:
    """(database URL, runs directory) of a fresh, migrated database of the backend."""
    with tempfile.TemporaryDirectory(prefix=f"normsearch-bench-{name}-") as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        if name == "postgres":
            with scratch_database(admin_url, prefix="normsearch_bench_api") as url:
                yield url, runs
        elif name == "sqlite":  # the embedded mode's database file (cli.embedded)
            url = f"sqlite:///{runs / 'normsearch.db'}"
            upgrade(url)
            yield url, runs
        else:
            raise SystemExit(f"unknown backend {name!r} (postgres, sqlite)")


# -- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def api_server(database_url: str, runs_dir: Path, *, workers: int) -> Iterator[str]:
    """A uvicorn process serving ``api.app:create_app``; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "NORMSEARCH_DATABASE_URL": database_url,
        "NORMSEARCH_BROKER_URL": BROKER_URL,
        "NORMSEARCH_RUNS_DIR": str(runs_dir),
        "NORMSEARCH_DATA_ROOTS": str(runs_dir),
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the API server exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the API server did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the load --------------------------------------------------------------------------------


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    last_error: str = ""

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def poll(
    base_url: str,
    token: str,
    make_request: Callable[[random.Random], tuple[str, dict]],
    *,
    pollers: int,
    duration: float,
    interval: float = 0.0,
    warmup: float = 1.0,
) -> Result:
    """``pollers`` tasks, each requesting every ``interval`` seconds (a UI's poll; starts spread
    over the first interval), or back to back with ``interval`` 0 (saturation); latencies after
    a warm-up are kept."""
    result = Result()
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=60
    ) as client:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def poller(n: int) -> None:
            rng = random.Random(n)
            next_at = start + rng.uniform(0, interval)
            while True:
                if interval:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at += interval
                if (now := time.perf_counter()) >= stop_at:
                    break
                path, params = make_request(rng)
                try:
                    response = await client.get(path, params=params)
                    await response.aread()
                    ok = response.status_code == 200
                    if not ok:
                        result.last_error = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as error:
                    ok, result.last_error = False, repr(error)
                if now >= measure_from:
                    if ok:
                        result.latencies.append(time.perf_counter() - now)
                    else:
                        result.errors += 1

        await asyncio.gather(*(poller(n) for n in range(pollers)))
        result.seconds = time.perf_counter() - measure_from
    return result


def workloads(seed: Seed, args) -> list[tuple[str, int, Callable[[random.Random], tuple]]]:
    job = f"/api/v1/jobs/{seed.job_id}"

    def job_page(_rng):
        return job, {}

    def live_ratios(rng):
        return f"{job}/ratios", {"after": seed.last_step - rng.choice((1, 2, 5))}

    def full_ratios(_rng):
        return f"{job}/ratios", {"max_points": 5000}

    return [
        ("GET /jobs/{id}", args.pollers, job_page),
        ("GET /jobs/{id}/ratios?after=", args.pollers, live_ratios),
        ("GET /jobs/{id}/ratios?max_points=5000", args.full_pollers, full_ratios),
    ]


def check_answers(base_url: str, seed: Seed) -> None:
    """One request of each kind, checked, before timing anything."""
    headers = {"Authorization": f"Bearer {seed.token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        job = client.get(f"/api/v1/jobs/{seed.job_id}")
        job.raise_for_status()
        live = client.get(
            f"/api/v1/jobs/{seed.job_id}/ratios", params={"after": seed.last_step - 2}
        )
        live.raise_for_status()
        full = client.get(f"/api/v1/jobs/{seed.job_id}/ratios", params={"max_points": 5000})
        full.raise_for_status()
    (trial,) = live.json()["trials"]
    assert len(trial["points"]) == 2 * len({p["layer"] for p in trial["points"]}), trial
    (trial,) = full.json()["trials"]
    print(
        f"  answers: job {len(job.content):,} B; live ratios {len(live.content):,} B "
        f"({len(live.json()['trials'][0]['points'])} points); full ratios "
        f"{len(full.content):,} B ({len(trial['points']):,} points from {trial['steps_total']:,} "
        f"steps, downsampled={trial['downsampled']})"
    )


# -- ingestion (bench/ingest.py) -------------------------------------------------------------


def ingestion(backends: list[str], admin_url: str) -> list[tuple[str, int, float]]:
    """``DatabaseRecorder`` rate on fresh databases, with bench/ingest.py's own functions."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ingest  # bench/ingest.py

    records = ingest.make_records(trials=4, layers=200, epochs=100)
    args = SimpleNamespace(batch_size=2000, baseline_rows=2000)
    results = []
    for name in backends:
        with backend_database(name, admin_url) as (url, _runs):
            results += ingest.run_backend(name, url, records, args)
    return results


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument(
        "--full-pollers", type=int, default=5, help="concurrent full (max_points) readers"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between one poller's requests in the paced run (a live view's poll)",
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("NORMSEARCH_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
    )
    parser.add_argument("--no-ingest", action="store_true", help="skip the ingestion figures")
    args = parser.parse_args()
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]

    print(
        f"{args.pollers} pollers ({args.full_pollers} for the full read), {args.duration:g} s "
        f"per endpoint, uvicorn --workers {args.workers}, {os.cpu_count()} CPUs; ratio history "
        f"{args.layers} layers x {args.steps} steps\n"
    )
    rows: list[tuple[str, str, int, Result]] = []
    for name in backends:
        with backend_database(name, args.admin_url) as (url, runs):
            seed = seed_database(url, layers=args.layers, steps=args.steps)
            print(f"{name}: seeded {seed.snapshots:,} snapshots")
            with api_server(url, runs, workers=args.workers) as base_url:
                check_answers(base_url, seed)
                for label, pollers, make_request in workloads(seed, args):
                    for mode, interval in (("paced", args.interval), ("saturated", 0.0)):
                        result = asyncio.run(
                            poll(
                                base_url,
                                seed.token,
                                make_request,
                                pollers=pollers,
                                duration=args.duration,
                                interval=interval,
                            )
                        )
                        rows.append((name, label, mode, pollers, result))
                        if result.errors:
                            print(
                                f"  {label} ({mode}): {result.errors} errors, "
                                f"last: {result.last_error}"
                            )

    print(
        f"\npaced: each poller requests every {args.interval:g} s; saturated: back to back "
        "(throughput; latency is then queueing: pollers / req/s)\n"
    )
    header = f"{'backend':<9} {'endpoint':<39} {'mode':<9} {'conc':>4} {'requests':>8}"
    print(f"{header} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, label, mode, pollers, result in rows:
        print(
            f"{name:<9} {label:<39} {mode:<9} {pollers:>4} {len(result.latencies):>8,} "
            f"{result.rate:>7,.0f} {result.percentile(0.50):>8.1f} "
            f"{result.percentile(0.99):>8.1f} {result.errors:>6}"
        )
    for name, label, mode, _pollers, result in rows:
        if name == "postgres" and label == "GET /jobs/{id}" and mode == "paced":
            p99 = result.percentile(0.99)
            verdict = "met" if p99 <= TARGET_P99_MS else "NOT met"
            print(
                f"\ntarget p99 <= {TARGET_P99_MS:g} ms on Postgres for GET /jobs/{{id}}: "
                f"{verdict} ({p99:.1f} ms; mean {statistics.fmean(result.latencies) * 1000:.1f} "
                f"ms)"
            )

    if args.no_ingest:
        print("\nratio-snapshot ingestion: run python bench/ingest.py")
        return
    print("\nratio-snapshot ingestion (bench/ingest.py: DatabaseRecorder, 4 x 200 x 100):")
    for label, count, seconds in ingestion(backends, args.admin_url):
        print(f"  {label:<36} {count:>8,} rows {seconds:>7.2f} s {count / seconds:>10,.0f} rows/s")


if __name__ == "__main__":
    main()
