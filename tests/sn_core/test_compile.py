"""torch.compile (Dynamo) traces SN models in one graph: free, partly fixed and fixed layers.

``torch._dynamo.explain`` with the eager backend (no code generation, so it is quick) must report
no graph break for an SN MLP, a small SN ResNet and a ``SwitchNormTokens`` model (with a padding
mask), in training and in evaluation. Free layers run the custom op ``normsearch::switch_norm``
(``sn_core.compiled``); ``aot_eager`` runs its registered autograd and fake shapes, and its
outputs, gradients and running statistics must match eager. Fixing a layer mid-training costs at
most one recompilation; schedule steps (radius, temperature) cost none.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn
from torch._dynamo.utils import counters
from torch.testing import assert_close

from sn_core import compiled
from sn_core.layers import SwitchNorm, SwitchNorm2d
from sn_core.tokens import SwitchNormTokens, padding_mask
from sn_core.zoo import build_model
from sn_core.zoo.resnet_cifar import cifar_resnet

POOL = ("in", "ln", "bn", "gn")
FIXED = [
    ("bn", {}),
    ("bn", {"momentum": None}),
    ("bn", {"track_running_stats": False}),
    ("in", {}),
    ("ln", {}),
    ("gn", {}),
]


def fixed_model(free: int = 0) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    for kind, kwargs in FIXED:
        norm = SwitchNorm2d(8, pool=POOL, groups=4, **kwargs)
        norm.fix(kind, kind)
        layers += [norm, nn.ReLU()]
    for momentum in (0.1, None)[:free]:
        layers.append(
            SwitchNorm2d(8, pool=POOL, groups=4, ratio_fn="sparsestmax", momentum=momentum)
        )
    return nn.Sequential(*layers)


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.a = SwitchNormTokens(8, pool=("in", "ln", "bn", "rms"), ratio_fn="sparsestmax")
        self.b = SwitchNormTokens(8, pool=("ln", "bn"), bias=False, momentum=None)
        self.c = SwitchNormTokens(8, pool=("ln", "rms", "bn"), ratio_fn="temperature")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(self.a(self.fc(x)))))


def mlp():
    return build_model("mlp", norm_layer="sn", in_channels=1, input_size=16, hidden=(8, 8))


def resnet():
    return cifar_resnet(8, norm_layer="sn")


MODELS = {
    "mlp": (mlp, (6, 1, 4, 4)),
    "resnet": (resnet, (4, 3, 8, 8)),
    "tokens": (TokenModel, (3, 5, 8)),
}


def make(name: str, state: str) -> nn.Module:
    """The model with its SN layers all free, partly fixed (every other one, one mean-only),
    or all fixed (cycling through the pool's normalizers)."""
    torch.manual_seed(0)
    net = MODELS[name][0]()
    layers = [m for m in net.modules() if isinstance(m, SwitchNorm)]
    for i, layer in enumerate(layers):
        kind = layer.pool[i % len(layer.pool)]
        if state == "fixed" or (state == "partly" and i % 2):
            layer.fix(kind, kind)
        elif state == "partly" and i == 0:
            layer.fix(mean=kind)
    return net


def inputs(name: str, step: int = 0):
    torch.manual_seed(100 + step)
    x = torch.randn(MODELS[name][1]) + step
    if name != "tokens":
        return x, None
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 4:] = True
    return x, mask


def call(net, x, mask):
    with padding_mask(net, mask):
        return net(x)


