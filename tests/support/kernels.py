"""The SN kernel backends in tests: the native one is required under CI, optional locally."""

from __future__ import annotations

import os

import pytest

from sn_core import native


def require_native() -> None:
    """Skip (fail under CI=true, where `make install` built it) without the native kernel."""
    if not native.available():
        message = f"the native SN kernel is not built ({native.library_path()}): `make install`"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
