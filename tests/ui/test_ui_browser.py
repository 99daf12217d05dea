"""The web UI in a real browser (Debian's Chromium through Playwright) against the real embedded
stack (API, Celery worker, local Ray on SQLite): log in, create a job from a template, watch it
finish live, read its charts and tables, download its outputs, validate a spec inline, filter the
jobs list, cancel and retry.

Screenshots go to test-artifacts/ui/ (git-ignored); NORMSEARCH_UPDATE_DOCS_SCREENSHOT=1 also
writes docs/ui-job.png for the README. Chromium missing is a failure: run `make browser`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml

import sn_core
from cli.embedded import EmbeddedStack, embedded_config
from service.settings import Settings
from tests.support.api import bearer, create_user_token, tiny_spec
from tests.support.ui import (
    VIEWPORT,
    chromium_browser,
    free_port,
    login,
    screenshot,
    sn_layer_names,
    update_docs_screenshot,
)

API = "/api/v1"
JOB_TIMEOUT_S = 180
UI_TIMEOUT_MS = 15_000
POOL = {"in", "ln", "bn"}

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The whole service on this machine: API (uvicorn) and a Celery worker on SQLite, started
    and supervised as ``normsearch up`` does (supervision in a thread here)."""
    runs = tmp_path_factory.mktemp("ui") / "runs"
    config = embedded_config(
        Settings(runs_dir=runs), runs_dir=runs, host="127.0.0.1", port=free_port()
    )
    running = EmbeddedStack(config, log_dir=runs / "logs")
    stop = threading.Event()
    supervisor = threading.Thread(target=running.supervise, args=(stop,), daemon=True)
    try:
        running.start(ready_timeout_s=120)
        supervisor.start()
        yield running
    finally:
        stop.set()
        if supervisor.is_alive():
            supervisor.join()
        running.stop()


@pytest.fixture(scope="module")
def base_url(stack) -> str:
    return stack.config.base_url


@pytest.fixture(scope="module")
def token(stack) -> str:
    return create_user_token(stack.config.database_url, name="ui-tester")


@pytest.fixture(scope="module")
def api(base_url, token):
    """An HTTP client with the test user's token, for set-up and cross-checks."""
    with httpx.Client(base_url=f"{base_url}{API}", headers=bearer(token), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as running:
        yield running


def new_page(browser):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # a confirm() before cancel, if any
    return context, page


@pytest.fixture
def page(browser):
    """A fresh browser context (own sessionStorage: logged out)."""
    context, page = new_page(browser)
    yield page
    context.close()


@pytest.fixture
def logged_in(page, base_url, token):
    login(page, base_url, token)
    return page


def expect(target):
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=UI_TIMEOUT_MS)
    return playwright_expect(target)


def job_url(base_url: str, job_id: str) -> str:
    return f"{base_url}/#/jobs/{job_id}"


def shrink(spec: dict) -> dict:
    """The digits example cut down to a search of a few seconds' training (see ``tiny_spec``)."""
    tiny = tiny_spec(epochs=2)
    spec = json.loads(json.dumps(spec))
    spec["training"].update(tiny["training"])
    spec["search"]["sparsity"].update(tiny["search"]["sparsity"])
    spec["search"]["stop_when_stable"].update(tiny["search"]["stop_when_stable"])
    spec["search"]["trials"].update(tiny["search"]["trials"])
    spec["verify"].update(tiny["verify"])
    # Two batch sizes, so that the page has per-layer choices to set side by side.
    spec["search"]["trials"]["batch_sizes"] = [32, 128]
    return spec


def choose_template(page, base_url: str, name: str = "digits") -> dict:
    """Open the new-job page, pick a template; the spec it put into the editor."""
    page.goto(f"{base_url}/#/new")
    page.get_by_test_id("template-select").select_option(name)
    editor = page.get_by_test_id("spec-editor")
    expect(editor).to_have_value(re.compile(r"\S"))
    return json.loads(editor.input_value())