@pytest.mark.parametrize("state", ["free", "partly", "fixed"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_sn_models_compile_without_graph_breaks(name, training, state):
    net = make(name, state).train(training)
    x, mask = inputs(name)
    dynamo.reset()
    report = dynamo.explain(call)(net, x, mask)
    assert report.graph_break_count == 0, [str(b.reason) for b in report.break_reasons]
    assert report.graph_count == 1


@pytest.mark.parametrize("free", [0, 2])
@pytest.mark.parametrize("training", [True, False])
def test_every_native_kernel_and_the_mixture_in_one_graph(free, training):
    net = fixed_model(free).train(training)
    dynamo.reset()
    report = dynamo.explain(net)(torch.randn(4, 3, 6, 6))
    assert report.graph_break_count == 0, [str(b.reason) for b in report.break_reasons]
    assert report.graph_count == 1


def compiled_steps(name, steps, fix_at=None, backend="aot_eager"):
    """Train eager and a compiled twin side by side; compare outputs, gradients, buffers."""
    eager = make(name, "partly").train()
    twin = copy.deepcopy(eager)
    dynamo.reset()
    counters.clear()
    run = torch.compile(lambda x, mask: call(twin, x, mask), backend=backend)
    graphs = []
    for step in range(steps):
        if step == fix_at:
            for net in (eager, twin):
                layer = next(m for m in net.modules() if isinstance(m, SwitchNorm))
                layer.fix(layer.pool[1], layer.pool[1])
        for net in (eager, twin):  # a schedule step: must not recompile
            for layer in net.modules():
                if isinstance(layer, SwitchNorm):
                    layer.radius, layer.temperature = 0.1 * step, 1.0 / (1 + step)
        x, mask = inputs(name, step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = call(eager, xa, mask), run(xb, mask)
        assert_close(yb, ya, rtol=1e-4, atol=1e-5)
        grad = torch.randn_like(ya)
        ya.backward(grad)
        yb.backward(grad)
        assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
        pairs = zip(eager.named_parameters(), twin.named_parameters(), strict=True)
        for (key, a), (_, b) in pairs:
            assert (a.grad is None) == (b.grad is None), key
            if a.grad is not None:
                assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=key)
        eager.zero_grad(set_to_none=True)
        twin.zero_grad(set_to_none=True)
        graphs.append(counters["stats"]["unique_graphs"])
    for (key, a), (_, b) in zip(eager.named_buffers(), twin.named_buffers(), strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-6, msg=key)
    return graphs


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "resnet" else n for n in MODELS]
)
def test_compiled_training_matches_eager(name):
    """Outputs, every gradient and the running statistics; fixing a layer at step 2 recompiles
    once (its forward plan is a guarded Python attribute), schedule steps never."""
    graphs = compiled_steps(name, steps=4, fix_at=2)
    assert graphs[0] == graphs[1] == 1, graphs
    assert graphs[2] == graphs[3] <= 2, graphs


@pytest.mark.slow
def test_compiled_evaluation_matches_eager():
    net = make("resnet", "free")
    for step in range(2):  # running statistics worth reading
        net(inputs("resnet", step)[0])
    twin = copy.deepcopy(net).eval()
    net.eval()
    dynamo.reset()
    run = torch.compile(twin, backend="aot_eager", fullgraph=True)
    x = inputs("resnet", 5)[0]
    with torch.no_grad():
        assert_close(run(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kinds", "batch_bn", "affine", "running"),
    [
        (("in", "ln", "bn", "gn"), True, True, False),
        (("bn", "ln"), False, True, True),
        (("bn",), False, False, True),  # evaluation of pure BN: no moments needed
        (("rms", "in"), True, True, False),
    ],
)
def test_custom_op_registrations(kinds, batch_bn, affine, running):
    """torch.library.opcheck: schema, fake shapes, autograd registration, aot dispatch."""
    torch.manual_seed(0)
    c = 8
    x = torch.randn(3, c, 5, requires_grad=True)
    weight = torch.randn(c, requires_grad=True) if affine else None
    bias = torch.randn(c, requires_grad=True) if affine else None
    ratios = torch.softmax(torch.randn(len(kinds)), 0).requires_grad_()
    running_mean = torch.randn(c) if running else None
    running_var = torch.rand(c) + 0.5 if running else None
    args = (x, weight, bias, ratios, ratios.detach().clone().requires_grad_(),
            running_mean, running_var, ",".join(kinds), 1e-5, 4, batch_bn, False)  # fmt: skip
    torch.library.opcheck(compiled._forward_op, args)


@pytest.mark.slow
def test_inductor_compiles_a_free_sn_model():
    """Code generation end to end (the C++ compiler on CPU): train steps match eager."""
    compiled_steps("mlp", steps=2, backend="inductor")
