"""bench/transformer_norms.py: its jobs' specs, its target judged as the issue states it (the
final recommendation within noise of the best uniform baseline, DyT grid included), and its
Markdown, on hand-made results."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "transformer_norms.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("transformer_norms", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def case(values, verdict, *, metric="accuracy", layers=None, default_alpha0=0.5):
    return {
        "case": "vit-digits" if metric == "accuracy" else "char-lm",
        "note": "a note",
        "metric": metric,
        "higher_is_better": metric == "accuracy",
        "epochs": 10,
        "seeds": [0, 1, 2],
        "default_alpha0": default_alpha0,
        "alpha0_grid": [0.5, 1.0, 2.0],
        "values": {k: {str(s): v for s, v in enumerate(per)} for k, per in values.items()},
        "verdict": verdict,
        "verdict_text": f"use {verdict}",
        "layers": layers
        or [
            {"layer": "blocks.0.norm1", "choice": "ln", "confidence": 0.8, "indifferent": False},
            {"layer": "norm", "choice": "rms", "confidence": 0.01, "indifferent": True},
        ],
        "failed": [],
        "job_wall_s": 100.0,
        "grid_wall_s": 20.0,
    }


def test_the_jobs_search_ln_rms_dyt_on_seeds_0_to_2_against_all_three(bench):
    from service.spec import JobSpec

    for name, case_ in bench.CASES.items():
        spec = JobSpec.model_validate(bench.case_payload(case_))
        assert spec.search.pool == ["ln", "rms", "dyt"] and spec.search.tied, name
        assert spec.search.trials.seeds == [0, 1, 2] and spec.verify.enabled
        assert spec.verify.baselines == ["ln", "rms", "dyt"]
        assert spec.verify_epochs == spec.training.epochs
        assert not spec.search.stop_when_stable.enabled
    assert JobSpec.model_validate(bench.case_payload(bench.CASES["vit-digits"])).metric == (
        "accuracy"
    )
    lm = JobSpec.model_validate(bench.case_payload(bench.CASES["char-lm"], epochs=1))
    assert lm.metric == "perplexity" and lm.training.epochs == 1


def test_arguments(bench):
    args = bench.parse_args(["--alpha0", "0.25", "4", "--json", "x.json", "--case", "char-lm"])
    assert args.alpha0 == [0.25, 4.0] and args.json == "x.json" and args.case == ["char-lm"]
    assert bench.parse_args([]).alpha0 == [0.5, 1.0, 2.0]
    with pytest.raises(SystemExit):
        bench.parse_args(["--alpha0", "1", "1"])


def test_the_target_compares_the_recommendation_with_the_best_uniform_paired(bench):
    dyt = {"dyt@0.5": [0.60, 0.66, 0.64], "dyt@2": [0.80, 0.83, 0.82]}
    # LN is the best uniform baseline and the verdict's choice
    met = case({"plan": [0.88, 0.9, 0.89], "ln": [0.9, 0.91, 0.9], "rms": [0.89] * 3, **dyt}, "ln")
    assert bench.check_target(met) == (
        "vit-digits: the final recommendation is within noise of the best uniform baseline "
        "(LN, RMS, DyT at every alpha0) or better",
        "ln chosen, the best uniform baseline (90.3 ± 0.6)",
        True,
    )
    # the plan chosen, within noise of LN (the paired interval contains 0)
    close = case({"plan": [0.91, 0.89, 0.905], "ln": [0.9, 0.9, 0.9], **dyt}, "plan")
    _, measured, ok = bench.check_target(close)
    assert ok and "vs ln" in measured and "95% CI" in measured
    # all-DyT at the default alpha0 chosen while LN is clearly better: missed
    worse = case({"ln": [0.9, 0.91, 0.9], **dyt}, "dyt")
    _, measured, ok = bench.check_target(worse)
    assert not ok and measured.startswith("dyt@0.5 -")
    # perplexity: lower is better, the best uniform is the lowest
    lm = case(
        {"plan": [5.0, 5.1, 5.05], "ln": [5.0, 5.1, 5.05], "rms": [4.2, 4.25, 4.3]},
        "plan",
        metric="perplexity",
    )
    _, measured, ok = bench.check_target(lm)
    assert not ok and "vs rms" in measured and "log-perplexity points" in measured


def test_render_says_what_the_figures_are(bench):
    values = {
        "plan": [0.9, 0.91, 0.92],
        "ln": [0.9, 0.9, 0.91],
        "rms": [0.89, 0.9, 0.9],
        "dyt@0.5": [0.6, 0.65, 0.7],
        "dyt@1": [0.8, 0.81],
        "sn": [0.85, 0.86, 0.87],
    }
    lm = case({"plan": [5.0, 5.2, 5.1], "ln": [5.1, 5.1, 5.2]}, "ln", metric="perplexity")
    text = bench.render([case(values, "ln"), lm], 600.0)
    assert "| searched plan | 91.0 ± 1.0 |" in text
    assert "| all-DyT, alpha0 0.5 (the job's baseline) | 65.0 ± 5.0 |" in text
    assert "| all-DyT, alpha0 1 | 80.5 ± 0.7 (lacks seed 2) |" in text
    assert "| searched plan | 5.10 ± 0.10 |" in text and "lower is better" in text
    assert "mean ± sample std over seeds 0, 1, 2" in text
    assert "Indifferent layers: 1 of 2 (norm)" in text and "| norm | rms | 0.01 | yes |" in text
    assert "Verdict (ln): use ln" in text and "Total wall time: 10.0 min." in text
    assert text.count("| yes |") == 2 + 2  # two indifferent layers rows, two targets met


def test_render_reprints_a_saved_run(bench, tmp_path, capsys):
    import json

    saved = {"cases": [case({"ln": [0.9, 0.91, 0.9]}, "ln")], "total_s": 60.0}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(saved))
    assert bench.main(["--render", str(path)]) == 0
    assert capsys.readouterr().out.strip() == bench.render(saved["cases"], 60.0)
