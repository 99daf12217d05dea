"""Edges of the API that an attacker reaches: absolute URLs under NORMSEARCH_PUBLIC_URL whatever
Host header a request sends, and an open event stream that ends once its token is revoked."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service import auth
from service.db import make_engine, make_session_factory
from service.db.models import ApiToken, Artifact, Job
from service.settings import Settings
from tests.support.api import api_test_settings, bearer, create_user_token, tiny_spec

API = "/api/v1"
PUBLIC = "https://normsearch.example.org/prefix"
SPOOFED = {"Host": "evil.example.com"}


@pytest.fixture(scope="module")
def factory(module_postgres_url):
    engine = make_engine(module_postgres_url)
    yield make_session_factory(engine)
    engine.dispose()


def app_client(module_postgres_url, api_broker, tmp_path_factory, **overrides) -> TestClient:
    settings = api_test_settings(
        tmp_path_factory.mktemp("edges"), module_postgres_url, api_broker, **overrides
    )
    return TestClient(create_app(settings, run_reaper=False))


def add_artifact(factory, job_id: str) -> None:
    with factory() as session, session.begin():
        job = session.get(Job, job_id)
        job.artifacts.append(
            Artifact(kind="plan_json", path="/nowhere/plan.json", sha256="0" * 64, size_bytes=2)
        )


# NORMSEARCH_PUBLIC_URL


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("https://normsearch.example.org/", "https://normsearch.example.org"),
        (" http://10.0.0.5:8000/ns/ ", "http://10.0.0.5:8000/ns"),
        ("", None),
    ],
)
def test_public_url_is_kept_without_its_trailing_slash(value, stored):
    assert Settings(public_url=value).public_url == stored


@pytest.mark.parametrize(
    "value", ["normsearch.example.org", "ftp://example.org", "https://", "https://h/?a=1"]
)
def test_a_public_url_that_is_not_an_http_url_is_refused(value):
    with pytest.raises(ValueError, match="public_url"):
        Settings(public_url=value)


def test_urls_use_the_public_url_and_never_a_spoofed_host(
    module_postgres_url, api_broker, tmp_path_factory, factory
):
    headers = {**bearer(create_user_token(module_postgres_url)), **SPOOFED}
    with app_client(module_postgres_url, api_broker, tmp_path_factory, public_url=PUBLIC) as c:
        created = c.post(f"{API}/jobs", headers=headers, json=tiny_spec())
        assert created.status_code == 201
        job_id = created.json()["id"]
        assert created.headers["location"] == f"{PUBLIC}{API}/jobs/{job_id}"
        add_artifact(factory, job_id)
        detail = c.get(f"{API}/jobs/{job_id}", headers=headers).json()
        listed = c.get(f"{API}/jobs/{job_id}/artifacts", headers=headers).json()
    expected = f"{PUBLIC}{API}/jobs/{job_id}/artifacts/plan_json"
    assert [a["url"] for a in detail["artifacts"]] == [expected]
    assert [a["url"] for a in listed] == [expected]
    assert "evil" not in json.dumps(detail) + json.dumps(listed)


def test_without_a_public_url_urls_follow_the_request(
    module_postgres_url, api_broker, tmp_path_factory, factory
):
    headers = {**bearer(create_user_token(module_postgres_url)), "Host": "api.internal:8080"}
    with app_client(module_postgres_url, api_broker, tmp_path_factory) as c:
        created = c.post(f"{API}/jobs", headers=headers, json=tiny_spec())
        job_id = created.json()["id"]
        assert created.headers["location"] == f"http://api.internal:8080{API}/jobs/{job_id}"
        add_artifact(factory, job_id)
        listed = c.get(f"{API}/jobs/{job_id}/artifacts", headers=headers).json()
    assert listed[0]["url"] == f"http://api.internal:8080{API}/jobs/{job_id}/artifacts/plan_json"


# Event streams re-check their token


def read_stream(client: TestClient, job_id: str, headers: dict) -> tuple[list, float]:
    """The stream's (event, data) pairs and how long it stayed open."""
    events, kind = [], None
    started = time.monotonic()
    with client.stream("GET", f"{API}/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    return events, time.monotonic() - started


def revoke_later(factory, raw: str, delay_s: float, *, delete_token: bool = False):
    """Revoke the token after ``delay_s`` as another request or the CLI would (or delete its
    row outright), while the stream is open."""

    def run():
        time.sleep(delay_s)
        with factory() as session, session.begin():
            token = session.query(ApiToken).filter_by(token_hash=auth.hash_token(raw)).one()
            if delete_token:
                session.delete(token)
            else:
                auth.revoke_token(session, user_id=token.user_id, token_id=token.id)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(60)
@pytest.mark.parametrize("delete_token", [False, True], ids=["revoked", "deleted"])
def test_an_open_stream_ends_once_its_token_is_revoked(
    module_postgres_url, api_broker, tmp_path_factory, factory, delete_token
):
    interval = 0.5
    raw = create_user_token(module_postgres_url)
    with app_client(
        module_postgres_url, api_broker, tmp_path_factory, stream_auth_interval_s=interval
    ) as client:
        job_id = client.post(f"{API}/jobs", headers=bearer(raw), json=tiny_spec()).json()["id"]
        revoked_after = 1.5
        thread = revoke_later(factory, raw, revoked_after, delete_token=delete_token)
        events, open_s = read_stream(client, job_id, bearer(raw))  # a queued job: no `end`
        thread.join()
        again = client.get(f"{API}/jobs/{job_id}/events", headers=bearer(raw))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "status" and "end" not in kinds
    assert events[-1] == (
        "error",
        {
            "code": "unauthorized",
            "message": "the API token was revoked or its user deleted; the stream ends",
        },
    )
    # Open until the revocation, closed within one re-check interval (plus a poll) after it.
    assert revoked_after <= open_s < revoked_after + interval + 1.5
    assert again.status_code == 401


def test_the_stream_setting_is_bounded():
    with pytest.raises(ValueError, match="stream_auth_interval_s"):
        Settings(stream_auth_interval_s=0)
