"""sparsemax / sparsestmax: simplex, one-hot radius, trap guards, gradients."""

from __future__ import annotations

import pytest
import torch

from sn_core.sparsity import RATIO_FUNCTIONS, compute_ratios, onehot_radius, sparsemax, sparsestmax


def on_simplex(w: torch.Tensor, tol: float = 1e-6) -> bool:
    return bool((w >= 0).all() and ((w.sum(-1) - 1).abs() <= tol).all())


def test_sparsemax_is_the_simplex_projection():
    torch.manual_seed(0)
    v = torch.randn(500, 4, dtype=torch.float64)
    w = sparsemax(v)
    assert on_simplex(w, 1e-12)
    # Projection optimality: <v - w, p - w> <= 0 for simplex vertices p.
    for i in range(4):
        vertex = torch.nn.functional.one_hot(torch.tensor(i), 4).double()
        assert (((v - w) * (vertex - w)).sum(-1) <= 1e-12).all()


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("radius", [0.0, 0.1, 0.4, 0.7, 0.9])
def test_sparsestmax_stays_on_simplex(k, radius):
    torch.manual_seed(k)
    w = sparsestmax(torch.randn(2000, k) * 0.5, radius)
    assert on_simplex(w)
    assert not torch.isnan(w).any()


@pytest.mark.parametrize("k", [2, 3, 4])
def test_onehot_from_onehot_radius(k):
    torch.manual_seed(1)
    w = sparsestmax(torch.randn(2000, k) * 0.3, onehot_radius(k) + 1e-3)
    assert ((w == 0) | (w == 1)).all()
    assert (w.sum(-1) == 1).all()


def test_radius_zero_is_sparsemax():
    v = torch.randn(100, 3)
    torch.testing.assert_close(sparsestmax(v, 0.0), sparsemax(v))


@pytest.mark.parametrize(
    "logits",
    [[0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [1.0, 1.0, -5.0], [2.0, 2.0, 2.0, -9.0]],
    ids=["equal", "equal-nonzero", "two-tied-third-out", "three-tied-fourth-out"],
)
@pytest.mark.parametrize("radius", [1e-4, 0.3, 0.9])
def test_ties_are_guarded(logits, radius):
    """The original code explodes or returns NaN here (docs/sn-spec.md section 5)."""
    v = torch.tensor(logits, requires_grad=True)
    w = sparsestmax(v, radius)
    (w * torch.arange(1.0, len(logits) + 1)).sum().backward()
    assert on_simplex(w.detach())
    assert torch.isfinite(v.grad).all()
    assert v.grad.abs().max() < 10.0


def test_gradcheck_away_from_kinks():
    torch.manual_seed(3)
    v = torch.randn(16, 3, dtype=torch.float64) * 0.5
    for radius in (0.05, 0.2, 0.5):
        # Keep only rows whose output is neither on a kink (a zero ratio at the boundary).
        w = sparsestmax(v, radius)
        rows = v[(w > 1e-3).all(-1) | ((w == 0).sum(-1) == 1)]
        rows = rows.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda x, r=radius: sparsestmax(x, r), (rows,))


def test_batched_radius_and_no_host_sync_shapes():
    v = torch.randn(5, 3)
    w = sparsestmax(v, torch.tensor(0.5))
    assert w.shape == (5, 3)


@pytest.mark.parametrize("name", sorted(RATIO_FUNCTIONS))
def test_ratio_functions_return_simplex_points(name):
    w = compute_ratios(name, torch.randn(7, 3), radius=0.3, temperature=0.5)
    assert on_simplex(w)


def test_unknown_ratio_function_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown ratio_fn"):
        compute_ratios("hardmax", torch.zeros(3), radius=0.0, temperature=1.0)
