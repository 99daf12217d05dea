"""torch.compile (Dynamo) traces SN models: fixed layers without graph breaks.

``torch._dynamo.explain`` with the eager backend (no code generation, so it is quick) over a model
whose SN layers are fixed (every native kernel, momentum None and a float, with and without
running statistics) must report a single graph in training and in evaluation. Free layers break
the graph exactly once each, at the mixture kernel (``switch_norm``, run eagerly).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn
from torch.testing import assert_close

from sn_core.layers import SwitchNorm2d

POOL = ("in", "ln", "bn", "gn")
FIXED = [
    ("bn", {}),
    ("bn", {"momentum": None}),
    ("bn", {"track_running_stats": False}),
    ("in", {}),
    ("ln", {}),
    ("gn", {}),
]


def model(free: int = 0) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    for kind, kwargs in FIXED:
        norm = SwitchNorm2d(8, pool=POOL, groups=4, **kwargs)
        norm.fix(kind, kind)
        layers += [norm, nn.ReLU()]
    for _ in range(free):
        layers.append(SwitchNorm2d(8, pool=POOL, groups=4, ratio_fn="sparsestmax"))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("training", [True, False])
def test_fixed_layers_compile_without_graph_breaks(training):
    net = model().train(training)
    dynamo.reset()
    report = dynamo.explain(net)(torch.randn(4, 3, 6, 6))
    assert report.graph_break_count == 0, [str(b.reason) for b in report.break_reasons]
    assert report.graph_count == 1


@pytest.mark.parametrize("training", [True, False])
def test_free_layers_break_only_at_the_mixture_kernel(training):
    net = model(free=2).train(training)
    dynamo.reset()
    report = dynamo.explain(net)(torch.randn(4, 3, 6, 6))
    reasons = [str(b.reason) for b in report.break_reasons]
    assert reasons and all("switch_norm" in r for r in reasons), reasons


def test_compiled_training_matches_eager_running_statistics():
    """Momentum None under compile keeps the factor a tensor; the buffers still match eager."""
    eager = model()
    compiled_net = copy.deepcopy(eager)
    dynamo.reset()
    compiled = torch.compile(compiled_net, backend="eager", fullgraph=True)
    for i in range(3):
        x = torch.randn(4, 3, 6, 6) + i
        assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(eager.named_buffers(), compiled_net.named_buffers(), strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
