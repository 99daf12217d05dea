"""Ratio functions that map SN logits to points on the probability simplex.

``sparsestmax`` (Shao et al., CVPR 2019) drives the ratios to one-hot as its radius grows, which is
what turns a Switchable Normalization layer into a single normalizer. The original code has several
numerical traps (docs/sn-spec.md section 5); this version guards every one of them:

* equal logits (the initial state!) or two tied logits put the sparsemax output on the barycentre of
  its face, where the push direction is 0/0. We push towards the vertex of the (first) largest
  ratio instead, a constant direction, so nothing divides by zero and the gradient stays finite;
* the output never leaves the simplex: a push that leaves it is projected back onto the face by
  sparsemax and continues there, at most K - 1 times;
* everything is tensor arithmetic over a fixed number of steps: no ``.item()``, no host sync, no
  parameter mutation.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sparsemax", "sparsestmax", "onehot_radius", "RATIO_FUNCTIONS", "compute_ratios"]


def sparsemax(logits: Tensor) -> Tensor:
    """Euclidean projection of ``logits`` (last dimension) onto the probability simplex."""
    k = logits.shape[-1]
    z, _ = torch.sort(logits, dim=-1, descending=True)
    rank = torch.arange(1, k + 1, dtype=logits.dtype, device=logits.device)
    cumulative = z.cumsum(-1) - 1
    support_size = (z * rank > cumulative).sum(-1, keepdim=True)  # >= 1 always
    tau = cumulative.gather(-1, support_size - 1) / support_size.to(logits.dtype)
    return torch.clamp(logits - tau, min=0)


def onehot_radius(k: int) -> float:
    """Radius from which sparsestmax over ``k`` entries returns a one-hot vector for any input."""
    return ((k - 1) / k) ** 0.5


def sparsestmax(logits: Tensor, radius: float | Tensor) -> Tensor:
    """SparsestMax: sparsemax constrained to stay at distance >= ``radius`` from its face centre.

    ``logits`` has shape (..., K); the result lies on the simplex. With ``radius`` 0 this is
    sparsemax; with ``radius >= onehot_radius(K)`` every output is one-hot.
    """
    k = logits.shape[-1]
    dtype, device = logits.dtype, logits.device
    tiny = 32 * torch.finfo(dtype).eps
    radius_sq = torch.as_tensor(radius, dtype=dtype, device=device).square()
    radius_sq = radius_sq.expand(logits.shape[:-1]).unsqueeze(-1)

    w = sparsemax(logits)
    centre = None
    settled = torch.zeros(logits.shape[:-1] + (1,), dtype=torch.bool, device=device)
    for _ in range(k - 1):  # each recursion shrinks the support; K - 1 suffice
        support = w > 0
        size = support.sum(-1, keepdim=True)
        u = support.to(dtype) / size.to(dtype)
        if centre is not None:  # recursing onto a face: the sphere's cross-section shrinks
            radius_sq = torch.clamp(radius_sq - (u - centre).square().sum(-1, keepdim=True), min=0)
        centre = u
        r = torch.sqrt(torch.clamp(radius_sq, min=tiny * tiny))
        offset = w - u
        # Keep the offset exactly in the face's plane (sum zero over the support): rounding in
        # sum(w) would otherwise be amplified by r / |offset| and leak mass off the simplex.
        offset = offset - support.to(dtype) * (offset.sum(-1, keepdim=True) / size.to(dtype))
        dist_sq = offset.square().sum(-1, keepdim=True)
        dist = torch.sqrt(torch.clamp(dist_sq, min=tiny * tiny))
        push = ~settled & (size > 1) & (dist_sq < radius_sq)

        # Ties: no direction from w itself, head for the vertex of the first largest ratio.
        vertex = torch.nn.functional.one_hot(w.argmax(-1), k).to(dtype)
        towards_vertex = vertex - u
        towards_vertex = towards_vertex / torch.clamp(
            towards_vertex.norm(dim=-1, keepdim=True), min=tiny
        )
        direction = torch.where(dist_sq < tiny * tiny, towards_vertex, offset / dist)
        pushed = torch.where(push, u + r * direction, w)

        left_simplex = push & (pushed.amin(-1, keepdim=True) < 0)
        settled = settled | ~left_simplex
        w = torch.where(left_simplex, sparsemax(pushed), pushed)
    return w


def _softmax(logits: Tensor, radius: float, temperature: float) -> Tensor:
    return torch.softmax(logits, dim=-1)


def _sparsestmax(logits: Tensor, radius: float, temperature: float) -> Tensor:
    return sparsestmax(logits, radius)


def _temperature(logits: Tensor, radius: float, temperature: float) -> Tensor:
    return torch.softmax(logits / temperature, dim=-1)


RATIO_FUNCTIONS = {
    "softmax": _softmax,
    "sparsestmax": _sparsestmax,
    "temperature": _temperature,
}


def compute_ratios(name: str, logits: Tensor, *, radius: float, temperature: float) -> Tensor:
    """Ratios for logits under the named ratio function (see ``RATIO_FUNCTIONS``)."""
    try:
        fn = RATIO_FUNCTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown ratio_fn {name!r}; choose one of {sorted(RATIO_FUNCTIONS)}"
        ) from None
    return fn(logits, radius, temperature)
