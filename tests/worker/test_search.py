"""The search engine on a real local Ray (2 CPUs): end to end, crash recovery, early stopping."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch
import yaml

import sn_core
import worker.search
from service.spec import JobSpec
from tests.support.datasets import poisoned_digits
from worker.data import load_dataset
from worker.job import JobStateError, run_job, verification_grid, write_job_report
from worker.recorder import JsonlRecorder, MemoryRecorder
from worker.search import run_trials, trial_grid
from worker.trainable import load_checkpoint_state, train_trial

# End to end: real processes (Ray trials, Celery workers); not part of `make test-fast`.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # address="local": a Ray of our own, never another process's cluster on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_spec(**overrides) -> JobSpec:
    payload = {
        "model": {"arch": "resnet20"},
        "dataset": {"kind": "digits"},
        "training": {"epochs": 3, "batch_size": 64, "lr": 0.1},
        "search": {
            "sparsity": {"end": 0.5},
            "stop_when_stable": {"enabled": False},
            "trials": {"seeds": [0, 1]},
        },
        "verify": {"enabled": True, "epochs": 1, "baselines": ["bn"]},
    }
    for key, value in overrides.items():
        payload[key] = {**payload.get(key, {}), **value}
    return JobSpec.model_validate(payload)


@pytest.fixture(scope="module")
def digits_job(local_ray, tmp_path_factory):
    """One tiny finished job (search, verification, export, report), shared by the tests that
    read its outputs."""
    tmp_path = tmp_path_factory.mktemp("digits-job")
    spec = tiny_spec()
    out = tmp_path / "out"
    recorder = JsonlRecorder(tmp_path / "state" / "trials.jsonl")
    result = run_job(
        spec, data_roots=[tmp_path], work_dir=tmp_path / "state", recorder=recorder, out_dir=out
    )
    files = write_job_report(result, out)
    data = load_dataset(spec.dataset, data_roots=[tmp_path])
    return SimpleNamespace(spec=spec, result=result, files=files, data=data, tmp_path=tmp_path)


def test_digits_search_end_to_end_writes_every_output(digits_job):
    spec, result, files, tmp_path = (
        digits_job.spec,
        digits_job.result,
        digits_job.files,
        digits_job.tmp_path,
    )
    search = [o for o in result.outcomes if o.variant == "sn"]
    assert len(search) == 2 and all(o.status == "TERMINATED" for o in search)
    assert all([r["epoch"] for r in o.history] == [1, 2, 3] for o in search)
    assert all(o.val_accuracy > 0.3 for o in search)  # chance is 0.1

    # search_plan.json: one entry per SN layer of resnet20, every choice from the pool.
    plan = sn_core.NormalizerPlan.load(files["search_plan_json"])
    assert plan == result.recommendation.plan
    layers = sn_core.switch_layers(sn_core.convert_to_switchnorm(sn_core.build_model("resnet20")))
    assert list(plan.names) == [name for name, _ in layers]
    assert all(
        entry.mean in ("in", "ln", "bn") and entry.var in ("in", "ln", "bn") for entry in plan
    )
    assert sn_core.NormalizerPlan.load(files["plan_yaml"]) == sn_core.NormalizerPlan.load(
        files["plan_json"]
    )

    # The search checkpoint loads without pickle and classifies digits like the SN model did.
    model, ckpt_plan, model_spec = sn_core.load_finalized(result.search_checkpoint)
    assert model_spec["arch"] == "resnet20" and model_spec["in_channels"] == 1
    accuracy = _accuracy(model, digits_job.data)
    best = next(o for o in search if o.trial_id == result.recommendation.best_trial)
    assert accuracy == pytest.approx(best.val_accuracy, abs=1e-6)
    assert ckpt_plan.metadata["checkpoint"]["val_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert ckpt_plan.metadata["checkpoint"]["trial_id"] == best.trial_id
    assert not any(isinstance(m, sn_core.SwitchNorm) for m in model.modules())

    report = json.loads(files["report_json"].read_text())
    assert report["verification"]["results"]["plan"]["val_accuracy"] is not None
    assert report["verification"]["results"]["bn"]["val_accuracy"] is not None
    assert report["verification"]["results"]["sn"]["val_accuracy"] is not None
    # The verdict pairs the configurations on the seeds every one of them finished.
    decided = report["verification"]["verdict"]
    verification_seeds = report["verification"]["seeds"]
    assert decided["chosen"] in {"plan", *spec.verify.baselines} and decided["text"]
    assert decided["seeds"] == verification_seeds
    for row in report["verification"]["results"].values():
        assert row["seeds"] == verification_seeds and row["n"] == len(verification_seeds)
    assert {c["baseline"] for c in decided["comparisons"]} == set(spec.verify.baselines)
    rows = files["ratios_csv"].read_text().strip().splitlines()
    assert len(rows) - 1 >= 2 * 3 * len(layers)  # trials x epochs x layers (plus verification)
    assert files["ratios_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The JSONL history is complete: every epoch of every trial once.
    recorded = JsonlRecorder(tmp_path / "state" / "trials.jsonl").trials()
    for outcome in search:
        assert [r["epoch"] for r in recorded[outcome.trial_id]["history"]] == [1, 2, 3]


def _accuracy(model, data) -> float:
    with torch.no_grad():
        return (model.eval()(data.x_val).argmax(1) == data.y_val).float().mean().item()


def _layer_choices(plan) -> dict[str, tuple[str, str]]:
    return {layer.name: (layer.mean, layer.var) for layer in plan}


def _best_run(result, config):
    runs = [o for o in result.verification_outcomes if o.variant == config]
    return max(runs, key=lambda o: (o.val_accuracy, -o.seed))


def _assert_is_run(model, run):
    """``model``'s weights are exactly the verification run's last checkpoint's."""
    state, _ = load_checkpoint_state(Path(run.checkpoint_dir))
    saved = model.state_dict()
    assert set(saved) == set(state["model"])
    for key, tensor in state["model"].items():
        assert torch.equal(saved[key], tensor), key


