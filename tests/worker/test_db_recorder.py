"""DatabaseRecorder: the same events give the same ``trials()`` as MemoryRecorder, on Postgres and
SQLite; replays (in one driver or after a restart) add nothing; writes are batched."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from service import jobs, lifecycle, repositories
from service.db.models import Metric, RatioSnapshot, Trial, User
from service.db.session import make_engine, make_session_factory
from worker.db_recorder import DatabaseRecorder
from worker.recorder import MemoryRecorder
from worker.results import EPOCH_KEYS, EpochRecord

TRIALS, EPOCHS, LAYERS = 2, 5, 20
POOLS = (("in", "ln", "bn"), ("in", "ln", "bn", "gn"))


def ratio(rng: random.Random, pool) -> dict[str, float]:
    # 4 significant digits at most: exact through Postgres' 4-byte REAL (float32 keeps 6).
    raw = [rng.random() + 0.01 for _ in pool]
    return {norm: round(value / sum(raw), 4) for norm, value in zip(pool, raw, strict=True)}


def record(rng: random.Random, trial: int, epoch: int) -> EpochRecord:
    pool = POOLS[trial % 2]
    fixed_layers = LAYERS * epoch // EPOCHS
    ratios = {
        f"layer{i // 3}.{i % 3}.bn{i}": {
            "mean": ratio(rng, pool),
            "var": ratio(rng, pool),
            "fixed": {"mean": i < fixed_layers, "var": i < fixed_layers - 1},
        }
        for i in range(LAYERS)
    }
    return {
        "epoch": epoch,
        "epochs_budget": EPOCHS,
        "train_loss": rng.random() * 2,
        "val_loss": rng.random() * 2,
        "val_accuracy": rng.random(),
        "fraction_fixed": fixed_layers / LAYERS,
        "all_fixed": fixed_layers == LAYERS,
        "stable_evals": max(0, epoch - 3),
        "progress": epoch / EPOCHS,
        "ratios": ratios,
        "done": epoch == EPOCHS,
        "train_seconds": rng.random() * 10,
    }


def test_the_records_here_have_every_key_a_trial_reports():
    """So the round trips below cover every field of ``EpochRecord``."""
    assert set(record(random.Random(0), 0, 1)) == set(EPOCH_KEYS)


def config(trial: int) -> dict:
    return {
        "variant": "sn",
        "epochs": EPOCHS,
        "trial": {"seed": trial, "batch_size": 32, "lr": 0.1, "variant": "sn"},
    }


def feed(recorder, *, replay_epoch: int = 3) -> None:
    """2 trials x 5 epochs interleaved, epoch ``replay_epoch`` of each reported twice (the second
    time with other values: the first report wins), one trial failing."""
    rng = random.Random(0)
    records = {(t, e): record(rng, t, e) for t in range(TRIALS) for e in range(1, EPOCHS + 1)}
    for t in range(TRIALS):
        recorder.trial_started(f"trial_{t}", config(t))
    for e in range(1, EPOCHS + 1):
        for t in range(TRIALS):
            recorder.trial_result(f"trial_{t}", records[t, e])
            if e == replay_epoch + 1:
                replay = copy.deepcopy(records[t, replay_epoch])
                replay["val_accuracy"] = 0.0
                next(iter(replay["ratios"].values()))["mean"]["in"] = 0.5
                recorder.trial_result(f"trial_{t}", replay)
    recorder.trial_finished("trial_0", "TERMINATED")
    recorder.trial_finished("trial_1", "ERROR", "error.txt")


def expected() -> dict:
    memory = MemoryRecorder()
    feed(memory)
    return memory.trials()


def make_job(session: Session) -> str:
    user = User(name="alice")
    session.add(user)
    session.flush()
    return repositories.create_job(session, owner_id=user.id, spec={"model": {}}).id


@pytest.fixture
def pg_factory(pg_engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions on one connection whose outer transaction is rolled back after the test; each
    recorder flush commits a savepoint."""
    with pg_engine.connect() as connection:
        outer = connection.begin()
        yield sessionmaker(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        outer.rollback()


@pytest.fixture
def sqlite_factory(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(params=["pg", "sqlite"])
def factory(request) -> sessionmaker[Session]:
    return request.getfixturevalue(f"{request.param}_factory")


def new_job(factory) -> str:
    with factory() as session, session.begin():
        return make_job(session)


def count(factory, model) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_round_trip_equals_memory_recorder(factory):
    job_id = new_job(factory)
    recorder = DatabaseRecorder(factory, job_id=job_id, batch_size=150)
    feed(recorder)
    want = expected()
    got = recorder.trials()
    assert got == want
    for trial in got.values():  # no gap, no duplicate
        assert [r["epoch"] for r in trial["history"]] == list(range(1, EPOCHS + 1))
    assert got["trial_1"]["error"] == "error.txt" and got["trial_0"]["status"] == "TERMINATED"
    assert count(factory, RatioSnapshot) == TRIALS * EPOCHS * LAYERS
    scalars = len(EPOCH_KEYS) - 2  # every key of a record but epoch and ratios
    assert scalars == 10
    assert count(factory, Metric) == TRIALS * EPOCHS * scalars
    assert recorder.rows_written == TRIALS * EPOCHS * (LAYERS + scalars)

    with factory() as session:
        trials = {t.ray_trial_id: t for t in session.scalars(select(Trial))}
    assert {t.epochs_used for t in trials.values()} == {EPOCHS}
    assert {t.epochs_budget for t in trials.values()} == {EPOCHS}
    assert {t.variant for t in trials.values()} == {"sn"}
    for ray_id, trial in trials.items():
        history = want[ray_id]["history"]
        best = max(history, key=lambda r: r["val_accuracy"])
        assert trial.best_metrics["val_accuracy"] == best["val_accuracy"]
        assert trial.best_metrics["epoch"] == best["epoch"]


def test_a_restarted_driver_replaying_everything_adds_nothing(factory):
    job_id = new_job(factory)
    with DatabaseRecorder(factory, job_id=job_id) as first:
        feed(first)
    rows = count(factory, RatioSnapshot), count(factory, Metric)
    second = DatabaseRecorder(factory, job_id=job_id, batch_size=7)
    feed(second, replay_epoch=2)
    assert second.rows_written == 0
    assert (count(factory, RatioSnapshot), count(factory, Metric)) == rows
    assert second.trials() == expected()


def test_writes_are_batched_by_size_and_by_time(sqlite_factory):
    job_id = new_job(sqlite_factory)
    now = [0.0]
    recorder = DatabaseRecorder(
        sqlite_factory, job_id=job_id, batch_size=1000, flush_interval_s=5.0, clock=lambda: now[0]
    )
    recorder.trial_started("a", config(0))
    rng = random.Random(1)
    recorder.trial_result("a", record(rng, 0, 1))
    assert count(sqlite_factory, RatioSnapshot) == 0  # buffered
    now[0] = 6.0
    recorder.trial_result("a", record(rng, 0, 2))  # interval passed: flushed
    assert count(sqlite_factory, RatioSnapshot) == 2 * LAYERS
    small = DatabaseRecorder(sqlite_factory, job_id=job_id, batch_size=LAYERS, clock=lambda: 0.0)
    small.trial_result("b", record(rng, 0, 1))  # a trial never seen starting: PENDING
    assert count(sqlite_factory, RatioSnapshot) == 3 * LAYERS  # size reached: flushed
    b = small.trials()["b"]
    assert (b["status"], b["config"], len(b["history"])) == ("PENDING", {}, 1)


def test_result_without_ratios_and_with_none_values(sqlite_factory):
    job_id = new_job(sqlite_factory)
    recorder = DatabaseRecorder(sqlite_factory, job_id=job_id)
    recorder.trial_started("bn", {"epochs": 2, "trial": {"variant": "bn"}})
    recorder.trial_result("bn", {"epoch": 1, "train_loss": 0.5, "ratios": {}, "val_loss": None})
    history = recorder.trials()["bn"]["history"]
    assert history == [{"epoch": 1, "train_loss": 0.5, "ratios": {}}]  # None is not stored
    with sqlite_factory() as session:
        assert session.scalars(select(Trial.variant)).one() == "bn"


def test_a_stale_runs_writes_are_refused_with_one_warning_and_no_exception(factory, caplog):
    """Run 1's recorder goes on after the job was cancelled and retried (run 2): its writes
    (a start, results, a finish) raise nothing, write nothing, and log one warning line (no
    traceback, no foreign-key error); run 2's recorder writes normally, under new trial ids."""
    job_id = new_job(factory)
    with factory() as session, session.begin():
        jobs.start_job(session, job_id=job_id)
    old = DatabaseRecorder(factory, job_id=job_id, run=1, attempt=1, flush_interval_s=0.0)
    rng = random.Random(2)
    old.trial_started("a", config(0))
    old.trial_result("a", record(rng, 0, 1))
    with factory() as session:
        (first_id,) = [t.id for t in repositories.list_trials(session, job_id=job_id)]
    with factory() as session, session.begin():
        jobs.cancel_job(session, job_id=job_id)
    old.trial_result("a", record(rng, 0, 2))  # cancelling: the run still writes
    with factory() as session, session.begin():
        jobs.confirm_cancelled(session, job_id=job_id, run=1)
        jobs.retry_job(session, job_id=job_id)
        jobs.start_job(session, job_id=job_id)
    caplog.clear()
    with caplog.at_level("WARNING", logger="worker.db_recorder"):
        old.trial_result("a", record(rng, 0, 3))  # its trial row is gone: no FK error
        old.trial_started("b", config(1))
        old.trial_result("b", record(rng, 1, 1))
        old.trial_finished("a", "TERMINATED")
        old.close()
    warnings = [r for r in caplog.records if r.name == "worker.db_recorder"]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert warnings[0].exc_info is None and "run 1" in warnings[0].getMessage()
    assert "at run 2" in old.stale and old.refused_writes == 4
    assert count(factory, Trial) == 0 and count(factory, RatioSnapshot) == 0

    new = DatabaseRecorder(factory, job_id=job_id, run=2, attempt=1, flush_interval_s=0.0)
    new.trial_started("a", config(0))
    new.trial_result("a", record(rng, 0, 1))
    with factory() as session:
        (trial,) = repositories.list_trials(session, job_id=job_id)
    assert trial.run == 2 and trial.id > first_id  # never a reused id
    assert new.stale is None and count(factory, RatioSnapshot) == LAYERS


def test_a_requeued_attempts_recorder_is_stale_too(sqlite_factory):
    """The reaper requeued the job (the worker was taken for lost): the old attempt's writes
    are refused, a later attempt's are not."""
    job_id = new_job(sqlite_factory)
    with sqlite_factory() as session, session.begin():
        jobs.start_job(session, job_id=job_id)
    first = DatabaseRecorder(sqlite_factory, job_id=job_id, run=1, attempt=1)
    first.trial_started("a", config(0))
    with sqlite_factory() as session, session.begin():
        job = repositories.get_job(session, job_id)
        lifecycle.transition(session, job, "queued", message="worker lost")
        jobs.start_job(session, job_id=job_id)
    first.trial_started("b", config(1))
    assert first.stale == "attempt 2 of run 1 has taken over"
    second = DatabaseRecorder(sqlite_factory, job_id=job_id, run=1, attempt=2)
    second.trial_started("b", config(1))
    assert second.stale is None and count(sqlite_factory, Trial) == 2


def test_the_trials_node_is_its_latest_epochs(factory):
    """``node_id`` (a string: no metric row) goes to ``trials.node_id``; a replayed older epoch
    from another node leaves the latest epoch's."""
    job_id = new_job(factory)
    recorder = DatabaseRecorder(factory, job_id=job_id, flush_interval_s=0.0)
    rng = random.Random(3)
    recorder.trial_started("a", config(0))
    recorder.trial_result("a", {**record(rng, 0, 1), "node_id": "node-1"})
    recorder.trial_result("a", {**record(rng, 0, 2), "node_id": "node-2"})
    recorder.trial_result("a", {**record(rng, 0, 1), "node_id": "node-1"})  # a replay
    recorder.close()
    with factory() as session:
        (trial,) = repositories.list_trials(session, job_id=job_id)
    assert trial.node_id == "node-2"
    assert count(factory, Metric) == 2 * (len(EPOCH_KEYS) - 2)


def test_a_restarted_trial_is_a_job_event_while_its_run_is_current(factory):
    job_id = new_job(factory)
    with factory() as session, session.begin():
        jobs.start_job(session, job_id=job_id)
    recorder = DatabaseRecorder(factory, job_id=job_id, run=1, attempt=1, flush_interval_s=0.0)
    recorder.trial_started("a", config(0))
    recorder.trial_recovered("a", "trial a lost its node n1 (...); restarted from its epoch-2 ...")
    memory = MemoryRecorder()
    memory.trial_recovered("a", "lost")
    assert memory.recoveries() == [("a", "lost")] and memory.trials()["a"]["history"] == []
    with factory() as session, session.begin():
        jobs.cancel_job(session, job_id=job_id)
        jobs.confirm_cancelled(session, job_id=job_id, run=1)
        jobs.retry_job(session, job_id=job_id)
    recorder.trial_recovered("a", "stale")  # the job is in run 2 now: refused, no exception
    with factory() as session:
        events = repositories.get_job(session, job_id, with_children=True).events
        notes = [(e.from_status, e.to_status, e.message) for e in events if e.message]
    assert (
        "running",
        "running",
        "trial a lost its node n1 (...); restarted from its epoch-2 ...",
    ) in notes
    assert not any(message == "stale" for *_, message in notes)


def test_a_compile_fallback_is_a_job_event(sqlite_factory):
    job_id = new_job(sqlite_factory)
    with sqlite_factory() as session, session.begin():
        jobs.start_job(session, job_id=job_id)
    recorder = DatabaseRecorder(sqlite_factory, job_id=job_id, flush_interval_s=0.0)
    recorder.trial_started("a", config(0))
    fallback = "training.compile failed, training eagerly: InvalidCxxCompiler: no compiler"
    recorder.trial_result("a", {**record(random.Random(0), 0, 1), "compile_fallback": fallback})
    recorder.trial_result("a", record(random.Random(0), 0, 2))
    with sqlite_factory() as session:
        events = repositories.get_job(session, job_id, with_children=True).events
        notes = [e.message for e in events if e.message]
    assert notes == [f"trial a: {fallback}"]
    assert [r["epoch"] for r in recorder.trials()["a"]["history"]] == [1, 2]


def test_rms_and_output_ratios_round_trip(factory):
    """A layer mixing ln and rms with point-wise members (its output ratios in the
    ``sn_core.switch_ratios`` shape) reads back as recorded; a layer without them has no
    ``output``."""
    rng = random.Random(1)
    rec = record(rng, 0, 1)
    rec["ratios"] = {
        "blocks.0.norm": {
            "mean": ratio(rng, ("ln", "rms")),
            "var": ratio(rng, ("ln", "rms")),
            "output": ratio(rng, ("norm", "dyt", "none")),
            "fixed": {"mean": False, "var": True},
        },
        "head.norm": {
            "mean": ratio(rng, ("bn", "rms")),
            "var": ratio(rng, ("bn", "rms")),
            "fixed": {"mean": False, "var": False},
        },
    }
    recorder = DatabaseRecorder(factory, job_id=new_job(factory), batch_size=1)
    recorder.trial_started("trial_0", config(0))
    recorder.trial_result("trial_0", rec)
    recorder.trial_finished("trial_0", "TERMINATED")
    (history,) = [t["history"] for t in recorder.trials().values()]
    assert history[0]["ratios"] == rec["ratios"]
    with factory() as session:
        rows = {s.layer: s for s in session.scalars(select(RatioSnapshot))}
    assert rows["blocks.0.norm"].mean_rms == rec["ratios"]["blocks.0.norm"]["mean"]["rms"]
    assert rows["blocks.0.norm"].out_dyt == rec["ratios"]["blocks.0.norm"]["output"]["dyt"]
    assert rows["head.norm"].out_norm is None and rows["head.norm"].mean_ln is None