def watch_until_finished(page, api, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> list[str]:
    """Poll the job page's status text (the page is never reloaded) until the job has finished;
    the distinct statuses seen, in order."""
    status = page.get_by_test_id("job-status")
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = status.inner_text().strip()
        if not seen or seen[-1] != text:
            seen.append(text)
        if text in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(0.5)
    if seen[-1] != "succeeded":
        job = api.get(f"/jobs/{job_id}").json()
        pytest.fail(
            f"job {job_id} did not succeed within {timeout_s:.0f} s: the page showed {seen}, "
            f"the API says {job.get('status')} (error: {job.get('error')})"
        )
    return seen


def unavailable(locator) -> bool:
    """Absent, hidden or disabled."""
    return locator.count() == 0 or not locator.is_visible() or locator.is_disabled()


@pytest.fixture(scope="module")
def digits_job(browser, base_url, token, api):
    """A job created through the UI from the digits template (shrunk in the spec editor), watched
    live until it succeeded; yields its id and the job page left open."""
    context, page = new_page(browser)
    try:
        login(page, base_url, token)
        spec = shrink(choose_template(page, base_url, "digits"))
        page.get_by_test_id("spec-editor").fill(json.dumps(spec, indent=2))
        submit = page.get_by_test_id("submit-job")
        expect(submit).to_be_enabled()
        submit.click()
        page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{8,}$"))
        job_id = page.url.rsplit("/", 1)[1]
        expect(page.get_by_test_id("job-id")).to_contain_text(job_id)
        # A marker that a reload would wipe: the status must change on the page as it stands.
        page.evaluate("window.__uiTestNoReload = true")
        started = time.monotonic()
        seen = watch_until_finished(page, api, job_id)
        print(f"job {job_id}: {seen} in {time.monotonic() - started:.0f} s")
        assert page.evaluate("window.__uiTestNoReload === true"), "the job page was reloaded"
        yield {"id": job_id, "page": page, "seen": seen, "spec": spec}
    finally:
        context.close()


# -- 1. login --------------------------------------------------------------------------------


def test_pages_need_a_token_and_login_accepts_only_the_right_one(page, base_url, token):
    for route in ("#/jobs", "#/new", f"#/jobs/{uuid.uuid4().hex}", ""):
        page.goto(f"{base_url}/{route}")
        expect(page.get_by_test_id("token-input")).to_be_visible()
        expect(page).to_have_url(re.compile(r"#/login"))
    screenshot(page, "login")

    page.get_by_test_id("token-input").fill("ns_wrong-" + uuid.uuid4().hex)
    page.get_by_test_id("login-button").click()
    expect(page.get_by_test_id("login-error")).to_be_visible()
    expect(page.get_by_test_id("login-error")).not_to_be_empty()
    expect(page).to_have_url(re.compile(r"#/login"))

    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("login-button").click()
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    for hook in ("nav-jobs", "nav-new", "logout"):
        expect(page.get_by_test_id(hook)).to_be_visible()
    assert token in json.dumps(page.evaluate("Object.values(sessionStorage)"))
    page.get_by_test_id("nav-new").click()
    expect(page.get_by_test_id("spec-editor")).to_be_visible()

    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("token-input")).to_be_visible()
    assert token not in json.dumps(page.evaluate("Object.values(sessionStorage)"))
    page.goto(f"{base_url}/#/jobs")
    expect(page.get_by_test_id("token-input")).to_be_visible()


# -- 2. a job from a template, watched live, its results and downloads --------------------------