def test_the_checkpoint_and_the_plan_are_the_verdicts_configuration(digits_job):
    result, files = digits_job.result, digits_job.files
    chosen = result.verification["verdict"]["chosen"]
    assert chosen in ("plan", "bn")
    plan = sn_core.NormalizerPlan.load(files["plan_json"])
    assert plan.metadata["configuration"] == chosen and plan.metadata["verified"] is True
    assert plan.metadata["verification"] == result.verification["verdict"]["text"]
    assert "search_plan.json" in plan.metadata["search_plan"]
    if chosen == "plan":
        assert _layer_choices(plan) == _layer_choices(result.recommendation.plan)
    else:  # a uniform baseline: every norm layer of the network is that normalizer
        zoo = sn_core.build_model("resnet20").named_modules()
        norms = [n for n, m in zoo if isinstance(m, torch.nn.BatchNorm2d)]
        assert plan.names == norms
        assert set(_layer_choices(plan).values()) == {(chosen, chosen)}

    # The checkpoint zip is that configuration: its layers are plan.json's, its weights the best
    # verification run's (the highest final-epoch accuracy of the configuration's seeds).
    model, ckpt_plan, _ = sn_core.load_finalized(result.checkpoint)
    assert result.checkpoint.suffix == ".zip"
    assert _layer_choices(ckpt_plan) == _layer_choices(plan)
    run = _best_run(result, chosen)
    _assert_is_run(model, run)
    info = ckpt_plan.metadata["checkpoint"]
    assert info == json.loads(files["report_json"].read_text())["outputs"]["checkpoint"]
    assert (info["configuration"], info["seed"], info["trial_id"]) == (
        chosen,
        run.seed,
        run.trial_id,
    )
    assert info["verified"] is True and info["batchnorm_folded"] is False
    assert (
        info["val_accuracy"]
        == run.val_accuracy
        == pytest.approx(_accuracy(model, digits_job.data), abs=1e-6)
    )
    per_seed = result.verification["verdict"]["configs"][chosen]["per_seed"]
    assert info["val_accuracy"] == max(per_seed.values())


