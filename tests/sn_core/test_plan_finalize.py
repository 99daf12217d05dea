"""SelectedNorm, normalizer plans, finalize / apply_plan / fold_batchnorm, finalized checkpoints."""

from __future__ import annotations

import itertools
import json
import random
import zipfile

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.testing import assert_close

from sn_core.checkpoint import load_finalized, save_finalized
from sn_core.finalize import (
    apply_plan,
    concrete_norm,
    describe_norm,
    finalize,
    fold_batchnorm,
    plan_torch_layers,
)
from sn_core.layers import SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from sn_core.plan import LayerChoice, NormalizerPlan, plan_from_model
from sn_core.selected import SelectedNorm
from sn_core.zoo import build_model

F64 = torch.float64
POOL = ("in", "ln", "bn", "gn")
PAIRS = list(itertools.product(POOL, repeat=2))
PURE_TYPES = {"bn": nn.BatchNorm2d, "in": nn.InstanceNorm2d, "ln": nn.GroupNorm, "gn": nn.GroupNorm}
SPEC = {"arch": "resnet20", "num_classes": 10, "in_channels": 3, "kwargs": {}}


def _randomize(module: nn.Module) -> None:
    """Random affine parameters and running statistics, so that equivalences are not trivial."""
    with torch.no_grad():
        for m in module.modules():
            if getattr(m, "weight", None) is not None and not isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def _fixed_sn(mean: str, var: str, cls=SwitchNorm2d) -> SwitchNorm:
    sn = cls(8, pool=POOL, groups=4, dtype=F64)
    sn.fix(mean, var)
    return sn


# ---------------------------------------------------------------------------- SelectedNorm
@pytest.mark.parametrize("mean,var", PAIRS)
def test_selected_norm_matches_fixed_switchnorm(mean, var):
    torch.manual_seed(0)
    sn = _fixed_sn(mean, var)
    sel = SelectedNorm(8, mean, var, groups=4, dtype=F64)
    _randomize(sn)
    sel.load_state_dict({k: v for k, v in sn.state_dict().items() if k in sel.state_dict()})
    x = torch.randn(4, 8, 5, 5, dtype=F64) * 2 + 1
    for training in (True, False):  # the train step updates the running stats used in eval
        sn.train(training), sel.train(training)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = sn(xa), sel(xb)
        assert_close(yb, ya)
        grad = torch.randn_like(ya)
        ya.backward(grad), yb.backward(grad)
        assert_close(xb.grad, xa.grad)
        assert_close(sel.weight.grad, sn.weight.grad)
        assert_close(sel.bias.grad, sn.bias.grad)
        if sel.running_mean is not None:
            assert_close(sel.running_mean, sn.running_mean)
            assert_close(sel.running_var, sn.running_var)
            assert int(sel.num_batches_tracked) == 1
    assert [n for n, _ in sel.named_parameters()] == ["weight", "bias"]
    assert sel.kinds == tuple(dict.fromkeys((mean, var)))
    assert (sel.running_mean is not None) == ("bn" in (mean, var))
    assert "mean_ratios" not in sel.state_dict()


@pytest.mark.parametrize("shape", [(6, 8), (6, 8, 5), (2, 8, 3, 4, 5)])
def test_selected_norm_any_input_and_repr(shape):
    sel = SelectedNorm(8, "bn", "gn", groups=4).double()
    assert sel.mean_ratios.dtype == F64
    y = sel(torch.randn(shape, dtype=F64))
    assert y.shape == shape and torch.isfinite(y).all()
    assert "mean='bn', var='gn'" in repr(sel) and "groups=4" in repr(sel)
    with pytest.raises(ValueError, match="unknown mean normalizer"):
        SelectedNorm(8, "xx", "bn")
    with pytest.raises(ValueError, match="must divide"):
        SelectedNorm(6, "gn", "bn", groups=4)


