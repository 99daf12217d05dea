"""The SN kernel backends: layer and kernel tests run once per backend (``sn_kernel`` fixture).

"python" (the NumPy/torch mixture) always runs. "native" (the compiled kernel of
sn_core/native.py) runs when it is built; under CI (CI=true, after `make install` built it) a
missing native kernel is a failure, never a skip, so CI always exercises both paths.
"""

from __future__ import annotations

import pytest

from sn_core.functional import use_kernel
from tests.support.kernels import require_native


@pytest.fixture(params=["python", "native"])
def sn_kernel(request):
    """Selects the backend for the test's duration; yields its name."""
    name = request.param
    if name == "native":
        require_native()
    previous = use_kernel(name)
    try:
        yield name
    finally:
        use_kernel(previous)