def test_job_from_template_runs_live_and_shows_its_results(digits_job, api, tmp_path, base_url):
    page, job_id = digits_job["page"], digits_job["id"]
    # Seen live on the page as it stood: at least queued or running before succeeded.
    assert digits_job["seen"][-1] == "succeeded" and "running" in digits_job["seen"], digits_job
    assert api.get(f"/jobs/{job_id}").json()["spec"]["training"]["epochs"] == 2
    layers = sn_layer_names("resnet20")

    # Ratio charts: one bar group per SN layer, one rect per normalizer of the pool.
    for chart in ("ratio-chart-mean", "ratio-chart-var"):
        bars = page.get_by_test_id(chart).get_by_test_id("layer-bar")
        expect(bars).to_have_count(len(layers))
        names = [bars.nth(i).get_attribute("data-layer") for i in range(bars.count())]
        assert sorted(names) == sorted(layers), chart
        for i in range(bars.count()):
            norms = (
                bars.nth(i)
                .locator("rect[data-norm]")
                .evaluate_all("rects => rects.map(r => r.getAttribute('data-norm'))")
            )
            assert norms and set(norms) <= POOL and len(norms) == len(set(norms)), (names[i], norms)

    # Timeline, trials, recommendation, verification.
    events = page.get_by_test_id("timeline").get_by_test_id("timeline-event")
    statuses = events.evaluate_all("items => items.map(e => e.getAttribute('data-status'))")
    assert [s for s in statuses if s in {"queued", "running", "succeeded"}] == [
        "queued",
        "running",
        "succeeded",
    ], statuses
    trials = api.get(f"/jobs/{job_id}/trials").json()
    trial_count = len(trials["trials"] if isinstance(trials, dict) else trials)
    expect(page.get_by_test_id("trials-table").get_by_test_id("trial-row")).to_have_count(
        trial_count
    )
    rows = page.get_by_test_id("recommendation-table").get_by_test_id("recommendation-row")
    expect(rows).to_have_count(len(layers))
    # The torch layer of each row is the one the worker wrote (sn_core's rule), not a UI copy.
    written = api.get(f"/jobs/{job_id}/report").json()["recommendation"]["torch_layers"]
    shown = {
        rows.nth(i).get_attribute("data-layer"): rows.nth(i)
        .get_by_test_id("torch-layer")
        .inner_text()
        .strip()
        for i in range(rows.count())
    }
    assert shown == written and sorted(shown) == sorted(layers), shown
    expect(page.get_by_test_id("verification-table")).to_be_visible()
    expect(page.get_by_test_id("verification-table")).to_contain_text("bn")
    # The verdict, as the worker wrote it, at the top of the page.
    verdict_text = api.get(f"/jobs/{job_id}/report").json()["verification"]["verdict"]["text"]
    expect(page.get_by_test_id("verdict")).to_have_text(f"Verdict: {verdict_text}")

    check_curves_and_heatmap(page, api, job_id, layers)

    # One layer's history over the steps, and the divergence of the seeds.
    layer_select = page.get_by_test_id("layer-select")
    layer_select.select_option(layers[-1])
    expect(page.get_by_test_id("trial-select")).to_be_visible()
    evolution = page.get_by_test_id("layer-evolution-chart")
    expect(evolution).to_be_visible()
    expect(evolution.locator("polyline").first).to_be_attached()  # lines drawn, not "no data"
    expect(page.get_by_test_id("divergence-chart")).to_be_visible()

    # A finished job cannot be cancelled, and only failed or cancelled jobs are retried.
    assert unavailable(page.get_by_test_id("cancel-job"))
    assert unavailable(page.get_by_test_id("retry-job"))

    page.mouse.move(0, 0)
    screenshot(page, "job")
    update_docs_screenshot(page)

    # Downloads, each through the browser (fetch + Blob + <a download>).
    def download(hook: str, suffix: str):
        with page.expect_download() as info:
            page.get_by_test_id(hook).click()
        assert info.value.suggested_filename.endswith(suffix), info.value.suggested_filename
        target = tmp_path / f"{hook}{suffix}"
        info.value.save_as(target)
        return target

    plan_json = download("download-json", ".json")
    plan = json.loads(plan_json.read_text())
    assert layers[0] in plan_json.read_text() and layers[-1] in plan_json.read_text()
    assert sorted(sn_core.NormalizerPlan.load(plan_json).names) == sorted(layers), plan

    plan_yaml = download("download-yaml", ".yaml")
    assert isinstance(yaml.safe_load(plan_yaml.read_text()), dict)
    loaded = sn_core.NormalizerPlan.load(plan_yaml)
    assert loaded.to_json() == sn_core.NormalizerPlan.load(plan_json).to_json()

    checkpoint = download("download-checkpoint", ".zip")
    with zipfile.ZipFile(checkpoint) as archive:
        assert "model.safetensors" in archive.namelist()
    model, restored, _spec = sn_core.load_finalized(checkpoint)
    assert sorted(restored.names) == sorted(layers) and model is not None
    # The checkpoint is the plan's configuration; the search's own model and plan come apart.
    assert [(x.mean, x.var) for x in restored] == [
        (x.mean, x.var) for x in sn_core.NormalizerPlan.load(plan_json)
    ]
    search_checkpoint = download("download-search-checkpoint", ".zip")
    _, own, _ = sn_core.load_finalized(search_checkpoint)
    assert own.metadata["checkpoint"]["artifact"] == "search_checkpoint"
    search_plan = sn_core.NormalizerPlan.load(download("download-search-plan", ".json"))
    assert sorted(search_plan.names) == sorted(layers)

    metrics = download("download-csv", ".csv")
    header = next(csv.reader(io.StringIO(metrics.read_text())))
    assert ",".join(header).startswith("ray_trial_id,variant,step"), header


def fills_its_box(locator, cap: float | None = None) -> bool:
    """The SVG is as wide as the box that holds it (not half of it), or as its ``cap``."""
    svg, box = locator.evaluate("svg => [svg.getBoundingClientRect().width, "
                                "svg.parentElement.getBoundingClientRect().width]")  # fmt: skip
    return svg >= 0.95 * min(box, cap or box) > 0


