"""Helpers for the browser tests: Debian's Chromium through Playwright (never a downloaded
browser), the embedded stack on a free port, logging in through the UI, screenshots.

Chromium or Playwright missing is a failure, never a skip: CI must not pass with the UI untested.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("NORMSEARCH_TEST_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium's own connections are refused on a closed
# network and slow every page down; no sandbox because the tests may run as root in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Screenshots of every run (git-ignored); the README's picture only on request.
ARTIFACT_DIR = Path(os.environ.get("NORMSEARCH_UI_ARTIFACTS", REPO_ROOT / "test-artifacts" / "ui"))
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "ui-job.png"
UPDATE_DOCS_ENV = "NORMSEARCH_UPDATE_DOCS_SCREENSHOT"
VIEWPORT = {"width": 1280, "height": 900}


def require_chromium() -> Path:
    """The Chromium binary; a failure (not a skip) with the fix when it is missing."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    where = "CI must install it before the tests" if os.environ.get("CI") == "true" else ""
    pytest.fail(
        f"the browser tests need Chromium at {CHROMIUM}: run `make browser` (apt-get install "
        f"chromium) or set NORMSEARCH_TEST_CHROMIUM{'; ' + where if where else ''}",
        pytrace=False,
    )


@contextmanager
def chromium_browser() -> Iterator[object]:
    """A headless Chromium (Debian's binary) driven by Playwright's sync API."""
    executable = require_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser tests need Playwright: `make install` (dev extras); never "
            "`playwright install`, the tests use Debian's Chromium",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def login(page, base_url: str, token: str) -> None:
    """Log in through the login page; returns on the jobs list."""
    page.goto(f"{base_url}/#/login")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("login-button").click()
    page.get_by_test_id("jobs-table").wait_for()


def screenshot(page, name: str, *, full_page: bool = True) -> Path:
    """Save a test artifact ``ARTIFACT_DIR/<name>.png`` and print where it is."""
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path


def update_docs_screenshot(page) -> Path | None:
    """``docs/ui-job.png`` for the README, only when NORMSEARCH_UPDATE_DOCS_SCREENSHOT=1."""
    if os.environ.get(UPDATE_DOCS_ENV) != "1":
        return None
    page.screenshot(path=str(DOCS_SCREENSHOT), full_page=True)
    print(f"docs screenshot: {DOCS_SCREENSHOT}")
    return DOCS_SCREENSHOT


def sn_layer_names(arch: str = "resnet20") -> list[str]:
    """The Switchable-Normalization layers of a zoo model, in module order."""
    import sn_core

    model = sn_core.convert_to_switchnorm(sn_core.build_model(arch))
    return [name for name, _ in sn_core.switch_layers(model)]