# ---------------------------------------------------------------------------------- plans
def _plan() -> NormalizerPlan:
    soft, onehot = {"in": 0.1, "ln": 0.2, "bn": 0.7}, {"in": 0.0, "ln": 0.0, "bn": 1.0}
    return NormalizerPlan(
        layers=(
            LayerChoice("a", "bn", "bn", 16, soft, onehot, confidence=0.5),
            LayerChoice("b.c", "in", "ln", 8, pool=("in", "ln", "bn", "gn"), groups=4, dims=2),
            LayerChoice("d", "bn", "bn", 4, eps=1e-3),
        ),
        metadata={"job": 7, "note": "x"},
    )


def test_plan_round_trips(tmp_path):
    plan = _plan()
    assert NormalizerPlan.from_json(plan.to_json()) == plan
    assert NormalizerPlan.from_yaml(plan.to_yaml()) == plan
    assert NormalizerPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    for suffix in (".json", ".yaml", ".yml"):
        assert NormalizerPlan.load(plan.save(tmp_path / f"plan{suffix}")) == plan
    data = plan.to_dict()
    assert data["format"] == "normsearch.plan" and data["version"] == 1
    assert plan.counts() == {"bn/bn": 2, "in/ln": 1}
    assert plan.layer("b.c").var_ratios == {"in": 0.0, "ln": 1.0, "bn": 0.0, "gn": 0.0}
    with pytest.raises(KeyError, match="nope"):
        plan.layer("nope")
    with pytest.raises(ValueError, match=r"\.json, \.yaml or \.yml"):
        plan.save(tmp_path / "plan.txt")


def _layer(i, **changes):
    return lambda d: d["layers"][i].update(changes)


def _drop(i, key):
    return lambda d: d["layers"][i].pop(key)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.update(version=2), "unsupported plan version 2"),
        (lambda d: d.update(format="other"), "not a normalizer plan"),
        (lambda d: d.update(extra=1), r"unknown field\(s\) \['extra'\]"),
        (lambda d: d.update(layers={}), "must be a list"),
        (_layer(0, mean="xn"), "unknown normalizer 'xn'"),
        (_layer(0, pool=["in", "ln", "zz"]), "unknown normalizer 'zz'"),
        (_drop(0, "pool"), r"missing field\(s\) \['pool'\]"),
        (_layer(0, colour=1), r"unknown field\(s\) \['colour'\]"),
        (_layer(0, mean_ratios={"in": 0.1, "ln": 0.2, "bn": 0.9}), "must sum to 1"),
        (_layer(0, mean_ratios={"in": 0.3, "bn": 0.7}), "one ratio per pool entry"),
        (_layer(0, var="gn"), "not in pool"),
        (_layer(0, num_features=0), "num_features must be an integer >= 1"),
        (_layer(1, mean="gn", groups=3), "must divide"),
        (_layer(2, name="a"), "more than once"),
    ],
)
def test_plan_validation_errors(mutate, match):
    data = json.loads(_plan().to_json())
    mutate(data)
    with pytest.raises(ValueError, match=match):
        NormalizerPlan.from_dict(data)


def test_plan_bad_text():
    with pytest.raises(ValueError, match="invalid plan JSON"):
        NormalizerPlan.from_json("{not json")
    with pytest.raises(ValueError, match="invalid plan YAML"):
        NormalizerPlan.from_yaml("a: [1, 2")
    with pytest.raises(ValueError, match="a plan must be a mapping"):
        NormalizerPlan.from_yaml("- 1\n- 2\n")