def check_curves_and_heatmap(page, api, job_id: str, layers: list[str]) -> None:
    """Training curves per search trial and per verification configuration, final- and
    best-epoch labelled; the layers x batch sizes heatmap of the report; charts that fill their
    card."""
    trials = api.get(f"/jobs/{job_id}/trials").json()
    search = [t for t in trials if t["variant"] == "sn"]
    configs = {t["variant"] for t in trials if t["variant"] != "sn"}
    seeds = {t["variant"]: 0 for t in trials}
    for t in trials:
        seeds[t["variant"]] += 1
    assert len(search) == 2 and configs == {"plan", "bn"}, trials

    curves = page.get_by_test_id("search-curves")
    expect(curves).to_have_attribute("data-lines", str(len(search)))
    expect(curves).to_have_attribute("data-x-ticks", "1,2")  # every epoch, each once
    for t in search:
        line = curves.locator(f'[data-series="trial-{t["id"]}"] polyline')
        expect(line).to_have_attribute("data-points", "2")
    legend = page.get_by_test_id("search-curves-legend")
    expect(legend.locator("li")).to_have_count(len(search))
    for text in legend.locator("li").all_inner_texts():
        assert "final-epoch" in text and "best-epoch" in text, text
    # Verification: per configuration its mean (thick) and each seed (thin).
    config_curves = page.get_by_test_id("config-curves")
    expected_lines = sum(seeds[c] + 1 for c in configs)
    expect(config_curves).to_have_attribute("data-lines", str(expected_lines))
    for config in configs:
        expect(config_curves.locator(f'[data-series="config-{config}"] polyline')).to_have_count(1)
    config_legend = page.get_by_test_id("config-curves-legend").locator("li")
    expect(config_legend).to_have_count(len(configs))
    assert all("mean over 1 seed: final-epoch" in t for t in config_legend.all_inner_texts())
    # Final-epoch and best-epoch accuracies side by side in the trials table, labelled.
    table = page.get_by_test_id("trials-table")
    expect(table).to_contain_text("Final-epoch val. acc.")
    expect(table).to_contain_text("Best-epoch val. acc.")
    finals = table.get_by_test_id("trial-final").all_inner_texts()
    assert len(finals) == len(trials) and all("(ep " in f for f in finals), finals
    # Another metric: the same lines, a loss axis.
    page.get_by_test_id("metric-select").select_option("val_loss")
    expect(curves).to_have_attribute("aria-label", re.compile("validation loss"))
    expect(curves).to_have_attribute("data-lines", str(len(search)))
    page.get_by_test_id("metric-select").select_option("val_accuracy")

    # The heatmap: one cell per layer and batch size, the report's own ratios.
    by_batch = api.get(f"/jobs/{job_id}/report").json()["recommendation"]["by_batch_size"]
    assert sorted(by_batch, key=int) == ["32", "128"]
    cells = page.get_by_test_id("batch-heatmap").get_by_test_id("heatmap-cell")
    expect(cells).to_have_count(len(layers) * 2)
    for batch in ("32", "128"):
        cell = page.get_by_test_id("batch-heatmap").locator(
            f'[data-testid="heatmap-cell"][data-layer="{layers[0]}"][data-batch="{batch}"]'
        )
        bn = by_batch[batch]["layers"][layers[0]]["mean"]["bn"]
        assert float(cell.get_attribute("data-value")) == pytest.approx(bn, abs=1e-9)
    expect(page.get_by_test_id("batch-trend")).to_contain_text("batch 32")
    expect(page.get_by_test_id("batch-trend")).to_contain_text("final-epoch")
    page.get_by_test_id("heatmap-part").select_option("var")
    expect(page.get_by_test_id("batch-heatmap")).to_have_attribute("data-part", "var")
    page.get_by_test_id("heatmap-part").select_option("mean")

    for hook in ("ratio-chart-mean", "search-curves", "config-curves"):
        assert fills_its_box(page.get_by_test_id(hook)), hook
    assert fills_its_box(page.get_by_test_id("batch-heatmap"), cap=900)  # wider says no more


# -- 3. inline validation --------------------------------------------------------------------


def test_spec_editor_validates_inline(logged_in, base_url, api):
    page = logged_in
    before = api.get("/jobs").json()["total"]
    spec = choose_template(page, base_url, "digits")
    editor, submit = page.get_by_test_id("spec-editor"), page.get_by_test_id("submit-job")

    spec["training"]["epochs"] = 0
    editor.fill(json.dumps(spec, indent=2))
    error = page.get_by_test_id("spec-errors").locator(
        '[data-testid="field-error"][data-field="training.epochs"]'
    )
    expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    refuse_submit(page, submit)

    editor.fill('{"model": {"arch": "resnet20"},')
    expect(page.get_by_test_id("spec-errors")).to_be_visible()
    expect(page.get_by_test_id("spec-errors")).not_to_be_empty()
    refuse_submit(page, submit)

    spec["training"]["epochs"] = 2  # fixed: the errors go away and submit is offered again
    editor.fill(json.dumps(spec, indent=2))
    expect(page.get_by_test_id("field-error")).to_have_count(0)
    expect(submit).to_be_enabled()
    assert api.get("/jobs").json()["total"] == before


