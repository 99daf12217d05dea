"""The web UI's static files as the API app serves them (no browser): ``/`` is index.html with a
strict Content-Security-Policy, the assets it references are served from ``/ui/``, nothing
outside the static folder is, and the API, health and metrics routes are unaffected."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.ui import STATIC_DIR
from service.settings import Settings
from tests.support.api import bearer, create_user_token


@pytest.fixture
def client(sqlite_url, tmp_path):
    settings = Settings(database_url=sqlite_url, broker_url="memory://", runs_dir=tmp_path / "runs")
    with TestClient(create_app(settings, run_reaper=False)) as test_client:
        test_client.token = create_user_token(sqlite_url, "ui-user")
        yield test_client


def test_index_is_served_at_the_root_with_a_content_security_policy(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/ui/app.js">' in response.text
    assert 'data-testid="notice"' in response.text


def test_every_asset_is_served_with_its_type_and_imports_resolve(client):
    index = client.get("/").text
    referenced = set(re.findall(r'(?:src|href)="(/ui/[^"]+)"', index))
    assert {"/ui/app.js", "/ui/app.css"} <= referenced
    for script in STATIC_DIR.glob("*.js"):
        source = script.read_text(encoding="utf-8")
        # Every relative ES module import names a file that is there.
        for name in re.findall(r'from\s+"\./([^"]+)"', source):
            assert (STATIC_DIR / name).is_file(), f"{script.name} imports missing {name}"
        referenced.add(f"/ui/{script.name}")
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for path in sorted(referenced):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(types[path[path.rindex(".") :]])
        assert "default-src 'self'" in response.headers["content-security-policy"]


def test_the_ui_serves_nothing_outside_its_static_folder(client):
    for path in ["/ui/missing.js", "/ui/index.html", "/ui/..%2F__init__.py", "/ui/"]:
        response = client.get(path)
        assert response.status_code == 404, path
    assert client.get("/ui/../api/app.py").status_code == 404
    assert client.get("/no-such-page").status_code == 404


def test_the_api_health_and_metrics_routes_are_unaffected(client):
    assert client.get("/api/v1/me").status_code == 401
    me = client.get("/api/v1/me", headers=bearer(client.token))
    assert me.status_code == 200 and me.json()["name"] == "ui-user"
    page = client.get("/api/v1/jobs", headers=bearer(client.token)).json()
    assert page["total"] == 0 and page["items"] == []
    assert client.get("/api/v1/openapi.json").status_code == 200
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/metrics").status_code == 200
    # The UI routes stay out of the API's OpenAPI document.
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)


def test_the_ui_reads_the_vocabulary_from_the_api_and_keeps_no_copy(client):
    """Statuses and normalizer names come from ``GET /api/v1/vocabulary`` (vocabulary.js), the
    torch layer of a planned layer from the report: no script spells them out or restates
    sn_core's layer rule."""
    vocabulary = client.get("/api/v1/vocabulary", headers=bearer(client.token)).json()
    statuses = vocabulary["statuses"]
    names = [n["name"] for n in vocabulary["normalizers"]]
    for script in STATIC_DIR.glob("*.js"):
        source = script.read_text(encoding="utf-8")
        literals = set(re.findall(r'"([a-z_]+)"', source))
        assert not set(statuses) <= literals, f"{script.name} lists the job statuses"
        assert not set(names) <= literals, f"{script.name} lists the normalizers"
        assert "BatchNorm" not in source and "GroupNorm" not in source, script.name
    loader = (STATIC_DIR / "vocabulary.js").read_text(encoding="utf-8")
    assert 'request("vocabulary")' in loader
    assert "torch_layers" in (STATIC_DIR / "report.js").read_text(encoding="utf-8")