def test_plan_from_model():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        SwitchNorm2d(8),
        nn.Sequential(SwitchNorm2d(8, pool=POOL, groups=4), SwitchNorm1d(8, pool=("ln", "bn"))),
        SwitchNorm3d(8),
    )
    with torch.no_grad():
        model[1].mean_weight.copy_(torch.tensor([0.0, 0.0, 2.0]))
        model[1].var_weight.copy_(torch.tensor([1.0, 0.0, 0.0]))
    model[2][0].fix("ln", "gn")
    model[2][1].fix(mean="bn")  # var free, equal logits: first in pool
    plan = plan_from_model(model, metadata={"run": 1})
    assert plan.names == ["1", "2.0", "2.1", "3"]
    a, b, c, d = plan.layers
    mean_soft = torch.softmax(torch.tensor([0.0, 0.0, 2.0]), 0)
    var_soft = torch.softmax(torch.tensor([1.0, 0.0, 0.0]), 0)
    assert (a.mean, a.var, a.dims, a.pool) == ("bn", "in", 2, ("in", "ln", "bn"))
    expected = min(float(mean_soft[2] - mean_soft[0]), float(var_soft[0] - var_soft[1]))
    assert a.confidence == pytest.approx(expected)
    assert a.mean_ratios["bn"] == pytest.approx(float(mean_soft[2]))
    assert (b.mean, b.var, b.confidence, b.groups) == ("ln", "gn", 1.0, 4)
    assert b.mean_ratios == {"in": 0.0, "ln": 1.0, "bn": 0.0, "gn": 0.0}
    assert (c.mean, c.var, c.dims, c.confidence) == ("bn", "ln", 1, 0.0)
    assert (d.dims, plan.metadata) == (3, {"run": 1})