def refuse_submit(page, submit) -> None:
    """Submit is disabled, or clicking it keeps the page on the form."""
    if submit.is_enabled():
        submit.click()
        page.wait_for_timeout(1000)
    expect(page).to_have_url(re.compile(r"#/new"))
    expect(page.get_by_test_id("spec-errors")).not_to_be_empty()


# -- 4. jobs list, filter, cancel and retry ----------------------------------------------------


def test_jobs_list_filter_cancel_and_retry(digits_job, logged_in, base_url, api):
    page, done_id = logged_in, digits_job["id"]
    # A second job long enough to be still queued or running when it is cancelled.
    submitted = api.post("/jobs", json=tiny_spec(epochs=50))
    assert submitted.status_code == 201, submitted.text
    other_id = submitted.json()["id"]

    page.reload()  # show the second job now rather than at the next poll
    table = page.get_by_test_id("jobs-table")
    done_row = table.locator(f'[data-testid="job-row"][data-job-id="{done_id}"]')
    other_row = table.locator(f'[data-testid="job-row"][data-job-id="{other_id}"]')
    expect(other_row).to_be_visible()
    expect(done_row.get_by_test_id("job-status")).to_have_text("succeeded")
    expect(done_row.get_by_test_id("job-progress")).to_be_visible()
    # The result column: the worker's line for the succeeded job, "-" for the running one.
    result = api.get(f"/jobs/{done_id}").json()["result"]
    assert "final epoch" in result["text"] and result["configuration"], result
    expect(done_row.get_by_test_id("job-result")).to_have_text(result["text"])
    expect(other_row.get_by_test_id("job-result")).to_have_text("-")
    expect(page.get_by_test_id("jobs-total")).to_contain_text("2")
    expect(page.get_by_test_id("prev-page")).to_be_disabled()
    expect(page.get_by_test_id("next-page")).to_be_disabled()
    screenshot(page, "jobs")

    page.get_by_test_id("status-filter").select_option("succeeded")
    expect(other_row).to_have_count(0)
    expect(done_row).to_be_visible()
    statuses = table.get_by_test_id("job-row").get_by_test_id("job-status").all_inner_texts()
    assert {s.strip() for s in statuses} == {"succeeded"}, statuses
    page.get_by_test_id("status-filter").select_option("")
    expect(other_row).to_be_visible()

    # Cancel from the job page; the retry button appears; retry, then cancel again.
    other_row.click()
    page.wait_for_url(re.compile(rf"#/jobs/{other_id}$"))
    status = page.get_by_test_id("job-status")
    expect(status).to_have_text(re.compile(r"^\s*(queued|running)\s*$"))
    page.get_by_test_id("cancel-job").click()
    expect(status).to_have_text("cancelled", timeout=60_000)
    expect(page.get_by_test_id("retry-job")).to_be_visible()
    assert unavailable(page.get_by_test_id("cancel-job"))
    expect(
        page.get_by_test_id("timeline").locator(
            '[data-testid="timeline-event"][data-status="cancelled"]'
        )
    ).not_to_have_count(0)

    page.get_by_test_id("retry-job").click()
    expect(status).to_have_text(re.compile(r"^\s*(queued|running)\s*$"), timeout=30_000)
    page.get_by_test_id("cancel-job").click()
    expect(status).to_have_text("cancelled", timeout=60_000)
    assert api.get(f"/jobs/{other_id}").json()["status"] == "cancelled"

    page.get_by_test_id("nav-jobs").click()
    page.get_by_test_id("status-filter").select_option("cancelled")
    expect(table.get_by_test_id("job-row")).to_have_count(1)
    expect(other_row.get_by_test_id("job-status")).to_have_text("cancelled")


# -- 5. a long history: 200 layers x 500 epochs ------------------------------------------------


def seed_long_history(database_url: str, job_id: str, *, layers: int, steps: int) -> None:
    """A search trial with ``steps`` x ``layers`` snapshots, written as the worker would."""
    from service import repositories
    from service.db import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            trial = repositories.upsert_trial(
                session,
                job_id=job_id,
                ray_trial_id="long-history",
                variant="sn",
                config={"seed": 0, "batch_size": 32},
                status="TERMINATED",
                epochs_budget=steps,
            )
            for first in range(1, steps + 1, 50):
                rows = []
                for step in range(first, min(first + 50, steps + 1)):
                    for index in range(layers):
                        bn = min(1.0, step / steps + index / (2 * layers))
                        rest = (1.0 - bn) / 2
                        rows.append({
                            "trial_id": trial.id, "layer_index": index,
                            "layer": f"block{index}.norm", "epoch": step, "step": step,
                            "mean_in": rest, "mean_ln": rest,
                            "mean_bn": bn, "mean_gn": None, "var_in": rest, "var_ln": bn,
                            "var_bn": rest, "var_gn": None, "mean_fixed": bn >= 1.0,
                            "var_fixed": False,
                        })  # fmt: skip
                repositories.insert_snapshots(session, rows)
    finally:
        engine.dispose()


