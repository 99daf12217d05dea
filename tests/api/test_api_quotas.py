"""Quotas per user at the HTTP edge: a submission or retry over a quota is 429 with Retry-After
and a body naming the quota and its variable; a job alone over the trial-epoch quota is 403;
a cancelled job frees its slot; an admin (``normsearch token create --admin``) is exempt."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.support.api import api_test_settings, bearer, create_user_token, tiny_spec

API = "/api/v1"
TINY_EPOCHS = 4  # tiny_spec(): 1 search trial x 2 epochs + 2 verification trials x 1 epoch


@pytest.fixture(scope="module")
def api_settings(module_postgres_url, api_broker, tmp_path_factory):
    """The module's app with small quotas: two jobs, or 3 tiny jobs' trial-epochs, per user."""
    return api_test_settings(
        tmp_path_factory.mktemp("api-quotas"),
        module_postgres_url,
        api_broker,
        max_jobs_per_user=2,
        max_trial_epochs_per_user=3 * TINY_EPOCHS,
        quota_retry_after_s=30,
    )


@pytest.fixture
def user(api_settings) -> dict[str, str]:
    return bearer(create_user_token(api_settings.database_url))


def post(client, path: str, headers, spec=None):
    return client.post(f"{API}{path}", headers=headers, json=spec or tiny_spec())


def test_over_the_jobs_quota_is_429_with_retry_after(api_client, user):
    assert api_client.get(f"{API}/me", headers=user).json()["is_admin"] is False
    first = post(api_client, "/jobs", user)
    assert first.status_code == 201 and post(api_client, "/jobs", user).status_code == 201
    over = post(api_client, "/jobs", user)
    assert over.status_code == 429, over.text
    assert over.headers["Retry-After"] == "30"
    body = over.json()
    assert body["code"] == "quota_exceeded" and body["limit"] == "max_jobs_per_user"
    assert body["variable"] == "NORMSEARCH_MAX_JOBS_PER_USER" in body["message"]
    assert (body["quota"], body["in_use"], body["requested"]) == (2, 2, 1)
    assert api_client.get(f"{API}/jobs", headers=user).json()["total"] == 2
    # Cancelling one frees its slot.
    cancelled = api_client.post(f"{API}/jobs/{first.json()['id']}/cancel", headers=user)
    assert cancelled.status_code == 200
    assert post(api_client, "/jobs", user).status_code == 201


def test_over_the_trial_epoch_quota_is_429_and_a_job_alone_over_it_403(api_client, user):
    big = tiny_spec(epochs=7)  # 7 + 2 = 9 trial-epochs
    assert post(api_client, "/jobs", user, big).status_code == 201
    over = post(api_client, "/jobs", user)  # 9 + 4 > 12
    assert over.status_code == 429 and over.headers["Retry-After"] == "30"
    assert over.json()["variable"] == "NORMSEARCH_MAX_TRIAL_EPOCHS_PER_USER"
    assert (over.json()["in_use"], over.json()["requested"]) == (9, TINY_EPOCHS)
    never = post(api_client, "/jobs", bearer_of_new_user(api_client), tiny_spec(epochs=20))
    assert never.status_code == 403, never.text
    assert "Retry-After" not in never.headers
    body = never.json()
    assert body["code"] == "over_quota" and "can never be queued" in body["message"]
    assert "NORMSEARCH_MAX_TRIAL_EPOCHS_PER_USER" in body["message"]


def bearer_of_new_user(api_client) -> dict[str, str]:
    return bearer(create_user_token(api_client.app.state.settings.database_url))


def test_a_retry_over_the_quota_is_429(api_client, user):
    job_ids = [post(api_client, "/jobs", user).json()["id"] for _ in range(2)]
    api_client.post(f"{API}/jobs/{job_ids[0]}/cancel", headers=user)
    assert post(api_client, "/jobs", user).status_code == 201  # the freed slot is taken again
    retry = api_client.post(f"{API}/jobs/{job_ids[0]}/retry", headers=user)
    assert retry.status_code == 429 and retry.headers["Retry-After"] == "30"
    job = api_client.get(f"{API}/jobs/{job_ids[0]}", headers=user).json()
    assert job["status"] == "cancelled" and job["run"] == 1


def test_an_admin_is_exempt(api_client, api_settings):
    created = CliRunner().invoke(
        app, ["token", "create", "--user", "ops", "--admin", "--url", api_settings.database_url]
    )
    assert created.exit_code == 0, created.output
    admin = bearer(created.stdout.strip())
    assert api_client.get(f"{API}/me", headers=admin).json()["is_admin"] is True
    for _ in range(4):
        assert post(api_client, "/jobs", admin).status_code == 201
    assert post(api_client, "/jobs", admin, tiny_spec(epochs=20)).status_code == 201


def test_the_openapi_document_names_the_quota_answers(api_client):
    paths = api_client.get(f"{API}/openapi.json").json()["paths"]
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}/retry"):
        responses = paths[path]["post"]["responses"]
        assert "Retry-After" in responses["429"]["headers"]
        assert "trial-epoch quota" in responses["403"]["description"]