# ------------------------------------------------------------------------------- finalize
@pytest.mark.parametrize("mean,var", PAIRS)
def test_finalize_pair_equivalence(mean, var):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, dtype=F64), _fixed_sn(mean, var))
    _randomize(model)
    x = torch.randn(4, 3, 7, 7, dtype=F64)
    model(x)  # one train step moves the running statistics
    final = finalize(model.eval())
    expected = PURE_TYPES[mean] if mean == var else SelectedNorm
    assert type(final[1]) is expected and not final[1].training
    if mean == var == "gn":
        assert final[1].num_groups == 4
    if mean == var == "ln":
        assert final[1].num_groups == 1
    assert isinstance(model[1], SwitchNorm)  # the original is untouched
    assert_close(final(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["bn", "in", "ln", "gn"])
@pytest.mark.parametrize("cls,shape", [(SwitchNorm1d, (6, 8)), (SwitchNorm3d, (2, 8, 3, 3, 3))])
def test_finalize_1d_3d(kind, cls, shape):
    model = nn.Sequential(_fixed_sn(kind, kind, cls))
    _randomize(model)
    x = torch.randn(shape, dtype=F64)
    model(x)
    final = finalize(model.eval())
    dims = 1 if cls is SwitchNorm1d else 3
    expected = {
        "bn": getattr(nn, f"BatchNorm{dims}d"),
        "in": SelectedNorm if dims == 1 else nn.InstanceNorm3d,
        "ln": nn.GroupNorm,
        "gn": nn.GroupNorm,
    }[kind]
    assert type(final[0]) is expected
    assert_close(final(x), model(x), rtol=1e-12, atol=1e-12)


def test_concrete_norm_reference_variance_and_errors():
    layer = concrete_norm("bn", "bn", 8, dims=2, variance="reference")
    assert isinstance(layer, SelectedNorm) and layer.variance == "reference"
    assert isinstance(concrete_norm("bn", "bn", 8, dims=None), SelectedNorm)
    with pytest.raises(ValueError, match="dims"):
        concrete_norm("bn", "bn", 8, dims=4)


@pytest.mark.parametrize(
    "mean,var,dims,words",
    [
        ("bn", "bn", 2, "BatchNorm2d(16)"),
        ("bn", "bn", 1, "BatchNorm1d(16)"),
        ("bn", "bn", None, "SelectedNorm(16, mean=bn, var=bn)"),
        ("in", "in", 3, "InstanceNorm3d(16, affine=True)"),
        ("in", "in", 1, "SelectedNorm(16, mean=in, var=in)"),
        ("ln", "ln", 2, "GroupNorm(1, 16)"),
        ("gn", "gn", 2, "GroupNorm(4, 16)"),
        ("bn", "ln", 2, "SelectedNorm(16, mean=bn, var=ln)"),
    ],
)
def test_plan_torch_layers_in_words(mean, var, dims, words):
    layer = LayerChoice(
        name="block.norm", mean=mean, var=var, num_features=16, pool=POOL, groups=4, dims=dims
    )
    assert plan_torch_layers(NormalizerPlan(layers=(layer,))) == {"block.norm": words}
    assert plan_torch_layers(NormalizerPlan(layers=(layer,)), variance="reference") == {
        "block.norm": f"SelectedNorm(16, mean={mean}, var={var})"
    }
    assert describe_norm(nn.Identity()) == "Identity"


@pytest.fixture(scope="module")
def trained_resnet():
    """A float64 SN resnet20 with random fixed choices, trained a few steps, and its finalized."""
    torch.manual_seed(2)
    rng = random.Random(2)
    model = build_model("resnet20", num_classes=10, in_channels=3, norm_layer="sn").double()
    for m in model.modules():
        if isinstance(m, SwitchNorm):
            m.fix(rng.choice(m.pool), rng.choice(m.pool))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        x, target = torch.randn(4, 3, 16, 16, dtype=F64), torch.randint(0, 10, (4,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()
    model.eval()
    return model, finalize(model), torch.randn(2, 3, 16, 16, dtype=F64)


def test_finalize_zoo_model(trained_resnet):
    model, final, x = trained_resnet
    plan = plan_from_model(model)
    assert all(layer.confidence == 1.0 for layer in plan)
    assert not any(isinstance(m, SwitchNorm) for m in final.modules())
    assert_close(final(x), model(x), rtol=1e-10, atol=1e-10)
    assert len(plan.counts()) > 1

    fresh = apply_plan(build_model("resnet20", num_classes=10, in_channels=3), plan)
    final_modules = dict(final.named_modules())
    for name, module in fresh.named_modules():
        assert type(module) is type(final_modules[name]), name
    assert list(fresh.state_dict()) == list(final.state_dict())
    fresh.load_state_dict(final.state_dict())

    with pytest.raises(ValueError, match=r"not found in the model: \['nope'\]"):
        apply_plan(fresh, NormalizerPlan((LayerChoice("nope", "bn", "bn", 16),)))
    with pytest.raises(ValueError, match="not a norm layer"):
        apply_plan(fresh, NormalizerPlan((LayerChoice("conv1", "bn", "bn", 16),)))
    with pytest.raises(ValueError, match="no choice for SwitchNorm"):
        finalize(model, NormalizerPlan(plan.layers[1:]))


def test_plan_torch_layers_names_what_finalize_and_apply_plan_build(trained_resnet):
    """What the report (and the UI) shows per layer is the layer finalize really built."""
    model, final, _ = trained_resnet
    plan = plan_from_model(model)
    words = plan_torch_layers(plan)
    finalized = dict(final.named_modules())
    assert words == {layer.name: describe_norm(finalized[layer.name]) for layer in plan}
    applied = dict(apply_plan(model, plan).named_modules())
    assert words == {name: describe_norm(applied[name]) for name in words}
    assert len(set(words.values())) > 1  # the random choices give more than one layer type


# ------------------------------------------------------------------------- fold_batchnorm
@pytest.mark.parametrize("arch,kwargs", [("resnet20", {}), ("vgg_small", {"width": 8})])
def test_fold_batchnorm(arch, kwargs):
    torch.manual_seed(3)
    model = build_model(arch, num_classes=10, in_channels=3, **kwargs).double()
    _randomize(model)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, _BatchNorm) for m in folded.modules())
    assert any(isinstance(m, _BatchNorm) for m in model.modules())  # original untouched
    assert [n for n, _ in folded.named_modules()] == [n for n, _ in model.named_modules()]
    x = torch.randn(2, 3, 16, 16, dtype=F64)
    assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)


class _TwoUsers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_fold_batchnorm_skips_and_errors():
    assert isinstance(fold_batchnorm(_TwoUsers().eval()).bn, nn.BatchNorm2d)
    train_mode = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert isinstance(fold_batchnorm(train_mode)[1], nn.BatchNorm2d)
    assert isinstance(fold_batchnorm(train_mode.eval())[1], nn.Identity)
    with pytest.raises(ValueError, match="torch.fx cannot trace"):
        fold_batchnorm(build_model("mlp", num_classes=3, in_channels=1, input_size=4).eval())