def test_a_long_history_draws_one_bar_per_layer(logged_in, base_url, api, stack):
    """200 layers x 500 epochs (100,000 snapshots): the page reads the newest step for the bars
    and a downsampled history for the chosen layer, and draws all 200 layers."""
    layers, steps = 200, 500
    submitted = api.post("/jobs", json=tiny_spec(epochs=1))
    job_id = submitted.json()["id"]
    assert api.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    seed_long_history(stack.config.database_url, job_id, layers=layers, steps=steps)

    page = logged_in
    page.goto(job_url(base_url, job_id))
    for chart in ("ratio-chart-mean", "ratio-chart-var"):
        expect(page.get_by_test_id(chart).get_by_test_id("layer-bar")).to_have_count(layers)
    last = page.get_by_test_id("ratio-chart-mean").locator('[data-layer="block199.norm"]')
    expect(last.locator('rect[data-norm="bn"]')).to_have_count(1)
    page.get_by_test_id("layer-select").select_option("block150.norm")
    evolution = page.get_by_test_id("layer-evolution-chart")
    expect(evolution).to_have_attribute("data-layer", "block150.norm")
    assert int(evolution.get_attribute("data-points")) > 0
    screenshot(page, "long-history")


# -- 6. the first hour of a new user: layouts from 800 px, names, numbers, downloads -----------

# Whether an element or one of its ancestors (up to the page) scrolls on its own: a main table in
# such a box is a scroll box inside the page.
IN_SCROLL_BOX = """(element) => {
  const scrolls = (value) => value === "auto" || value === "scroll";
  for (let node = element.parentElement; node && node !== document.body;
       node = node.parentElement) {
    const style = getComputedStyle(node);
    if (scrolls(style.overflowX) || scrolls(style.overflowY)) return node.className || node.tagName;
  }
  return "";
}"""


# The innermost elements that reach past the window's right edge (what makes a page scroll).
WIDER_THAN_WINDOW = """() => [...document.querySelectorAll("body *")]
  .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
  .filter((e) => ![...e.children].some((c) => c.getBoundingClientRect().right > window.innerWidth))
  .slice(0, 5)
  .map((e) => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)
"""


def assert_fits(page, where: str) -> None:
    """No sideways scroll of the page; every main table outside any inner scroll box."""
    sizes = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    wider = page.evaluate(WIDER_THAN_WINDOW) if sizes[0] > sizes[1] else []
    assert sizes[0] <= sizes[1], f"{where}: the page scrolls sideways ({sizes}; {wider})"
    for table in page.locator("table.table").all():
        if table.is_visible():
            box = table.evaluate(IN_SCROLL_BOX)
            assert not box, f"{where}: a table is in the scroll box {box!r}"


@pytest.mark.parametrize("width", [800, 1400])
def test_pages_fit_from_800_px_with_per_job_trial_numbers_and_every_download(
    width, digits_job, browser, base_url, token, api, tmp_path
):
    job_id = digits_job["id"]
    context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        login(page, base_url, token)
        page.goto(f"{base_url}/#/jobs")
        row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
        expect(row).to_be_visible()
        assert re.fullmatch(r"\d+ (s|min \d\d s)", row.get_by_test_id("job-duration").inner_text())
        assert_fits(page, f"jobs list at {width} px")
        page.screenshot(path=str(tmp_path / f"jobs-{width}.png"), full_page=True)

        page.goto(job_url(base_url, job_id))
        expect(page.get_by_test_id("verdict")).to_be_visible()
        trials = api.get(f"/jobs/{job_id}/trials").json()
        numbers = page.get_by_test_id("trial-row").locator("td:first-child").all_inner_texts()
        assert numbers == [f"#{n}" for n in range(1, len(trials) + 1)]
        kinds = {a["kind"] for a in api.get(f"/jobs/{job_id}").json()["artifacts"]}
        assert {"report_json", "ratios_png"} <= kinds
        shown = set(page.get_by_test_id("download-artifact").all_inner_texts())
        assert {"report.json", "ratios.png"} <= shown
        with page.expect_download() as downloaded:
            page.locator('[data-artifact="report_json"]').click()
        report = json.loads(Path(downloaded.value.path()).read_text())
        assert report == api.get(f"/jobs/{job_id}/report").json()
        bar = page.get_by_test_id("layer-bar").first
        bar.scroll_into_view_if_needed()
        bar.hover()
        tip = page.get_by_test_id("chart-tooltip")
        expect(tip).to_be_visible()
        expect(tip).to_contain_text(bar.get_attribute("data-layer"))
        assert_fits(page, f"job page at {width} px")
        page.screenshot(path=str(tmp_path / f"job-{width}.png"), full_page=True)
        screenshot(page, f"job-{width}px")

        page.goto(f"{base_url}/#/new")
        expect(page.get_by_test_id("spec-editor")).to_have_value(re.compile(r"\S"))
        assert_fits(page, f"new-job page at {width} px")
        page.screenshot(path=str(tmp_path / f"new-{width}.png"), full_page=True)
    finally:
        context.close()
    assert all((tmp_path / f"{name}-{width}.png").stat().st_size > 0 for name in ("jobs", "job"))


