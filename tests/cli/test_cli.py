"""The command line names problems instead of printing tracebacks."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner(env={"COLUMNS": "400"})  # no wrapping inside error boxes


def test_invalid_spec_names_each_field(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("model: {arch: resnet99}\ndataset: {kind: digits}\ntraining: {epochs: -3}\n")
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "model.arch" in result.output and "unknown arch" in result.output
    assert "training.epochs" in result.output
    assert "Traceback" not in result.output


def test_dataset_outside_data_roots_is_refused(tmp_path, monkeypatch):
    from service.settings import get_settings

    monkeypatch.setenv("NORMSEARCH_DATA_ROOTS", str(tmp_path / "data"))
    get_settings.cache_clear()
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {arch: resnet20}\ndataset: {kind: npz, path: ../../etc/passwd}\n")
    try:
        result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "out")])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "outside the configured data roots" in result.output


def test_missing_and_malformed_spec_files(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    result = runner.invoke(app, ["run", str(broken)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_schema_command_prints_the_json_schema():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert set(json.loads(result.output)["required"]) == {"model", "dataset"}


def test_batch_size_table_lists_each_batch_size_in_order():
    from rich.console import Console

    from cli.render import batch_size_table

    rows = {
        "64": {"mean_ratio": {"in": 0.1, "bn": 0.9}, "var_ratio": {"in": 0.2, "bn": 0.8}},
        "4": {"mean_ratio": {"in": 0.7, "bn": 0.3}, "var_ratio": {"in": 0.6, "bn": 0.4}},
    }
    console = Console(record=True, width=200)
    console.print(batch_size_table(rows))
    text = console.export_text()
    assert text.index(" 4 ") < text.index(" 64 ")
    assert "0.90" in text and "0.70" in text


def test_verification_shows_the_verdict_first_and_no_std_for_one_seed():
    from rich.console import Console

    from cli.render import verdict_lines, verification_table
    from worker.verdict import verdict

    decided = verdict({"plan": {0: 0.90, 1: 0.92, 2: 0.91}, "bn": {0: 0.60, 1: 0.62, 2: 0.61}})
    verification = {
        "epochs": 2,
        "batch_size": 8,
        "seeds": [0, 1, 2],
        "results": {
            "plan": {"label": "plan", "val_accuracy": 0.91, "std": 0.01, "n": 3},
            "gn": {"label": "all-GN", "val_accuracy": 0.5, "std": None, "n": 1},
        },
        "verdict": decided.to_dict(),
    }
    lines = verdict_lines(verification)
    assert lines[0].endswith(decided.text) and decided.chosen == "plan"
    assert "plan - all-BN: +30.0 points (95% CI" in lines[1] and "3 seed(s)" in lines[1]
    assert verdict_lines({"results": {}}) == [] and verdict_lines(None) == []
    console = Console(width=200, record=True)
    console.print(verification_table(verification))
    text = console.export_text()
    gn_row = next(line for line in text.splitlines() if "all-GN" in line)
    assert "0.500" in gn_row and "0.0" not in gn_row.replace("0.500", "")  # no std for 1 seed


def test_recommendation_table_marks_indifferent_layers_and_a_single_trial():
    from rich.console import Console

    from cli.render import recommendation_table

    def shown(recommendation) -> str:
        console = Console(width=300, record=True)
        console.print(recommendation_table(recommendation))
        return console.export_text()

    layers = [
        {"name": "a", "mean": "bn", "var": "bn", "confidence": 0.0},
        {"name": "b", "mean": "in", "var": "bn", "confidence": 0.75},
    ]
    aggregation = {"indifferent_layers": ["a"], "rule": "cheapest at inference"}
    several = {
        "target_batch_size": 8,
        "plan": {"layers": layers, "metadata": {"trials": 3}},
        "summary": {"aggregation": aggregation},
    }
    text = shown(several)
    row_a = next(line for line in text.splitlines() if "│ a " in line)
    row_b = next(line for line in text.splitlines() if "│ b " in line)
    assert "indifferent" in row_a and "indifferent" not in row_b and "0.75" in row_b
    assert "cheapest at inference" in text
    single = {**several, "plan": {"layers": layers, "metadata": {"trials": 1}}}
    assert "1 trial" in shown(single) and "0.75" not in shown(single)
    assert recommendation_table({}) is None


def test_live_trials_view_shows_the_base_and_the_effective_lr():
    from rich.console import Console

    from cli.progress import LiveTrialsView

    console = Console(record=True, width=160, force_terminal=False)
    with LiveTrialsView(console) as view:
        point = {"seed": 0, "batch_size": 8, "lr": 0.1, "effective_lr": 0.025}
        view.trial_started("t-small", {"variant": "sn", "epochs": 2, "trial": point})
        view.trial_result("t-small", {"epoch": 1, "epochs_budget": 2, "val_accuracy": 0.5})
    text = console.export_text()
    (header,) = [line for line in text.splitlines() if "trial" in line and "variant" in line]
    (row,) = [line for line in text.splitlines() if "t-small" in line]
    cells = dict(
        zip(
            [cell.strip() for cell in header.split("┃")[1:-1]],
            [cell.strip() for cell in row.split("│")[1:-1]],
            strict=True,
        )
    )
    assert (cells["batch"], cells["lr"], cells["lr (effective)"]) == ("8", "0.1", "0.025")
    assert (cells["epoch"], cells["val acc (newest epoch)"]) == ("1/2", "0.500")


def test_outputs_lines_say_what_the_plan_and_each_checkpoint_are():
    from cli.render import outputs_lines
    from worker.export import Choice, chosen_configuration

    choice = Choice("bn", True, "within_noise", "use all-BN: the plan is not better")
    checkpoint = {
        **choice.metadata(),
        "source": "verification run of all-BN (trained from scratch)",
        "seed": 1,
        "val_accuracy": 0.9861,
        "accuracy": "final-epoch validation accuracy of this run, the highest of 2 seeds (0, 1)",
        "fold_batchnorm": "requested: 19 BatchNorm layer(s) folded into their convolution",
    }
    unverified = {
        **chosen_configuration(None).metadata(),
        "source": "the best search trial's SN model, finalized with the recommended plan",
        "seed": 0,
        "val_accuracy": 0.5,
        "accuracy": "validation accuracy of this model, evaluated after finalization",
    }
    lines = outputs_lines(
        {"plan": choice.metadata(), "checkpoint": checkpoint, "search_checkpoint": unverified}
    )
    assert lines[0].startswith("plan.json: all-BN (verified)") and "search_plan.json" in lines[0]
    assert lines[1].startswith("checkpoint: all-BN; verification run") and "seed 1" in lines[1]
    assert "0.986 (final-epoch validation accuracy" in lines[1] and "not verified" not in lines[1]
    assert "19 BatchNorm layer(s) folded" in lines[1]
    assert lines[2].startswith("search checkpoint: the per-layer plan")
    assert lines[2].endswith("; not verified")
    assert outputs_lines(None) == [] and outputs_lines({"plan": {"target_batch_size": 8}}) == []


def _mlp_trial(trial_id: str, seed: int, batch_size: int, choice: str):
    """A finished search trial of a small SN MLP whose every layer is fixed to ``choice``."""
    import sn_core
    from worker.results import TrialOutcome

    model = sn_core.convert_to_switchnorm(
        sn_core.build_model("mlp", num_classes=3, in_channels=1, input_size=16)
    )
    for _, layer in sn_core.switch_layers(model):
        layer.fix(choice, choice)
    ratios = {
        name: {key: r[key] for key in ("mean", "var", "fixed")}
        for name, r in sn_core.switch_ratios(model).items()
    }
    return TrialOutcome(
        trial_id=trial_id, seed=seed, batch_size=batch_size, lr=0.1, status="TERMINATED",
        epochs_used=1, epochs_budget=1, val_accuracy=0.9,
        history=[{"epoch": 1, "val_accuracy": 0.9, "ratios": ratios}],
        plan=sn_core.plan_from_model(model).to_dict(),
    )  # fmt: skip


def test_bn_trend_table_shows_bns_share_growing_with_the_batch_final_epoch_labelled():
    """From a real recommendation's report.json form: BN's share per batch size, overall and
    per depth third, and the layers choosing BN."""
    from rich.console import Console

    from cli.render import bn_trend_table
    from worker.recommend import recommend

    trials = [
        _mlp_trial("a", 0, 4, "ln"),
        _mlp_trial("b", 1, 64, "bn"),
        _mlp_trial("c", 2, 64, "bn"),
    ]
    by_batch_size = recommend(trials, target_batch_size=64).to_dict()["by_batch_size"]
    layers = len(by_batch_size["64"]["layers"])
    console = Console(record=True, width=250)
    console.print(bn_trend_table(by_batch_size))
    text = console.export_text()
    assert "final-epoch ratios" in text
    row4 = next(line for line in text.splitlines() if line.strip().startswith("│          4"))
    row64 = next(line for line in text.splitlines() if line.strip().startswith("│         64"))
    assert "0.00" in row4 and f"0/0 of {layers}" in row4
    assert "1.00" in row64 and f"{layers}/{layers} of {layers}" in row64 and "│      2 │" in row64
    assert text.index(row4) < text.index(row64)
    no_bn = {"8": {"mean_ratio": {"ln": 1.0}, "var_ratio": {"ln": 1.0}, "choices": {}}}
    assert bn_trend_table(no_bn) is None  # BN not in the pool: nothing to trend


def test_recommendation_and_ratio_tables_show_rms_and_output_choices():
    from rich.console import Console

    from cli.render import baseline_label, ratio_rows_table, recommendation_table

    def shown(renderable) -> str:
        console = Console(width=300, record=True)
        console.print(renderable)
        return console.export_text()

    layers = [
        {"name": "a", "mean": "rms", "var": "rms", "confidence": 1.0},
        {"name": "b", "mean": "ln", "var": "ln", "confidence": 1.0, "output": "none"},
        {"name": "c", "mean": "bn", "var": "bn", "confidence": 1.0},
    ]
    recommendation = {
        "plan": {"layers": layers, "metadata": {"trials": 2}},
        "summary": {"outputs": {"a": "dyt", "b": "none"}},
        "torch_layers": {"a": "DynamicTanh(8)", "b": "Identity", "c": "BatchNorm2d(8)"},
    }
    lines = shown(recommendation_table(recommendation)).splitlines()
    rows = {line.split("│")[1].strip(): line for line in lines if line.count("│") > 3}
    header = next(
        line
        for line in shown(recommendation_table(recommendation)).splitlines()
        if "┃ layer" in line
    )
    assert "output" in header and "torch layer" in header
    assert "DyT" in rows["a"] and "DynamicTanh(8)" in rows["a"] and "rms" in rows["a"]
    assert "none" in rows["b"] and "Identity" in rows["b"]
    assert "│ -" in rows["c"] and "BatchNorm2d(8)" in rows["c"]
    plain = shown(recommendation_table({"plan": {"layers": layers[2:]}}))
    assert "output" not in plain and "torch layer" not in plain

    ratios = {
        "t.norm": {"mean": {"ln": 0.3, "rms": 0.7}, "var": {"ln": 0.4, "rms": 0.6},
                   "output": {"norm": 0.1, "dyt": 0.8, "none": 0.1}},
        "head.bn": {"mean": {"bn": 1.0, "rms": 0.0}, "var": {"bn": 1.0, "rms": 0.0}},
    }  # fmt: skip
    text = shown(ratio_rows_table(ratios))
    assert "mean RMS" in text and "out DyT" in text
    assert "rms/rms -> dyt" in text and "bn/bn" in text
    assert [baseline_label(b) for b in ("bn", "rms", "dyt", "none")] == [
        "all-BN", "all-RMS", "all-DyT", "no-norm",
    ]  # fmt: skip
