"""bench/abuse.py: its verdict and table logic (pure), and one quick run of the probes that need
no worker against the real embedded stack (e2e)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_abuse():
    spec = importlib.util.spec_from_file_location("bench_abuse", ROOT / "bench" / "abuse.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_abuse"] = module
    spec.loader.exec_module(module)
    return module


abuse = load_abuse()


def response(status: int, body=None, **headers) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def result(name: str, passed: bool) -> abuse.ProbeResult:
    return abuse.ProbeResult(name, "422", "422" if passed else "201", passed, 0.5)


def test_exit_status_is_zero_only_when_every_probe_held():
    assert abuse.exit_status([result("a", True), result("b", True)]) == 0
    assert abuse.exit_status([result("a", True), result("b", False)]) == 1
    assert abuse.exit_status([]) == 1  # nothing run is no pass


def test_summary_and_json_name_the_failed_probes():
    results = [result("grid", True), result("cpus", False)]
    assert abuse.summary(results) == "1 of 2 probes held; failed: cpus"
    document = json.loads(abuse.as_json(results))
    assert document["passed"] is False
    assert [p["name"] for p in document["probes"]] == ["grid", "cpus"]
    assert document["probes"][1] == {
        "name": "cpus",
        "expected": "422",
        "observed": "201",
        "passed": False,
        "elapsed_s": 0.5,
    }


def test_refused_checks_status_and_code_and_describes_the_answer():
    limit = response(422, {"code": "limit_exceeded", "field": "training.epochs", "message": "x"})
    assert abuse.refused(limit) == abuse.Outcome(True, "422 limit_exceeded (training.epochs)")
    assert abuse.refused(limit, codes=("limit_exceeded",)).passed
    assert not abuse.refused(limit, codes=("validation_error",)).passed
    created = response(201, {"id": "x"})
    assert abuse.refused(created) == abuse.Outcome(False, "201")
    assert abuse.describe(httpx.Response(500, text="Internal Server Error")) == "500"


def test_all_refused_counts_each_answer_and_fails_on_any_acceptance():
    answers = [response(422, {"code": "limit_exceeded"})] * 3 + [response(201, {"id": "x"})]
    outcome = abuse.all_refused(answers)
    assert outcome == abuse.Outcome(False, "3 x 422 limit_exceeded, 1 x 201")
    assert abuse.all_refused(answers[:3]).passed


def test_the_table_has_a_row_per_probe_with_its_verdict():
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(abuse.table([result("grid", True), result("cpus", False)]))
    text = console.export_text()
    assert "grid" in text and "cpus" in text and "pass" in text and "FAIL" in text


def test_select_keeps_the_order_and_refuses_unknown_names():
    assert [p.name for p in abuse.select("service_still_up,grid_640k")] == [
        "grid_640k",
        "service_still_up",
    ]
    assert len(abuse.select(None)) == len(abuse.PROBES)
    with pytest.raises(SystemExit, match="unknown probes: nope"):
        abuse.select("nope")


def test_the_probes_cover_issue_11s_list():
    names = {p.name for p in abuse.PROBES}
    assert {
        "grid_640k", "cpus_per_trial_256", "gpus_per_trial_16", "epochs_10000_x50", "jobs_quota",
        "verify_epochs_1e30", "num_samples_1e9", "classes_channels_1e9", "mlp_40000x40000",
        "baselines_10000", "unknown_kwargs", "nesting_300", "nesting_989", "last_event_id_2^63",
        "revoked_token_stream", "spoofed_host", "cancel_retry_running", "failing_trials",
    } <= names  # fmt: skip


def test_the_nested_body_is_as_deep_as_asked():
    from api.errors import json_nesting_over

    body = abuse.nested_body(300)
    assert json_nesting_over(body, 300 + 2) is False and json_nesting_over(body, 300) is True


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_validation_probes_hold_against_the_embedded_stack(capsys):
    probes = "grid_640k,verify_epochs_1e30,unknown_kwargs,nesting_989,spoofed_host"
    status = abuse.main(["--only", probes + ",service_still_up", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in document["probes"]] == [*probes.split(","), "service_still_up"]
    assert status == 0, document