def test_the_editor_takes_yaml_and_a_name_and_templates_offer_fields_that_apply(
    logged_in, base_url, api
):
    page = logged_in
    spec = choose_template(page, base_url, "digits")
    assert {"num_samples", "num_classes"}.isdisjoint(spec["dataset"])
    editor, submit = page.get_by_test_id("spec-editor"), page.get_by_test_id("submit-job")
    bad = dict(spec, training={**spec["training"], "epochs": 0})
    editor.fill(yaml.safe_dump(bad))
    error = page.locator('[data-testid="field-error"][data-field="training.epochs"]')
    expect(error).to_be_visible()
    editor.fill(yaml.safe_dump(dict(spec, training={**spec["training"], "epochs": 50})))
    expect(page.get_by_test_id("spec-errors")).to_have_attribute("data-state", "valid")
    page.get_by_test_id("job-name-input").fill("yaml from the editor")
    submit.click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{8,}$"))
    job_id = page.url.rsplit("/", 1)[1]
    try:
        job = api.get(f"/jobs/{job_id}").json()
        assert job["name"] == "yaml from the editor" and job["spec"]["training"]["epochs"] == 50
        expect(page.locator("#facts")).to_contain_text("yaml from the editor")
        page.goto(f"{base_url}/#/jobs")
        row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
        expect(row.get_by_test_id("job-name")).to_have_text("yaml from the editor")
    finally:
        api.post(f"/jobs/{job_id}/cancel")


# -- 8. a language model: judged by perplexity, token normalizers ----------------------------

# The smallest char_lm job that trains every pooled member: a statistics pair (LN, RMS) and a
# point-wise member (DyT), tied, over the first 20,000 characters of the built-in corpus; two
# batch sizes, so that the heatmap of a pool without BN is drawn.
CHAR_LM_SPEC = {
    "model": {"arch": "char_lm", "kwargs": {"dim": 32, "depth": 1, "heads": 2}},
    "dataset": {"kind": "text", "max_chars": 20_000, "context_length": 32},
    "training": {"epochs": 2, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3},
    "search": {
        "pool": ["ln", "rms", "dyt"],
        "sparsity": {"end": 0.5},
        "stop_when_stable": {"enabled": False},
        "trials": {"seeds": [0], "batch_sizes": [16, 32]},
    },
    "verify": {"enabled": True, "epochs": 1, "baselines": ["ln"]},
}
TOKEN_TORCH_LAYER = re.compile(r"^(LayerNorm|RMSNorm|RMSNormWithBias|DynamicTanh)\(\d+\)$")
PERPLEXITY_CELL = re.compile(r"^\d+\.\d\d \(ep \d+\)$")  # a number, not a percentage


def attribute_values(locator, attribute: str) -> list[str]:
    return locator.evaluate_all(f"nodes => nodes.map(n => n.getAttribute('{attribute}'))")


