"""The Python client (``api.client``) and the remote commands (``cli.remote``) against the
real app on Postgres (``api_client``: no worker runs, so submitted jobs stay queued)."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile

import pytest
from typer.testing import CliRunner

from api.client import (
    ApiError,
    ChecksumMismatch,
    NormsearchClient,
    ServerUnreachable,
    WaitTimeout,
    parse_sse,
)
from api.schemas import FINISHED_JOB_STATUSES, ArtifactKind, JobDetail, JobPage, JobStatus
from cli import remote as cli_remote
from cli import render
from cli.main import app
from tests.support.api import create_user_token, tiny_spec

BASE = "http://testserver"
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens there

runner = CliRunner(env={"COLUMNS": "400"})

# The event stream sets a read timeout, which the TestClient ignores (and warns about).
pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


@pytest.fixture
def token(api_settings) -> str:
    """A fresh user per test, so listings see only that test's jobs."""
    return create_user_token(api_settings.database_url)


@pytest.fixture
def client(api_client, token):
    with NormsearchClient(BASE, token, http=api_client) as c:
        yield c


@pytest.fixture
def cli(api_client, monkeypatch):
    """The CLI's clients talk to the in-process app."""
    monkeypatch.setattr(
        cli_remote, "make_client", lambda url, tok: NormsearchClient(BASE, tok, http=api_client)
    )
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def write_spec(tmp_path, spec: dict, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


# --------------------------------------------------------------------------- client
def test_submit_returns_the_job_and_the_same_key_returns_the_same_job(client):
    key = uuid.uuid4().hex
    first = client.submit(tiny_spec(), idempotency_key=key)
    assert isinstance(first, JobDetail)
    assert first.status == "queued" and first.arch == "resnet20" and first.idempotency_key == key
    again = client.submit(tiny_spec(), idempotency_key=key)
    assert again.id == first.id
    assert client.submit(tiny_spec()).id != first.id
    with pytest.raises(ApiError) as info:  # same key, another spec
        client.submit(tiny_spec(epochs=3), idempotency_key=key)
    assert info.value.status == 409 and info.value.code == "conflict"


def test_submit_accepts_a_validated_job_spec(client):
    from service.spec import JobSpec

    job = client.submit(JobSpec.model_validate(tiny_spec()))
    assert job.spec["model"]["arch"] == "resnet20"


def test_list_filter_and_get(client):
    a, b, c = (client.submit(tiny_spec()) for _ in range(3))
    client.cancel(b.id)
    page = client.list_jobs()
    assert isinstance(page, JobPage)
    assert page.total == 3 and [j.id for j in page.items] == [c.id, b.id, a.id]
    queued = client.list_jobs(status="queued")
    assert {j.id for j in queued.items} == {a.id, c.id}
    both = client.list_jobs(status=["queued", "cancelled"], sort="created_at", limit=2)
    assert both.total == 3 and [j.id for j in both.items] == [a.id, b.id]
    assert [j.id for j in client.list_jobs(limit=2, offset=2).items] == [a.id]
    job = client.get_job(a.id)
    assert job.id == a.id and [e.to_status for e in job.events] == ["queued"]


def test_the_vocabulary_types_the_answers(client):
    """The client reads the statuses as ``JobStatus`` (the service's enum) and accepts it back."""
    vocabulary = client.vocabulary()
    assert vocabulary.statuses == list(JobStatus)
    assert set(vocabulary.finished_statuses) == FINISHED_JOB_STATUSES
    assert vocabulary.artifact_kinds == list(ArtifactKind)
    assert [n.name for n in vocabulary.normalizers] == ["in", "ln", "bn", "gn", "rms"]
    assert [m.name for m in vocabulary.members if m.kind == "pointwise"] == ["dyt", "none"]
    job = client.submit(tiny_spec())
    assert job.status is JobStatus.queued and job.events[0].to_status is JobStatus.queued
    assert [j.id for j in client.list_jobs(status=JobStatus.queued).items] == [job.id]
    assert client.list_jobs(status=[JobStatus.failed, JobStatus.cancelled]).total == 0


def test_the_cli_knows_every_status(cli, token):
    """Every status has a colour; ``--status`` offers exactly the statuses."""
    assert set(render.STATUS_STYLES) == set(JobStatus)
    bad = cli("ls", "--status", "bogus", "--token", token)
    assert bad.exit_code == 2
    assert all(status in bad.output for status in JobStatus), bad.output


def test_bad_token_is_unauthorized(api_client):
    with (
        NormsearchClient(BASE, "ns_not-a-token", http=api_client) as bad,
        pytest.raises(ApiError) as info,
    ):
        bad.list_jobs()
    assert info.value.status == 401 and info.value.code == "unauthorized"
    assert info.value.is_input_error


def test_invalid_spec_names_the_field(client):
    with pytest.raises(ApiError) as info:
        client.submit(tiny_spec(training={"epochs": -3}))
    error = info.value
    assert error.status == 422 and error.code == "validation_error"
    assert error.field == "training.epochs"
    assert "training.epochs" in str(error)


def test_unknown_and_malformed_job_ids(client):
    with pytest.raises(ApiError) as info:
        client.get_job(uuid.uuid4().hex)
    assert info.value.status == 404 and info.value.code == "not_found"
    with pytest.raises(ApiError) as info:  # one path segment, whatever the id holds
        client.get_job("../jobs")
    assert info.value.status in (404, 422)


def test_cancel_a_queued_job_then_delete_it(client):
    job = client.submit(tiny_spec())
    cancelled = client.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert [e.to_status for e in cancelled.events] == ["queued", "cancelled"]
    with pytest.raises(ApiError) as info:
        client.cancel(job.id)
    assert info.value.status == 409
    client.delete(job.id)
    with pytest.raises(ApiError) as info:
        client.get_job(job.id)
    assert info.value.code == "not_found"


def test_a_queued_job_cannot_be_deleted_but_a_cancelled_one_can_be_retried(client):
    job = client.submit(tiny_spec())
    with pytest.raises(ApiError) as info:
        client.delete(job.id)
    assert info.value.status == 409
    client.cancel(job.id)
    again = client.retry(job.id)
    assert again.status == "queued" and again.run == 2


def test_history_of_a_job_without_trials(client):
    job = client.submit(tiny_spec())
    assert client.trials(job.id) == []
    ratios = client.ratios(job.id, layers=["layer1.0.bn1"], after=3, max_points=10)
    assert ratios.job_id == job.id and ratios.trials == []
    metrics = client.metrics(job.id, names=["val_accuracy"])
    assert metrics.points == [] and metrics.last_step is None
    assert client.artifacts(job.id) == []


def test_events_of_a_finished_job_end_the_stream(client):
    job = client.submit(tiny_spec())
    client.cancel(job.id)
    events = list(client.events(job.id))
    names = [event for event, _ in events]
    assert names[:2] == ["status", "status"] and names[-1] == "end"
    assert ("progress", {"status": "cancelled", "progress": 0.0}) in events
    assert events[1].data["to_status"] == "cancelled" and events[1].id is not None
    assert events[-1].data == {"status": "cancelled"}
    resumed = list(client.events(job.id, last_event_id=events[0].id))
    assert [e.event for e in resumed if e.event == "status"] == ["status"]


def test_wait_returns_a_finished_job_and_times_out_on_a_queued_one(client):
    done = client.submit(tiny_spec())
    client.cancel(done.id)
    updates = []
    job = client.wait(done.id, on_update=updates.append)
    assert job.status == "cancelled" and [u.status for u in updates] == ["cancelled"]
    queued = client.submit(tiny_spec())
    # No worker: the job stays queued. (An event stream of a queued job never ends, and the
    # TestClient reads a whole response before answering, so poll here.)
    with pytest.raises(WaitTimeout) as info:
        client.wait(queued.id, poll_s=0.05, timeout_s=0.3, follow=False)
    assert info.value.job.status == "queued" and queued.id in str(info.value)


@pytest.fixture(scope="module")
def live_url(api_settings):
    """The app served over real HTTP (uvicorn in a thread): event streams that stay open."""
    import socket
    import threading
    import time

    import uvicorn

    from api.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(api_settings, run_reaper=False), host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


def test_wait_over_http_follows_the_stream_until_the_job_is_cancelled(live_url, token):
    import threading
    import time

    with NormsearchClient(live_url, token, timeout=10) as live:
        job = live.submit(tiny_spec())
        started = time.monotonic()
        with pytest.raises(WaitTimeout):  # a queued job's stream stays open and quiet
            live.wait(job.id, timeout_s=1.5)
        assert 1.4 < time.monotonic() - started < 10
        updates = []
        threading.Timer(1.0, lambda: live.cancel(job.id)).start()
        done = live.wait(job.id, timeout_s=30, on_update=updates.append)
    assert done.status == "cancelled"
    assert [u.status for u in updates] == ["queued", "cancelled"]


def test_outputs_of_an_unfinished_job_are_a_conflict(client, tmp_path):
    job = client.submit(tiny_spec())
    with pytest.raises(ApiError) as info:
        client.download_recommendation(job.id, "json", tmp_path / "plan.json")
    assert info.value.status == 409 and "succeeds" in info.value.message
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_unreachable_server_names_the_url():
    with (
        NormsearchClient(UNREACHABLE, "token", timeout=5) as offline,
        pytest.raises(ServerUnreachable) as info,
    ):
        offline.list_jobs()
    assert UNREACHABLE in str(info.value) and info.value.status is None
    assert isinstance(info.value, ApiError)


def test_base_url_forms_and_no_token_in_repr():
    assert NormsearchClient("http://h:1/api/v1/", "secret").api_url == "http://h:1/api/v1"
    assert "secret" not in repr(NormsearchClient("http://h:1", "secret"))
    with pytest.raises(ValueError):
        NormsearchClient("h:1", "secret")


def test_parse_sse_fields_comments_and_multiline_data():
    stream = [
        ": ping",
        "event: status",
        "id: 7",
        'data: {"to_status":',
        'data: "running"}',
        "",
        "data: plain text",
        "",
        "",
        "event: end",
        "data:{}",
    ]
    events = list(parse_sse(stream + [""]))
    assert events == [("status", {"to_status": "running"}), ("message", "plain text"), ("end", {})]
    assert events[0].id == "7" and events[1].id == "7"  # the last id carries over


# --------------------------------------------------------------------------- downloads
def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _fake_outputs(
    api_settings, job_id: str, *, tamper: bool = False, report: dict | None = None
) -> dict[str, bytes]:
    """Store the artifacts a worker would (files under the runs directory + their rows, each
    with the SHA-256 of the file). ``tamper``: plan.json's digest is wrong, and the checkpoint's
    is that of its weights member (what jobs recorded before the zip was the artifact)."""
    from service.db import make_engine, make_session_factory
    from service.db.models import Artifact

    out = api_settings.runs_dir / job_id / "run-1"
    out.mkdir(parents=True)
    report = report or {
        "recommendation": {
            "target_batch_size": 128,
            "plan": {"layers": [{"name": "bn1", "mean": "bn", "var": "ln", "confidence": 0.93}]},
        },
        "verification": None,
    }
    weights = b"\x00weights" * 100
    plan = b'{"format": "normalizer-plan"}\n'
    files = {
        "plan_json": (out / "plan.json", plan),
        "plan_yaml": (out / "plan.yaml", b"format: normalizer-plan\n"),
        "report_json": (out / "report.json", json.dumps(report).encode()),
        "search_plan_json": (out / "search_plan.json", b'{"format": "search-plan"}\n'),
        "checkpoint": (
            out / "checkpoint.zip",
            _zip({"model.safetensors": weights, "plan.json": plan}),
        ),
        "search_checkpoint": (
            out / "search_checkpoint.zip",
            _zip({"model.safetensors": weights[::-1]}),
        ),
    }
    for path, content in files.values():
        path.write_bytes(content)
    rows = {
        kind: (path, hashlib.sha256(content).hexdigest()) for kind, (path, content) in files.items()
    }
    if tamper:
        rows["plan_json"] = (rows["plan_json"][0], "0" * 64)
        rows["checkpoint"] = (rows["checkpoint"][0], hashlib.sha256(weights).hexdigest())
    engine = make_engine(api_settings.database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            for kind, (path, sha) in rows.items():
                size = path.stat().st_size
                session.add(
                    Artifact(job_id=job_id, kind=kind, path=str(path), sha256=sha, size_bytes=size)
                )
    finally:
        engine.dispose()
    return {kind: content for kind, (_, content) in files.items()}


ALL_FILES = [
    "checkpoint.zip",
    "plan.json",
    "plan.yaml",
    "report.json",
    "search_checkpoint.zip",
    "search_plan.json",
]


def test_download_all_writes_the_outputs_and_checks_them(client, api_settings, tmp_path):
    job = client.submit(tiny_spec())
    stored = _fake_outputs(api_settings, job.id)
    written = client.download_all(job.id, tmp_path / "out")
    assert sorted(written) == ALL_FILES
    for name, kind in [
        ("plan.json", "plan_json"),
        ("plan.yaml", "plan_yaml"),
        ("report.json", "report_json"),
        ("checkpoint.zip", "checkpoint"),
        ("search_plan.json", "search_plan_json"),
        ("search_checkpoint.zip", "search_checkpoint"),
    ]:
        assert written[name].read_bytes() == stored[kind], name
    # What the artifact list shows is the digest and size of the downloaded file.
    listed = {a.kind: a for a in client.artifacts(job.id)}
    checkpoint = written["checkpoint.zip"].read_bytes()
    assert listed["checkpoint"].sha256 == hashlib.sha256(checkpoint).hexdigest()
    assert listed["checkpoint"].size_bytes == len(checkpoint)
    search = client.download_search_checkpoint(job.id, tmp_path / "s.zip")
    assert search.read_bytes() == stored["search_checkpoint"]
    assert client.report(job.id)["recommendation"]["target_batch_size"] == 128
    assert {a.kind for a in client.get_job(job.id).artifacts} >= {"plan_json", "checkpoint"}


def test_download_all_of_an_older_job_skips_the_search_outputs(client, api_settings, tmp_path):
    from service.db import make_engine, make_session_factory
    from service.db.models import Artifact

    job = client.submit(tiny_spec())
    _fake_outputs(api_settings, job.id)
    engine = make_engine(api_settings.database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            for row in session.query(Artifact).filter_by(job_id=job.id):
                if row.kind.startswith("search_"):
                    session.delete(row)
    finally:
        engine.dispose()
    written = client.download_all(job.id, tmp_path / "out")
    assert sorted(written) == ["checkpoint.zip", "plan.json", "plan.yaml", "report.json"]


def test_a_download_that_does_not_match_its_checksum_is_refused(client, api_settings, tmp_path):
    job = client.submit(tiny_spec())
    _fake_outputs(api_settings, job.id, tamper=True)
    with pytest.raises(ChecksumMismatch):
        client.download_recommendation(job.id, "json", tmp_path / "plan.json")
    # The whole downloaded zip is checked, not a member of it.
    with pytest.raises(ChecksumMismatch):
        client.download_checkpoint(job.id, tmp_path / "c.zip")
    assert list(tmp_path.iterdir()) == []
    assert client.download_recommendation(job.id, "yaml", tmp_path / "plan.yaml").exists()


# --------------------------------------------------------------------------- CLI
def test_cli_submit_ls_status_cancel(cli, client, token, tmp_path):
    spec = write_spec(tmp_path, tiny_spec())
    result = cli("submit", spec, "--token", token, "--idempotency-key", "cli-1")
    assert result.exit_code == 0, result.output
    job = client.list_jobs().items[0]
    assert job.id in result.output and "queued" in result.output
    again = cli("submit", spec, "--token", token, "--idempotency-key", "cli-1")
    assert again.exit_code == 0 and job.id in again.output
    assert client.list_jobs().total == 1

    listed = cli("ls", "--token", token)
    assert listed.exit_code == 0 and job.id in listed.output and "resnet20" in listed.output
    assert "1-1 of 1" in listed.output
    shown = cli("status", job.id, "--token", token)
    assert shown.exit_code == 0 and job.id in shown.output and "submitted" in shown.output

    cancelled = cli("cancel", job.id, "--token", token)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    assert client.get_job(job.id).status == "cancelled"
    assert "no jobs" in cli("ls", "--status", "queued", "--token", token).output
    assert job.id in cli("ls", "-s", "cancelled", "-s", "failed", "--token", token).output
    again = cli("cancel", job.id, "--token", token)
    assert again.exit_code == 2 and "error:" in again.output
    retried = cli("retry", job.id, "--token", token)
    assert retried.exit_code == 0 and "queued" in retried.output and "run 2" in retried.output


def test_cli_ls_shows_each_jobs_result_and_status_the_bn_trend(cli, client, token, api_settings):
    """``ls``: the worker's result line of a succeeded job, the reason of a failed one, "-" for
    the others (and for a job that finished before results were recorded). ``status`` of a
    succeeded job: the result, the verdict and BN's share by batch size, final-epoch labelled."""
    from sqlalchemy import update

    from service.db import make_engine, make_session_factory
    from service.db.models import Job
    from worker.verdict import verdict

    decided = verdict({"plan": {0: 0.98, 1: 0.985, 2: 0.975}, "bn": {0: 0.90, 1: 0.91, 2: 0.89}})
    by_batch_size = {
        str(bs): {
            "trials": 2, "trial_ids": ["t1", "t2"],
            "mean_ratio": {"ln": 1 - bn, "bn": bn}, "var_ratio": {"ln": 1 - bn, "bn": bn},
            "choices": {"l0": "bn/bn" if bn > 0.5 else "ln/ln", "l1": "ln/ln"},
            "layers": {name: {"mean": {"ln": 1 - bn, "bn": bn}, "var": {"ln": 1 - bn, "bn": bn}}
                       for name in ("l0", "l1")},
        }
        for bs, bn in ((8, 0.2), (128, 0.8))
    }  # fmt: skip
    report = {
        "recommendation": {"target_batch_size": 128, "plan": {"layers": []},
                           "by_batch_size": by_batch_size},
        "verification": {"verdict": decided.to_dict()},
    }  # fmt: skip
    done, failed, older, queued = (client.submit(tiny_spec()) for _ in range(4))
    _fake_outputs(api_settings, done.id, report=report)
    _finish_job(api_settings, failed.id, "failed")
    _finish_job(api_settings, older.id, "succeeded")
    text = "plan 0.980 ± 0.005 (3 seeds, final epoch)"
    result = {
        "configuration": "plan", "label": "plan", "verified": True, "reason": decided.reason,
        "accuracy": 0.98, "std": 0.005, "n": 3, "accuracy_kind": "final epoch", "text": text,
    }  # fmt: skip
    engine = make_engine(api_settings.database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            values = {"status": "succeeded", "progress": 1.0, "result": result}
            session.execute(update(Job).where(Job.id == done.id).values(**values))
    finally:
        engine.dispose()

    listed = cli("ls", "--token", token)
    assert listed.exit_code == 0, listed.output
    lines = {job.id: line for job in (done, failed, older, queued) for line in
             listed.output.splitlines() if job.id in line}  # fmt: skip
    assert text in lines[done.id]  # one line per job, in a pipe too
    assert "failed: trial 0 diverged" in lines[failed.id]
    assert lines[older.id].rstrip().endswith("-") and lines[queued.id].rstrip().endswith("-")

    shown = cli("status", done.id, "--token", token)
    assert shown.exit_code == 0, shown.output
    assert text in shown.output and decided.text[:40] in shown.output
    assert "BN's share by batch size (final-epoch ratios" in shown.output
    after = shown.output[shown.output.index("BN's share by batch size") :]
    trend = [line for line in after.splitlines() if line.startswith("│ ")]
    assert [line.split("│")[1].strip() for line in trend] == ["8", "128"]
    assert "0.20" in trend[0] and "0.80" in trend[1]
    quiet = cli("status", older.id, "--token", token)  # succeeded, no report: no trend, no error
    assert quiet.exit_code == 0 and "BN's share" not in quiet.output


def test_cli_ls_fits_columns_keeps_ids_whole_and_wraps_between_words(cli, client, token):
    """``ls`` in an 80-column terminal (``COLUMNS``): no line wider, each id whole on its row,
    the columns that do not fit left out; in a pipe without ``COLUMNS``, every column."""
    jobs = [client.submit(tiny_spec()) for _ in range(2)]
    client.cancel(jobs[0].id)
    client.retry(jobs[0].id)  # a note: "run 2"
    narrow = runner.invoke(app, ["ls", "--token", token], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert max(len(line) for line in lines) <= 80, narrow.output
    for job in jobs:
        assert any(job.id in line for line in lines), narrow.output
    assert "…" not in narrow.output, narrow.output
    wide = runner.invoke(app, ["ls", "--token", token], env={"COLUMNS": ""})
    header = next(line for line in wide.output.splitlines() if " status " in line)
    assert header.split() == [
        "id", "status", "done", "model", "dataset", "batch", "created", "duration", "result",
        "note",
    ]  # fmt: skip


def test_cli_submit_name_shows_in_ls_and_status(cli, client, token, tmp_path):
    spec = write_spec(tmp_path, tiny_spec())
    result = cli("submit", spec, "--name", "first try", "--token", token)
    assert result.exit_code == 0, result.output
    (job,) = client.list_jobs().items
    assert job.name == "first try"
    listed = runner.invoke(app, ["ls", "--token", token], env={"COLUMNS": ""})
    header = next(line for line in listed.output.splitlines() if " status " in line)
    assert header.split()[:3] == ["id", "name", "status"]
    assert "first try" in next(line for line in listed.output.splitlines() if job.id in line)
    assert "first try" in cli("status", job.id, "--token", token).output
    too_long = cli("submit", spec, "--name", "x" * 101, "--token", token)
    assert too_long.exit_code == 2 and "name" in too_long.output


def test_cli_reads_the_token_from_the_environment(cli, token, monkeypatch):
    monkeypatch.setenv("NORMSEARCH_TOKEN", token)
    result = cli("ls")
    assert result.exit_code == 0 and "no jobs" in result.output
    assert token not in result.output


def test_cli_bad_spec_file_names_the_field_before_submitting(cli, client, token, tmp_path):
    spec = write_spec(tmp_path, tiny_spec(training={"epochs": -3}))
    result = cli("submit", spec, "--token", token)
    assert result.exit_code == 2
    assert "training.epochs" in result.output and "Traceback" not in result.output
    assert client.list_jobs().total == 0


def test_cli_api_errors_are_one_line_and_exit_2(cli, token, api_client):
    missing = cli("status", uuid.uuid4().hex, "--token", token)
    assert missing.exit_code == 2 and "error:" in missing.output and "not found" in missing.output
    bad = cli("ls", "--token", "ns_wrong")
    assert bad.exit_code == 2 and "error:" in bad.output and "token" in bad.output
    none = cli("ls", "--token", "")
    assert none.exit_code == 2 and "NORMSEARCH_TOKEN" in none.output
    for result in (missing, bad, none):
        assert "Traceback" not in result.output


def test_cli_download_and_status_show_the_outputs(cli, client, token, api_settings, tmp_path):
    job = client.submit(tiny_spec())
    _fake_outputs(api_settings, job.id)
    result = cli("download", job.id, "--out", tmp_path / "dl", "--token", token)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ALL_FILES
    shown = cli("status", job.id, "--token", token)
    assert "plan_json" in shown.output and "search_checkpoint" in shown.output
    assert "configuration the verdict chose" in shown.output
    unfinished = client.submit(tiny_spec())
    refused = cli("download", unfinished.id, "--out", tmp_path / "no", "--token", token)
    assert refused.exit_code == 2 and "succeeds" in refused.output


def _finish_job(api_settings, job_id: str, status: str) -> None:
    """What a worker would do at the end (no worker runs in these tests)."""
    from sqlalchemy import update

    from service.db import make_engine, make_session_factory
    from service.db.models import Job

    engine = make_engine(api_settings.database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            values = {"status": status, "progress": 1.0 if status == "succeeded" else 0.5}
            if status == "failed":
                values["error"] = "trial 0 diverged"
            session.execute(update(Job).where(Job.id == job_id).values(**values))
    finally:
        engine.dispose()


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled"])
def test_cli_submit_wait_exit_code_follows_the_outcome(
    outcome, api_client, api_settings, token, tmp_path, monkeypatch
):
    class FinishingClient(NormsearchClient):
        """The job finishes at once, as if a worker had run it."""

        def submit(self, spec, idempotency_key=None, *, name=None):
            job = super().submit(spec, idempotency_key, name=name)
            if outcome == "succeeded":
                _fake_outputs(api_settings, job.id)
            if outcome == "cancelled":
                self.cancel(job.id)
            else:
                _finish_job(api_settings, job.id, outcome)
            return job

    monkeypatch.setattr(
        cli_remote, "make_client", lambda url, tok: FinishingClient(BASE, tok, http=api_client)
    )
    spec = write_spec(tmp_path, tiny_spec())
    result = runner.invoke(app, ["submit", str(spec), "--wait", "--token", token])
    assert "Traceback" not in result.output
    if outcome == "succeeded":
        assert result.exit_code == 0, result.output
        assert "Recommendation (batch size 128)" in result.output and "0.93" in result.output
        assert "normsearch download" in result.output
    else:
        assert result.exit_code == 1, result.output
        assert "error: job" in result.output and outcome in result.output
    if outcome == "failed":
        assert "trial 0 diverged" in result.output


def test_follow_job_prints_each_event_once(client):
    job = client.submit(tiny_spec())
    client.cancel(job.id)
    from rich.console import Console

    console = Console(record=True, width=200)
    original, cli_remote.console = cli_remote.console, console
    try:
        finished = cli_remote.follow_job(client, job.id, poll_s=0.05, timeout_s=10)
    finally:
        cli_remote.console = original
    text = console.export_text()
    assert finished.status == "cancelled"
    assert text.count("submitted") == 1 and text.count("cancelled by user") == 1


def test_recommendation_table_from_a_report():
    from rich.console import Console

    report = {
        "recommendation": {
            "target_batch_size": 32,
            "plan": {
                "layers": [{"name": "conv1.bn", "mean": "in", "var": "bn", "confidence": 0.5}]
            },
        }
    }
    console = Console(record=True, width=200)
    console.print(render.recommendation_table_from_report(report))
    text = console.export_text()
    assert "batch size 32" in text and "conv1.bn" in text and "0.50" in text
    assert render.recommendation_table_from_report({}) is None


def test_cli_unreachable_server_is_a_clean_message(tmp_path):
    result = runner.invoke(app, ["ls", "--url", UNREACHABLE, "--token", "t"])
    assert result.exit_code == 2
    assert "cannot reach" in result.output and UNREACHABLE in result.output
    assert "Traceback" not in result.output
    spec = write_spec(tmp_path, tiny_spec())
    result = runner.invoke(
        app, ["submit", str(spec), "--token", "t"], env={"NORMSEARCH_URL": UNREACHABLE}
    )
    assert result.exit_code == 2 and UNREACHABLE in result.output