def test_fold_finalized_model(trained_resnet):
    model, final, x = trained_resnet
    folded = fold_batchnorm(final)  # SelectedNorm layers are fx leaves
    assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- checkpoint
@pytest.mark.parametrize("name", ["ckpt", "ckpt.zip"])
def test_checkpoint_round_trip(trained_resnet, tmp_path, name):
    model, final, x = trained_resnet
    plan = plan_from_model(model)
    path = save_finalized(final, plan, SPEC, tmp_path / name)
    loaded, loaded_plan, spec = load_finalized(path, roots=[tmp_path])
    assert (loaded_plan, spec) == (plan, SPEC) and not loaded.training
    assert_close(loaded(x), final(x), rtol=0, atol=0)  # with autograd on: in-place ReLUs
    with pytest.raises(ValueError, match="outside the allowed roots"):
        load_finalized(path, roots=[tmp_path / "elsewhere"])


@pytest.mark.parametrize("name", ["ckpt", "ckpt.zip"])
def test_folded_checkpoint_round_trip(trained_resnet, tmp_path, name):
    """A checkpoint saved after fold_batchnorm says so in model.json and loads folded: no
    BatchNorm left after a convolution, the same outputs as the unfolded model."""
    model, _, x = trained_resnet
    plan = NormalizerPlan(
        tuple(
            LayerChoice(c.name, "bn", "bn", c.num_features, pool=c.pool, dims=c.dims)
            for c in plan_from_model(model)
        )
    )
    final = finalize(model, plan).eval()
    folded = fold_batchnorm(final)
    path = save_finalized(folded, plan, SPEC, tmp_path / name, batchnorm_folded=True)
    loaded, loaded_plan, spec = load_finalized(path)
    assert (loaded_plan, spec) == (plan, SPEC)
    assert any(isinstance(m, _BatchNorm) for m in final.modules())
    assert not any(isinstance(m, _BatchNorm) for m in loaded.modules())
    assert_close(loaded(x), final(x), rtol=1e-10, atol=1e-10)
    unfolded = save_finalized(final, plan, SPEC, tmp_path / "plain")
    assert json.loads((unfolded / "model.json").read_text())["batchnorm_folded"] is False
    # The folded weights under a model.json that does not say so: refused, never misread.
    misread = save_finalized(folded, plan, SPEC, tmp_path / "misread")
    with pytest.raises(ValueError, match="does not match the model"):
        load_finalized(misread)


@pytest.mark.parametrize(
    "member,data,match",
    [
        ("plan.json", None, r"missing member\(s\) \['plan.json'\]"),
        ("model.json", b"{not json", "model.json is not valid JSON"),
        ("model.safetensors", b"\x10\x00garbage", "not a valid safetensors file"),
        ("plan.json", b'{"format": "normsearch.plan", "version": 9}', "unsupported plan version"),
    ],
)
@pytest.mark.parametrize("zipped", [False, True])
def test_checkpoint_rejects_tampering(trained_resnet, tmp_path, member, data, match, zipped):
    model, final, _ = trained_resnet
    path = save_finalized(final, plan_from_model(model), SPEC, tmp_path / "ckpt")
    (path / member).unlink() if data is None else (path / member).write_bytes(data)
    if zipped:
        with zipfile.ZipFile(tmp_path / "ckpt.zip", "w") as archive:
            for file in path.iterdir():
                archive.write(file, file.name)
        path = tmp_path / "ckpt.zip"
    with pytest.raises(ValueError, match=match):
        load_finalized(path)


def test_checkpoint_rejects_mismatched_weights(trained_resnet, tmp_path):
    model, final, _ = trained_resnet
    plan = plan_from_model(model)
    layers = [LayerChoice(x.name, "ln", "ln", x.num_features, pool=x.pool) for x in plan]
    path = save_finalized(final, NormalizerPlan(tuple(layers)), SPEC, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="does not match the model"):
        load_finalized(path)
