"""Benchmark: ratio-snapshot ingestion rate of ``worker.db_recorder.DatabaseRecorder``.

Plain script (no pytest)::

    python bench/ingest.py [--trials 4] [--layers 200] [--epochs 100] [--baseline-rows 5000]
                           [--batch-size 2000] [--admin-url URL]

Feeds ``--trials`` x ``--epochs`` epoch records of ``--layers`` SN layers each (4 x 100 x 200 =
80,000 layer-snapshots, plus 11 metric rows per record) through a ``DatabaseRecorder`` into

- a fresh Postgres database (created on the server of ``--admin-url``, or
  ``NORMSEARCH_BENCH_POSTGRES_URL``, migrated with ``service.db.migrate.upgrade``, dropped at the
  end), and
- a fresh SQLite file (migrated the same way, in a temporary directory),

and, in the same process against the same databases, a baseline of one ``INSERT`` per row through
the ORM (``session.add`` and ``flush`` per snapshot, one commit) on the first ``--baseline-rows``
snapshots. Records are built before the clock starts; the recorder's time includes converting
records to rows, every flush (each its own transaction) and the final ``close()``. It prints
layer-snapshots per second for each (target on Postgres: >= 20,000/s) and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402

from service import repositories  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from service.db.models import RatioSnapshot, User  # noqa: E402
from service.db.scratch import scratch_database  # noqa: E402
from service.db.session import make_engine, make_session_factory  # noqa: E402
from worker.db_recorder import DatabaseRecorder, snapshot_rows  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
POOL = ("in", "ln", "bn")
TARGET = 20_000


def make_records(trials: int, layers: int, epochs: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(0)

    def ratio() -> dict[str, float]:
        raw = [rng.random() + 0.01 for _ in POOL]
        return {norm: value / sum(raw) for norm, value in zip(POOL, raw, strict=True)}

    records: dict[str, list[dict[str, Any]]] = {}
    for t in range(trials):
        records[f"trial_{t}"] = [
            {
                "epoch": epoch,
                "epochs_budget": epochs,
                "train_loss": rng.random(),
                "val_loss": rng.random(),
                "val_accuracy": rng.random(),
                "fraction_fixed": epoch / epochs,
                "all_fixed": epoch == epochs,
                "stable_evals": 0,
                "progress": epoch / epochs,
                "ratios": {
                    f"stage{i // 50}.block{i % 50}.bn": {
                        "mean": ratio(),
                        "var": ratio(),
                        "fixed": {"mean": False, "var": False},
                    }
                    for i in range(layers)
                },
                "done": epoch == epochs,
                "train_seconds": rng.random(),
            }
            for epoch in range(1, epochs + 1)
        ]
    return records


def new_job(factory) -> str:
    with factory() as session, session.begin():
        user = User(name=f"bench-{uuid.uuid4().hex[:8]}")
        session.add(user)
        session.flush()
        return repositories.create_job(session, owner_id=user.id, spec={"bench": True}).id


def bench_recorder(factory, records, batch_size: int) -> tuple[int, float]:
    job_id = new_job(factory)
    recorder = DatabaseRecorder(factory, job_id=job_id, batch_size=batch_size)
    for trial_id in records:
        recorder.trial_started(trial_id, {"epochs": len(records[trial_id]), "trial": {}})
    epochs = max(len(history) for history in records.values())
    start = time.perf_counter()
    for e in range(epochs):  # trials interleaved, as the Tune callback sees them
        for trial_id, history in records.items():
            if e < len(history):
                recorder.trial_result(trial_id, history[e])
    recorder.close()
    seconds = time.perf_counter() - start
    with factory() as session:
        trial_ids = [t.id for t in repositories.list_trials(session, job_id=job_id)]
        count = session.scalar(
            select(func.count())
            .select_from(RatioSnapshot)
            .where(RatioSnapshot.trial_id.in_(trial_ids))
        )
    return count, seconds


def bench_orm_per_row(factory, records, rows: int) -> tuple[int, float]:
    job_id = new_job(factory)
    with factory() as session, session.begin():
        trial = repositories.upsert_trial(
            session,
            job_id=job_id,
            ray_trial_id="orm",
            variant="sn",
            config={},
            status="RUNNING",
            epochs_budget=0,
        )
        trial_id = trial.id
    data: list[dict[str, Any]] = []
    for record in next(iter(records.values())):
        data.extend(snapshot_rows(trial_id, record["epoch"], record["ratios"]))
        if len(data) >= rows:
            break
    data = data[:rows]
    start = time.perf_counter()
    with factory() as session, session.begin():
        for row in data:
            session.add(RatioSnapshot(**row))
            session.flush()  # one INSERT per row (a single flush would batch them)
    return len(data), time.perf_counter() - start


def run_backend(name: str, url: str, records, args) -> list[tuple[str, int, float]]:
    upgrade(url)
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        results = [
            (f"{name}: DatabaseRecorder", *bench_recorder(factory, records, args.batch_size))
        ]
        results.append(
            (
                f"{name}: ORM, one INSERT per row",
                *bench_orm_per_row(factory, records, args.baseline_rows),
            )
        )
        return results
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--baseline-rows", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("NORMSEARCH_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
    )
    args = parser.parse_args()
    records = make_records(args.trials, args.layers, args.epochs)
    total = args.trials * args.layers * args.epochs
    print(
        f"{args.trials} trials x {args.layers} layers x {args.epochs} epochs = {total:,} "
        f"layer-snapshots (+ 11 metric rows per epoch record), batch_size {args.batch_size}\n"
    )

    results: list[tuple[str, int, float]] = []
    with scratch_database(args.admin_url, prefix="normsearch_bench") as url:
        results += run_backend("postgres", url, records, args)
    with tempfile.TemporaryDirectory() as tmp:
        results += run_backend("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", records, args)

    print(f"{'path':<36} {'rows':>8} {'seconds':>8} {'snapshots/s':>12}")
    rates = {}
    for label, rows, seconds in results:
        rates[label] = rows / seconds
        print(f"{label:<36} {rows:>8,} {seconds:>8.2f} {rates[label]:>12,.0f}")
    print()
    for backend in ("postgres", "sqlite"):
        speedup = (
            rates[f"{backend}: DatabaseRecorder"] / rates[f"{backend}: ORM, one INSERT per row"]
        )
        print(f"{backend}: DatabaseRecorder is {speedup:.0f}x the per-row ORM rate")
    pg_rate = rates["postgres: DatabaseRecorder"]
    verdict = "met" if pg_rate >= TARGET else "NOT met"
    print(f"target >= {TARGET:,} layer-snapshots/s on Postgres: {verdict} ({pg_rate:,.0f}/s)")


if __name__ == "__main__":
    main()