@pytest.mark.parametrize("config", ["plan", "bn"])
def test_each_configuration_exports_folded_or_not(digits_job, config, tmp_path):
    """Whichever configuration a verdict picks, its checkpoint is its best run; folding removes
    every BatchNorm after a convolution and keeps the outputs."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from worker.export import Choice, deliverable_plan, export_checkpoint

    spec, data, result = digits_job.spec, digits_job.data, digits_job.result
    choice = Choice(config, True, "within_noise", "chosen by this test")
    plan = deliverable_plan(spec, data, result.recommendation, choice)
    paths = {}
    for fold in (False, True):
        folded_spec = spec.model_copy(
            update={"export": spec.export.model_copy(update={"fold_batchnorm": fold})}
        )
        paths[fold] = tmp_path / f"checkpoint-{fold}.zip"
        export_checkpoint(
            folded_spec,
            data,
            plan=plan,
            choice=choice,
            recommendation=result.recommendation,
            search_outcomes=result.outcomes,
            verification_outcomes=result.verification_outcomes,
            path=paths[fold],
        )
    plain, plain_plan, _ = sn_core.load_finalized(paths[False])
    folded, folded_plan, _ = sn_core.load_finalized(paths[True])
    _assert_is_run(plain, _best_run(result, config))
    assert _layer_choices(plain_plan) == _layer_choices(folded_plan) == _layer_choices(plan)
    bn_layers = sum(choice == ("bn", "bn") for choice in _layer_choices(plan).values())
    info = folded_plan.metadata["checkpoint"]
    assert info["batchnorm_folded"] is (bn_layers > 0) and info["folded_layers"] == bn_layers
    # every BatchNorm of resnet20 follows a convolution: none is left
    assert not any(isinstance(m, _BatchNorm) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(data.x_val), plain(data.x_val), rtol=1e-4, atol=1e-4)


def test_without_verification_the_checkpoint_is_the_search_model_with_the_recommended_plan(
    digits_job, tmp_path
):
    from worker.export import chosen_configuration, deliverable_plan, export_checkpoint

    spec, data, result = digits_job.spec, digits_job.data, digits_job.result
    choice = chosen_configuration(None)
    plan = deliverable_plan(spec, data, result.recommendation, choice)
    assert _layer_choices(plan) == _layer_choices(result.recommendation.plan)
    assert plan.metadata["verified"] is False
    assert plan.metadata["verification"].startswith("not verified")
    path = tmp_path / "checkpoint.zip"
    info = export_checkpoint(
        spec,
        data,
        plan=plan,
        choice=choice,
        recommendation=result.recommendation,
        search_outcomes=result.outcomes,
        verification_outcomes=[],
        path=path,
    )
    model, ckpt_plan, _ = sn_core.load_finalized(path)
    assert _layer_choices(ckpt_plan) == _layer_choices(result.recommendation.plan)
    assert info["verified"] is False and info["trial_id"] == result.recommendation.best_trial
    assert info["val_accuracy"] == pytest.approx(_accuracy(model, data), abs=1e-6)


def test_rerunning_a_finished_job_resumes_without_retraining(tmp_path):
    spec = tiny_spec(verify={"enabled": False}, search={"trials": {"seeds": [0]}})
    recorder = MemoryRecorder()
    data = load_dataset(spec.dataset, data_roots=[tmp_path])
    first = run_trials(
        spec, data, name="s", storage_dir=tmp_path, recorder=recorder, grid=trial_grid(spec)
    )
    # A new driver (a fresh recorder, as after a restart) restores the finished experiment: it
    # trains nothing, and its outcomes carry the history the first driver saw (from Ray's state).
    fresh = MemoryRecorder()
    again = run_trials(
        spec, data, name="s", storage_dir=tmp_path, recorder=fresh, grid=trial_grid(spec)
    )
    assert [o.trial_id for o in again.outcomes] == [o.trial_id for o in first.outcomes]
    history = recorder.trials()[first.outcomes[0].trial_id]["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert [r["epoch"] for r in first.outcomes[0].history] == [1, 2, 3]
    assert again.outcomes[0].history == first.outcomes[0].history
    assert all(not trial["history"] for trial in fresh.trials().values())  # no epoch retrained


def lr_sweep_spec(scaling: str, **training) -> JobSpec:
    return tiny_spec(
        training={"batch_size": 32, "lr": 0.1, "lr_scaling": scaling, **training},
        search={"trials": {"seeds": [0], "batch_sizes": [8, 32, 64], "lrs": [0.1, 0.2]}},
    )


@pytest.mark.parametrize(
    ("scaling", "factors"),
    [
        ("linear", {8: 0.25, 32: 1.0, 64: 2.0}),
        ("sqrt", {8: 0.5, 32: 1.0, 64: math.sqrt(2)}),
        ("none", {8: 1.0, 32: 1.0, 64: 1.0}),
    ],
)
def test_search_and_verification_grids_carry_each_trials_effective_lr(scaling, factors):
    spec = lr_sweep_spec(scaling)
    grid = trial_grid(spec)
    # The identity (seed, batch size, base lr) is the sweep's, as before; effective_lr is added.
    assert [(p["seed"], p["batch_size"], p["lr"]) for p in grid] == [
        (0, b, lr) for b in (8, 32, 64) for lr in (0.1, 0.2)
    ]
    for point in grid:
        assert math.isclose(point["effective_lr"], point["lr"] * factors[point["batch_size"]])
    # Verification trains at the target batch size (the largest, 64) with the first lr, by the
    # same rule as the search trial it is compared with.
    verification = verification_grid(spec)
    assert {p["variant"] for p in verification} == {"plan", "bn"}
    assert all(p["batch_size"] == 64 and p["lr"] == 0.1 for p in verification)
    assert all(math.isclose(p["effective_lr"], 0.1 * factors[64]) for p in verification)


def test_trials_train_with_their_effective_lr_and_report_it(tmp_path):
    # A constant schedule leaves the optimizer's rate at the trial's rate: the checkpoint shows
    # what it trained with. Batch 16 and 64 around training.batch_size 32, linear scaling.
    spec = tiny_spec(
        training={"epochs": 1, "batch_size": 32, "lr": 0.1, "lr_schedule": "constant"},
        search={"trials": {"seeds": [0], "batch_sizes": [16, 64]}},
    )
    recorder = MemoryRecorder()
    data = load_dataset(spec.dataset, data_roots=[tmp_path])
    run = run_trials(
        spec, data, name="lr", storage_dir=tmp_path, recorder=recorder, grid=trial_grid(spec)
    )
    expected = {16: 0.05, 64: 0.2}
    assert [(o.batch_size, o.lr) for o in run.outcomes] == [(16, 0.1), (64, 0.1)]
    for outcome in run.outcomes:
        assert outcome.status == "TERMINATED"
        assert math.isclose(outcome.effective_lr, expected[outcome.batch_size])
        state, _ = load_checkpoint_state(Path(outcome.checkpoint_dir))
        rates = {group["name"]: group["lr"] for group in state["optimizer"]["param_groups"]}
        assert math.isclose(rates["params"], expected[outcome.batch_size]), rates
        config = recorder.trials()[outcome.trial_id]["config"]
        assert config["trial"]["effective_lr"] == outcome.effective_lr


def test_work_dir_of_another_spec_is_refused(tmp_path):
    recorder = MemoryRecorder()
    spec = tiny_spec(verify={"enabled": False}, search={"trials": {"seeds": [0]}})
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "spec.json").write_text(json.dumps({"fingerprint": "other"}))
    with pytest.raises(JobStateError, match="different search"):
        run_job(spec, data_roots=[tmp_path], work_dir=tmp_path / "state", recorder=recorder)


def test_killed_trial_resumes_from_its_checkpoint_with_complete_history(tmp_path, monkeypatch):
    spec = tiny_spec(
        training={"epochs": 6, "batch_size": 128},
        search={"trials": {"seeds": [0]}},
        verify={"enabled": False},
    )
    recorder = JsonlRecorder(tmp_path / "trials.jsonl")
    data = load_dataset(spec.dataset, data_roots=[tmp_path])
    pid_file = tmp_path / "trial-pids"  # one line per process that ran the trial

    def train_trial_noting_its_pid(config, data):
        with open(pid_file, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        train_trial(config, data)

    monkeypatch.setattr(worker.search, "train_trial", train_trial_noting_its_pid)

    def pids() -> list[int]:
        return [int(line) for line in pid_file.read_text().split()] if pid_file.exists() else []

    killed = {}

    def kill_after_second_epoch():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for trial in recorder.trials().values():
                if len(trial["history"]) >= 2 and pids():
                    killed["pid"] = pids()[-1]
                    os.kill(killed["pid"], signal.SIGKILL)
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_second_epoch, daemon=True)
    watcher.start()
    run = run_trials(
        spec, data, name="crash", storage_dir=tmp_path, recorder=recorder, grid=trial_grid(spec)
    )
    watcher.join(timeout=5)
    assert killed, "the trial finished before it could be killed"
    (outcome,) = run.outcomes
    assert outcome.status == "TERMINATED"
    epochs = [r["epoch"] for r in outcome.history]
    assert epochs == [1, 2, 3, 4, 5, 6]  # no gap, no duplicate
    assert pids()[0] == killed["pid"] and len(set(pids())) == 2  # a new worker took over
    lines = [json.loads(x) for x in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert sorted(e["record"]["epoch"] for e in lines if e["event"] == "result") == epochs
    # The restart, as users read it (its node is alive: a failure, not a lost node).
    ((trial_id, message),) = recorder.recoveries()
    assert trial_id == outcome.trial_id
    assert re.fullmatch(
        rf"trial {trial_id} failed \(.+\); restarted from its epoch-[2-5] checkpoint "
        r"\(retry 1 of at most 3\)",
        message,
        flags=re.DOTALL,
    ), message
    assert [e["message"] for e in lines if e["event"] == "recovered"] == [message]


def test_search_stops_early_once_choices_are_stable(tmp_path):
    spec = tiny_spec(
        training={"epochs": 12, "batch_size": 128},
        search={
            "sparsity": {"end": 0.25},
            "stop_when_stable": {"enabled": True, "patience": 2},
            "trials": {"seeds": [0]},
        },
        verify={"enabled": False},
    )
    data = load_dataset(spec.dataset, data_roots=[tmp_path])
    run = run_trials(
        spec, data, name="early", storage_dir=tmp_path, recorder=MemoryRecorder(),
        grid=trial_grid(spec),
    )  # fmt: skip
    (outcome,) = run.outcomes
    assert outcome.epochs_budget == 12
    assert outcome.epochs_used < 12
    last = outcome.history[-1]
    assert last["done"] and last["all_fixed"] and last["stable_evals"] == 2
    # It trained `patience` full epochs with every choice fixed before stopping.
    first_fixed = next(r["epoch"] for r in outcome.history if r["all_fixed"])
    assert outcome.epochs_used == first_fixed + 2


def test_example_specs_validate():
    paths = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))
    # The examples README and the demo name: they must exist, not only validate when present.
    assert {"digits.yaml", "synthetic_batch_sizes.yaml"} <= {path.name for path in paths}
    for path in paths:
        JobSpec.model_validate(yaml.safe_load(path.read_text()))


def test_asha_scheduler_runs_and_reports_every_trial(tmp_path):
    spec = tiny_spec(
        training={"epochs": 4, "batch_size": 128},
        search={"scheduler": "asha", "trials": {"seeds": [0, 1]}},
        verify={"enabled": False},
    )
    data = load_dataset(spec.dataset, data_roots=[tmp_path])
    run = run_trials(
        spec, data, name="asha", storage_dir=tmp_path, recorder=MemoryRecorder(),
        grid=trial_grid(spec),
    )  # fmt: skip
    assert len(run.outcomes) == 2
    assert all(o.status == "TERMINATED" and 1 <= o.epochs_used <= 4 for o in run.outcomes)


def test_a_diverged_trial_fails_with_its_reason_and_complete_history(tmp_path):
    spec = tiny_spec(
        model={"arch": "mlp"},
        training={"epochs": 2, "batch_size": 64},
        search={"pool": ["ln", "bn"], "trials": {"seeds": [0]}},
    )
    recorder = MemoryRecorder()
    run = run_trials(
        spec,
        poisoned_digits(),
        name="diverge",
        storage_dir=tmp_path,
        recorder=recorder,
        grid=trial_grid(spec),
    )
    (outcome,) = run.outcomes
    assert outcome.status == "ERROR" and outcome.diverged
    assert outcome.error == outcome.diverged and "training diverged" in outcome.error
    assert outcome.epochs_used == 1 and len(outcome.history) == 1  # one epoch, then it stopped
    stored = recorder.trials()[outcome.trial_id]
    assert stored["status"] == "ERROR" and stored["error"] == outcome.diverged
    json.dumps(outcome.to_dict(), allow_nan=False)


def test_a_failing_trial_reports_its_exception_not_a_file_path(tmp_path):
    # Batch size 0 passes no spec (a grid point made here): the trainable divides by it.
    spec = tiny_spec(
        model={"arch": "mlp"},
        training={"epochs": 1, "batch_size": 64},
        search={"pool": ["ln", "bn"], "trials": {"seeds": [0]}},
    )
    recorder = MemoryRecorder()
    run = run_trials(
        spec,
        load_dataset(spec.dataset),
        name="fails",
        storage_dir=tmp_path,
        recorder=recorder,
        grid=[worker.search.grid_point(spec, seed=0, batch_size=0, lr=0.1)],
    )
    (outcome,) = run.outcomes
    assert outcome.status == "ERROR"
    assert outcome.error == "ZeroDivisionError: division by zero"
    stored = recorder.trials()[outcome.trial_id]
    # What the database (and GET /jobs/{id}/trials) gets: the exception, not error.txt's path.
    assert stored["status"] == "ERROR" and stored["error"] == "ZeroDivisionError: division by zero"


def test_the_fit_check_reads_the_nodes_of_the_joined_ray(local_ray, tmp_path):
    """The local Ray of 2 CPUs is one node of 2 CPUs: a trial of 2 fits, one of 3 cannot (and
    would pend forever), the GPU that no node has neither; the shapes are what gets published."""
    from service.cluster import ClusterFitError, published_capacity
    from service.spec import ResourcesSpec
    from worker.search import CapacityPublisher, check_trials_fit, cluster_capacity

    capacity = cluster_capacity()
    gpus = ray.cluster_resources().get("GPU", 0.0)
    assert [(n.cpus, n.gpus) for n in capacity.nodes] == [(2.0, gpus)]
    assert check_trials_fit(ResourcesSpec(cpus_per_trial=2), grace_s=0).nodes == capacity.nodes
    started = time.monotonic()
    with pytest.raises(ClusterFitError) as raised:
        check_trials_fit(ResourcesSpec(cpus_per_trial=3, gpus_per_trial=0), grace_s=1.5)
    assert time.monotonic() - started >= 1.5  # it waited the grace for a node to join
    assert str(raised.value).startswith(
        "resources.cpus_per_trial: 3 CPUs per trial, but no node of the Ray cluster has more "
        "than 2 CPUs"
    )
    stop = threading.Event()
    stop.set()  # cancelled while waiting: no failure, the caller's stop check decides
    too_many = ResourcesSpec(cpus_per_trial=1, gpus_per_trial=gpus + 1)
    assert check_trials_fit(too_many, grace_s=30, stop_event=stop).nodes == capacity.nodes

    CapacityPublisher.start(tmp_path)
    assert published_capacity(tmp_path, max_age_s=60).nodes == capacity.nodes