def test_a_char_lm_job_shows_perplexity_and_its_token_normalizers(logged_in, base_url, api):
    page = logged_in
    submitted = api.post("/jobs", json=CHAR_LM_SPEC)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["metric"] == "perplexity"
    page.goto(job_url(base_url, job_id))
    watch_until_finished(page, api, job_id)
    report = api.get(f"/jobs/{job_id}/report").json()
    layers = [layer["name"] for layer in report["recommendation"]["plan"]["layers"]]
    assert layers, report["recommendation"]

    # Trials: final- and best-epoch validation perplexity, never accuracy.
    table = page.get_by_test_id("trials-table")
    trials = api.get(f"/jobs/{job_id}/trials").json()
    expect(table.get_by_test_id("trial-row")).to_have_count(len(trials))
    expect(table.get_by_test_id("trials-final-head")).to_contain_text("Final-epoch val. ppl")
    expect(table.get_by_test_id("trials-best-head")).to_contain_text("Best-epoch val. ppl")
    expect(table.locator("thead")).not_to_contain_text("acc")
    for hook in ("trial-final", "trial-best"):
        cells = table.get_by_test_id(hook)
        assert set(attribute_values(cells, "data-metric")) == {"perplexity"}, hook
        texts = [t.strip() for t in cells.all_inner_texts()]
        assert len(texts) == len(trials) and all(PERPLEXITY_CELL.match(t) for t in texts), texts

    # Curves: validation perplexity first, one line per search trial, final and best epoch.
    expect(page.get_by_test_id("metric-select")).to_have_value("val_perplexity")
    curves = page.get_by_test_id("search-curves")
    expect(curves).to_have_attribute("aria-label", re.compile("validation perplexity"))
    expect(curves).to_have_attribute("data-lines", "2")
    legend = page.get_by_test_id("search-curves-legend").locator("li")
    expect(legend).to_have_count(2)
    for text in legend.all_inner_texts():
        assert "final-epoch" in text and "%" not in text, text
    expect(page.get_by_test_id("config-curves")).to_have_attribute(
        "aria-label", re.compile("validation perplexity")
    )

    # Ratio charts: per layer, the tied statistics pair (LN, RMS) and the output choices (the
    # normalized output, DyT); the legends name the pool's members, not BN.
    for chart, members in (
        ("ratio-chart-mean", {"ln", "rms"}),
        ("ratio-chart-var", {"ln", "rms"}),
        ("ratio-chart-output", {"norm", "dyt"}),
    ):
        bars = page.get_by_test_id(chart).get_by_test_id("layer-bar")
        expect(bars).to_have_count(len(layers))
        assert sorted(attribute_values(bars, "data-layer")) == sorted(layers), chart
        for i in range(bars.count()):
            norms = attribute_values(bars.nth(i).locator("rect[data-norm]"), "data-norm")
            assert set(norms) == members and len(norms) == len(members), (chart, i, norms)
    norm_legend = page.locator("#norm-legend")
    expect(norm_legend).to_contain_text("LN")
    expect(norm_legend).to_contain_text("RMS")
    expect(norm_legend).not_to_contain_text("BN")
    expect(page.locator("#output-legend")).to_be_visible()
    expect(page.locator("#output-legend")).to_contain_text("DyT")

    # Recommendation: the torch layer each choice becomes, as the worker wrote it; every layer's
    # output choice and ratios.
    rows = page.get_by_test_id("recommendation-table").get_by_test_id("recommendation-row")
    expect(rows).to_have_count(len(layers))
    written = report["recommendation"]["torch_layers"]
    shown = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        shown[row.get_attribute("data-layer")] = row.get_by_test_id("torch-layer").inner_text()
        assert row.get_by_test_id("output").get_attribute("data-output") in {"norm", "dyt"}
        ratios = row.get_by_test_id("output-ratios").inner_text()
        assert "norm" in ratios and "DyT" in ratios, ratios
    assert shown == written, shown
    assert all(TOKEN_TORCH_LAYER.match(layer) for layer in shown.values()), shown

    # Verification and verdict in perplexity.
    verification = report["verification"]
    assert verification["metric_name"] == "perplexity"
    expect(page.get_by_test_id("verification-metric")).to_have_text("Final-epoch val. ppl (mean)")
    expect(page.locator("#verification-info")).to_contain_text("Perplexity:")
    keys = attribute_values(page.get_by_test_id("verification-row"), "data-key")
    assert set(keys) == set(verification["results"]) and "ln" in keys, keys
    expect(page.get_by_test_id("verification-table").locator("tbody")).not_to_contain_text("%")
    verdict = verification["verdict"]
    assert verdict["metric"] == "perplexity" and "perplexity" in verdict["text"], verdict
    expect(page.get_by_test_id("verdict")).to_have_text(f"Verdict: {verdict['text']}")

    # No BN in the pool: the heatmap shows LN's share (its first normalizer), and says so.
    by_batch = report["recommendation"]["by_batch_size"]
    expect(page.get_by_test_id("batch-trend")).to_contain_text(
        "no BN in the pool: coloured by LN, its first normalizer"
    )
    cells = page.get_by_test_id("batch-heatmap").get_by_test_id("heatmap-cell")
    expect(cells).to_have_count(len(layers) * 2)
    for batch in ("16", "32"):
        cell = page.get_by_test_id("batch-heatmap").locator(
            f'[data-testid="heatmap-cell"][data-layer="{layers[0]}"][data-batch="{batch}"]'
        )
        ln = by_batch[batch]["layers"][layers[0]]["mean"]["ln"]
        assert float(cell.get_attribute("data-value")) == pytest.approx(ln, abs=1e-9)
    screenshot(page, "job-char-lm")

    # The jobs list: the worker's result line, a perplexity.
    result = api.get(f"/jobs/{job_id}").json()["result"]
    assert result["perplexity"] and "ppl" in result["text"], result
    page.goto(f"{base_url}/#/jobs")
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row.get_by_test_id("job-result")).to_have_text(result["text"])
