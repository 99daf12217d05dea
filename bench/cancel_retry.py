"""Benchmark: cancel -> retry cycles in a row on a small job against a whole service on loopback.

Plain script (no pytest)::

    python bench/cancel_retry.py [--cycles 50] [--epochs 3] [--runs-dir DIR] [--port PORT]

It starts the embedded stack of ``normsearch up`` (``cli.embedded.EmbeddedStack``: the API and
one Celery worker as child processes, a SQLite database and broker in a temporary runs directory,
the worker's own Ray on 127.0.0.1), makes a user with an API token, submits a tiny digits search
over HTTP and then, ``--cycles`` times: waits until the run is going (alternately: until its
first epoch is recorded, mid-training; and as soon as it reads running, while its experiment is
being built), ``POST .../cancel`` (expects ``cancelling``, or ``cancelled`` when the run had
already stopped), ``POST .../retry`` at once (expects 409: the run has not stopped yet), waits
for ``cancelled`` (the worker's confirmation) and retries (run + 1). The last run is left to
succeed. Figures (the issue's target: 0, 0, 0):

- stale writes: trials in the database of a run other than the job's current one, plus
  foreign-key errors and tracebacks in the worker's log (the old failure), after each cycle;
- reused trial ids: ids of a run's trials already seen in an earlier run;
- incomplete histories: trials of a run whose metrics or ratio snapshots are not exactly one per
  epoch, epochs 1..epochs_used (each run checked once it has stopped; the last run's search
  trials must also have trained their whole budget).

It also prints the refused stale writes (the recorder's one warning line per stale run in the
worker's log: writes dropped by the run check), how many early retries got 409, and the time from
cancel to ``cancelled`` (p50 / max).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import select  # noqa: E402

from service import auth  # noqa: E402
from service.db.models import Metric, RatioSnapshot, Trial  # noqa: E402
from service.db.session import make_engine, make_session_factory  # noqa: E402

API = "/api/v1"
WAIT_S = 300.0


def tiny_spec(epochs: int) -> dict:
    """One search trial (resnet20 on digits) and a one-epoch verification."""
    return {
        "model": {"arch": "resnet20"},
        "dataset": {"kind": "digits"},
        "training": {"epochs": epochs, "batch_size": 128, "lr": 0.1},
        "search": {
            "sparsity": {"end": 0.5},
            "stop_when_stable": {"enabled": False},
            "trials": {"seeds": [0]},
        },
        "verify": {"enabled": True, "epochs": 1, "baselines": ["bn"]},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait(condition, what: str, timeout_s: float = WAIT_S, worker_log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = worker_log.read_text(errors="replace")[-4000:] if worker_log else ""
            raise SystemExit(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.2)


def run_histories(session, job_id: str, run: int) -> tuple[list[Trial], int]:
    """The run's trials and how many of them have an incomplete history."""
    trials = list(session.scalars(select(Trial).where(Trial.job_id == job_id, Trial.run == run)))
    incomplete = 0
    for trial in trials:
        epochs = list(range(1, (trial.epochs_used or 0) + 1))
        metric_epochs = sorted(
            session.scalars(
                select(Metric.epoch).where(
                    Metric.trial_id == trial.id, Metric.name == "val_accuracy"
                )
            )
        )
        snaps = session.execute(
            select(RatioSnapshot.step, RatioSnapshot.layer_index).where(
                RatioSnapshot.trial_id == trial.id
            )
        ).all()
        layers = {layer for _, layer in snaps}
        steps = sorted({step for step, _ in snaps})
        complete = metric_epochs == epochs and (
            trial.variant != "sn" or (steps == epochs and len(snaps) == len(epochs) * len(layers))
        )
        incomplete += not complete
    return trials, incomplete


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="Kept (default: a temporary one, removed)."
    )
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    args = parser.parse_args()

    for name in ("NORMSEARCH_DATABASE_URL", "NORMSEARCH_BROKER_URL", "NORMSEARCH_RUNS_DIR"):
        os.environ.pop(name, None)  # the embedded stack's own files
    from cli.embedded import EmbeddedStack, embedded_config
    from service.settings import Settings

    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="normsearch-cancel-bench-"))
    config = embedded_config(
        Settings(), runs_dir=runs, host="127.0.0.1", port=args.port or free_port()
    )
    config = dataclasses.replace(
        config,
        extra_env={
            "NORMSEARCH_HEARTBEAT_INTERVAL_S": str(args.heartbeat_interval),
            "NORMSEARCH_HEARTBEAT_TIMEOUT_S": str(max(30.0, 10 * args.heartbeat_interval)),
        },
    )
    log_dir = runs / "logs"
    worker_log = log_dir / "worker.log"
    stack = EmbeddedStack(config, log_dir=log_dir)
    print(f"runs dir {runs}; API {config.health_url('')}", flush=True)
    stack.start(ready_timeout_s=120)
    engine = make_engine(config.database_url)
    factory = make_session_factory(engine)
    try:
        with factory() as session, session.begin():
            user = auth.get_or_create_user(session, name="bench")
            token, _ = auth.create_token(session, user=user, name="bench")
        client = httpx.Client(
            base_url=config.health_url(API),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
        )
        created = client.post("/jobs", json=tiny_spec(args.epochs))
        created.raise_for_status()
        job_id = created.json()["id"]
        url = f"/jobs/{job_id}"

        def job() -> dict:
            return client.get(url).json()

        seen: dict[int, int] = {}  # trial id -> run
        stale = reused = incomplete = early_409 = early_other = 0
        stop_s: list[float] = []
        for cycle in range(args.cycles):
            run = cycle + 1
            mid_training = cycle % 2 == 0
            if mid_training:
                wait(
                    lambda: (
                        any(t["epochs_used"] >= 1 for t in client.get(f"{url}/trials").json())
                        or job()["status"] not in ("queued", "running")
                    ),
                    f"run {run}'s first epoch",
                    worker_log=worker_log,
                )
            else:
                wait(
                    lambda: job()["status"] != "queued",
                    f"run {run} to start",
                    worker_log=worker_log,
                )
            answer = client.post(f"{url}/cancel")
            cancelled_at = time.monotonic()
            status = answer.json().get("status")
            if answer.status_code != 200 or status not in ("cancelling", "cancelled"):
                raise SystemExit(f"cycle {cycle}: cancel answered {answer.status_code} {status}")
            if status == "cancelling":
                early = client.post(f"{url}/retry")
                if early.status_code == 409:
                    early_409 += 1
                elif job()["status"] == "cancelling":  # a retry of a cancelling job went through
                    early_other += 1
            wait(
                lambda: job()["status"] == "cancelled",
                f"run {run} to be cancelled",
                worker_log=worker_log,
            )
            stop_s.append(time.monotonic() - cancelled_at)
            with factory() as session:
                all_runs = set(session.scalars(select(Trial.run).where(Trial.job_id == job_id)))
                stale += sum(1 for other in all_runs if other != run)
                trials, bad = run_histories(session, job_id, run)
            incomplete += bad
            ids = {t.id for t in trials}
            reused += len(ids & set(seen))
            seen.update({t.id: run for t in trials})
            retried = client.post(f"{url}/retry")
            if retried.status_code != 200:
                raise SystemExit(f"cycle {cycle}: retry answered {retried.status_code}")
            print(
                f"cycle {cycle + 1}/{args.cycles}: run {run} "
                f"({'mid-training' if mid_training else 'at start'}) stopped in "
                f"{stop_s[-1]:.1f} s, {len(ids)} trial(s)",
                flush=True,
            )
        final = wait(
            lambda: (lambda j: j if j["status"] in ("succeeded", "failed") else None)(job()),
            "the last run to finish",
            worker_log=worker_log,
        )
        last_run = args.cycles + 1
        with factory() as session:
            all_runs = set(session.scalars(select(Trial.run).where(Trial.job_id == job_id)))
            stale += sum(1 for other in all_runs if other != last_run)
            trials, bad = run_histories(session, job_id, last_run)
            bad += sum(1 for t in trials if t.variant == "sn" and t.epochs_used != t.epochs_budget)
        incomplete += bad
        reused += len({t.id for t in trials} & set(seen))
        log = worker_log.read_text(errors="replace")
        stale += log.count("IntegrityError") + log.count("Traceback")
        refused = log.count("refuses its writes")
        listed = client.get(f"{url}/trials").json()
        shows_current = all(t["run"] == last_run for t in listed) and len(listed) == len(trials)
    finally:
        stack.stop()
        engine.dispose()
        if args.runs_dir is None:
            shutil.rmtree(runs, ignore_errors=True)

    print()
    print(f"cancel -> retry cycles: {args.cycles} (tiny digits job, {args.epochs} epochs)")
    print(f"last run ({last_run}): {final['status']}, {len(trials)} trial(s)")
    print(f"{'figure':<44} {'value':>8}")
    for name, value in [
        ("stale writes (target 0)", stale),
        ("reused trial ids (target 0)", reused),
        ("incomplete histories (target 0)", incomplete),
        ("stale writes refused by the recorder", refused),
        ("early retries answered 409", early_409),
        ("early retries accepted while cancelling", early_other),
    ]:
        print(f"{name:<44} {value:>8}")
    print(
        f"{'cancel -> cancelled, p50 / max (s)':<44} "
        f"{statistics.median(stop_s):>4.1f} / {max(stop_s):.1f}"
    )
    print(f"{'trials list shows only the current run':<44} {str(shows_current):>8}")
    ok = (
        stale == reused == incomplete == early_other == 0
        and final["status"] == "succeeded"
        and shows_current
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
