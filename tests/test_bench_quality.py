"""bench/search_quality.py judges its targets as the search-quality issue states them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "search_quality.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("search_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def job(case, batch, configs, verdict, *, plans=1.0, final=1.0, bn_share=0.5, verified=True):
    return {
        "case": case,
        "batch_size": batch,
        "configs": {k: {"mean": v, "std": 0.01, "per_seed": []} for k, v in configs.items()},
        "verdict": verdict,
        "agreement": plans,
        "final_agreement": final if verified else None,
        "bn_share": bn_share,
        "verified": verified,
    }


def results(bench, jobs, total_s=600.0):
    return {target: met for target, _, met in bench.check_targets(jobs, total_s)}


def test_a_weak_baseline_must_not_be_the_recommendation_and_the_plan_must_keep_up():
    bench = load_bench()
    configs = {"plan": 0.97, "bn": 0.75, "gn": 0.978, "ln": 0.975}
    good = results(bench, [job("mlp-digits", 2, configs, "gn")])
    assert all(good.values()), good
    bad = results(bench, [job("mlp-digits", 2, {**configs, "plan": 0.95}, "bn")])
    failed = sorted(t for t, met in bad.items() if not met)
    assert len(failed) == 3, failed  # the weak baseline, the plan 2.8 points short, < 20 points
    assert any("none of the baselines 5+ points below" in t for t in failed)


def test_agreement_bn_trend_and_wall_time_are_judged():
    bench = load_bench()
    same = {"plan": 0.98, "bn": 0.98, "gn": 0.98}
    jobs = [
        job("resnet20-digits", 2, same, "bn", bn_share=0.4, verified=False),
        job("resnet20-digits", 32, same, "bn", plans=0.5, final=0.8, bn_share=0.3),
    ]
    out = results(bench, jobs, total_s=1300.0)
    assert out == {
        "resnet20-digits b32: two independent searches agree on the final choice of >= 90% of "
        "the layers": False,
        "resnet20-digits: the mean BN ratio rises with the batch size": False,
        "the whole benchmark runs in < 20 min": False,
    }
    # the rendered report says "**no**" for each missed target
    assert (
        bench.render(
            [
                {
                    **j,
                    "layers": 21,
                    "indifferent": 0,
                    "wall_s": 1.0,
                    "agreement_wall_s": 0.0,
                    "effective_lr": 0.1,
                    "epochs": 1,
                    "verdict_text": "use all-BN",
                    "half_verdicts": ["bn", "bn"],
                    "failed": [],
                }
                for j in jobs
            ],
            1300.0,
        ).count("**no**")
        == 3
    )
