"""Sparsity schedules and the controller that anneals SN ratios to fixed one-hot choices."""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from sn_core.inspect import param_groups, ratio_parameters, switch_layers
from sn_core.layers import SwitchNorm2d
from sn_core.schedules import (
    RadiusSchedule,
    SparsityController,
    TemperatureSchedule,
    fraction_fixed,
    linear_ramp,
)
from sn_core.sparsity import onehot_radius

FINAL3 = onehot_radius(3) + 0.01


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_linear_ramp():
    assert [linear_ramp(p, 0.2, 0.6) for p in (-1, 0.0, 0.2, 0.4, 0.6, 0.9, 2)] == pytest.approx(
        [0, 0, 0, 0.5, 1, 1, 1]
    )
    assert (linear_ramp(0.29, 0.3, 0.3), linear_ramp(0.3, 0.3, 0.3)) == (0.0, 1.0)
    with pytest.raises(ValueError):
        linear_ramp(0.5, 0.6, 0.2)


@pytest.mark.parametrize("end", [0.6, 0.3])
def test_radius_schedule_compresses_to_any_budget(end):
    schedule = RadiusSchedule(end=end)
    assert schedule(0.0, 3) == 0.0
    assert schedule(end / 2, 3) == pytest.approx(FINAL3 / 2)
    assert schedule(end, 3) == pytest.approx(FINAL3) and schedule(1.0, 3) == pytest.approx(FINAL3)
    assert schedule.radius(end, 4) == pytest.approx(onehot_radius(4) + 0.01)
    assert RadiusSchedule(0.1, end, final_radius=1.0)(0.1 + (end - 0.1) / 4, 3) == pytest.approx(
        0.25
    )


@pytest.mark.parametrize("end", [0.6, 0.3])
def test_temperature_schedule_decays_geometrically(end):
    schedule = TemperatureSchedule(end=end, initial=1.0, final=0.01)
    assert schedule(0.0) == 1.0
    assert schedule(end / 2) == pytest.approx(0.1)
    assert schedule(end) == pytest.approx(0.01) and schedule(1.0) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        TemperatureSchedule(final=0.0)


class SmallNet(nn.Module):
    def __init__(self, tied_last: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.sn1 = SwitchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.sn2 = SwitchNorm2d(8, pool=("in", "ln", "bn", "gn"), groups=4)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.sn3 = SwitchNorm2d(8, tied=tied_last)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.sn1(self.conv1(x)))
        x = F.relu(self.sn2(self.conv2(x)))
        x = F.relu(self.sn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def _train(model, controller, steps, *, seed=0, after=None):
    """SGD (momentum, weight decay also on the logits) with ``controller.step`` after each step."""
    groups = param_groups(model, lr=0.05, weight_decay=5e-4, ratio_weight_decay=5e-4)
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for i in range(steps):
        x = torch.randn(8, 3, 6, 6, generator=gen) * 3 + 1
        y = torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        out = model(x)
        assert torch.isfinite(out).all()
        F.cross_entropy(out, y).backward()
        opt.step()
        status = controller.step((i + 1) / steps)
        history.append(status)
        if after is not None:
            after(i, status)
    return history


@pytest.mark.parametrize("method", ["sparsestmax", "temperature"])
def test_controller_fixes_everything_by_end_and_fixed_logits_never_move(method):
    torch.manual_seed(0)
    model = SmallNet()
    controller = SparsityController(model, method=method, end=0.5)
    assert all(layer.ratio_fn == method for _, layer in switch_layers(model))
    snapshot = {}

    def after(i, status):
        assert status.total == 5  # two untied layers (2 choices each) + one tied layer
        if status.progress >= 0.5:
            assert status.all_fixed and fraction_fixed(model) == 1.0
            if not snapshot:
                snapshot.update({id(p): p.detach().clone() for p in ratio_parameters(model)})
                snapshot["fixed"] = [layer.fixed for _, layer in switch_layers(model)]
            else:  # bit-identical: no gradient, so no momentum or weight-decay drift
                for p in ratio_parameters(model):
                    assert p.grad is None and torch.equal(p, snapshot[id(p)])
                assert [layer.fixed for _, layer in switch_layers(model)] == snapshot["fixed"]

    history = _train(model, controller, 24, after=after)
    assert snapshot and history[-1].all_fixed
    newly = [entry for status in history for entry in status.newly_fixed]
    assert len(newly) == 5 and {which for _, which, _ in newly} == {"mean", "var", "tied"}
    assert all(0 < s.progress <= 0.5 for s in history if s.newly_fixed)
    for _, layer in switch_layers(model):  # forward uses the fixed one-hot choices
        mean, var = layer.ratios()
        assert (int(mean.argmax()), int(var.argmax())) == layer.fixed
        assert float(mean.max()) == float(var.max()) == 1.0
        assert (layer.mean_choice.item(), layer.var_choice.item()) == layer.fixed


def test_onehot_choices_are_fixed_early_and_separately():
    model = SmallNet()
    with torch.no_grad():
        model.sn1.mean_weight.copy_(torch.tensor([0.0, 5.0, 0.0]))  # sparsemax: one-hot already
    controller = SparsityController(model, end=0.8)
    status = controller.step(0.01)
    assert status.newly_fixed == [("sn1", "mean", "ln")] and status.fixed == 1
    assert model.sn1.fixed == (1, None)
    assert model.sn2.radius == pytest.approx(0.01 / 0.8 * (onehot_radius(4) + 0.01))

    temp = SmallNet()
    with torch.no_grad():
        temp.sn3.mean_weight.copy_(torch.tensor([0.0, 0.0, 10.0]))  # softmax top 0.99991
    status = SparsityController(temp, method="temperature").step(0.0)
    assert status.newly_fixed == [("sn3", "tied", "bn")] and temp.sn3.fixed == (2, 2)


def test_method_none_only_reports():
    model = SmallNet(tied_last=False)
    controller = SparsityController(model, method="none", end=0.1)
    status = controller.step(1.0)
    assert (status.fixed, status.total, status.all_fixed) == (0, 6, False)
    assert all(layer.ratio_fn == "softmax" for _, layer in switch_layers(model))
    assert fraction_fixed(model) == 0.0 and fraction_fixed(nn.Linear(2, 2)) == 1.0
    with pytest.raises(ValueError):
        SparsityController(model, method="gumbel")


def test_state_dict_restores_the_schedule():
    model = SmallNet()
    controller = SparsityController(model, end=0.5)
    controller.step(0.25)
    radius = model.sn1.radius
    assert radius == pytest.approx(FINAL3 / 2)
    state, model_state = controller.state_dict(), model.state_dict()

    resumed = SmallNet()
    resumed.load_state_dict(model_state)
    fresh = SparsityController(resumed, end=0.5)
    assert resumed.sn1.radius == 0.0
    fresh.load_state_dict(state)
    assert fresh.progress == 0.25 and resumed.sn1.radius == radius
    with pytest.raises(ValueError):
        SparsityController(SmallNet(), method="temperature").load_state_dict(state)


# --- DistributedDataParallel -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=30),
    )
    try:
        torch.manual_seed(rank)  # different inits: DDP must broadcast rank 0's
        model = nn.parallel.DistributedDataParallel(SmallNet(), find_unused_parameters=True)
        controller = SparsityController(model, end=0.5)
        snapshot: dict = {}
        fixed_at: list = []

        def after(i, status):
            fixed_at.append(status.fixed)
            for p in ratio_parameters(model):
                key = id(p)
                if key in snapshot:  # fixed before this step: no gradient, no movement
                    assert p.grad is None and torch.equal(p, snapshot[key]), "a fixed logit moved"
            for _, layer in switch_layers(model):  # remember logits once their choice is fixed
                if layer.fixed[0] is not None:
                    snapshot.setdefault(id(layer.mean_weight), layer.mean_weight.detach().clone())
                if layer.var_weight is not None and layer.fixed[1] is not None:
                    snapshot.setdefault(id(layer.var_weight), layer.var_weight.detach().clone())

        _train(model, controller, 12, seed=100 + rank, after=after)
        torch.save(
            {
                "params": {k: v.detach().clone() for k, v in model.module.state_dict().items()},
                "fixed": [layer.fixed for _, layer in switch_layers(model)],
                "fixed_at": fixed_at,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_ddp_training_with_fixing_mid_run_stays_in_sync():
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _ddp_worker,
            args=(2, _free_port(), out_dir),
            nprocs=2,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + 90
        try:
            while not context.join(timeout=1):
                if time.monotonic() > deadline:
                    pytest.fail("DDP workers timed out")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(2)]

    first, second = results
    assert first["fixed"] == second["fixed"] and all(None not in f for f in first["fixed"])
    assert first["fixed_at"] == second["fixed_at"]
    assert first["fixed_at"][0] < first["fixed_at"][-1] == 5  # fixed during the run
    assert first["params"].keys() == second["params"].keys()
    for key, value in first["params"].items():
        torch.testing.assert_close(second["params"][key], value, rtol=0, atol=0, msg=key)
    assert math.isfinite(float(first["params"]["fc.weight"].sum()))


@pytest.mark.parametrize("method", ["sparsestmax", "temperature"])
def test_the_controller_reads_every_choice_as_its_layer_computes_it(method):
    """The controller's batched read (one ratio call per group of same-sized choices) gives each
    choice the top ratio and argmax of the layer's own soft ratios: pools of different sizes,
    tied and untied layers, point-wise output choices, each layer at its own radius."""
    from sn_core.schedules import _top_ratios
    from sn_core.tokens import SwitchNormTokens

    model = nn.Sequential(
        SwitchNorm2d(4, pool=("in", "ln", "bn")),
        SwitchNorm2d(4, pool=("ln", "bn"), tied=True),
        SwitchNorm2d(4, pool=("in", "ln", "bn", "gn"), groups=2),
        SwitchNormTokens(4, pool=("ln", "rms", "dyt", "none"), tied=True),
    )
    controller = SparsityController(model, method, 0.0, 0.6)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, layer in controller.layers:
            for logits in (layer.mean_weight, layer.var_weight, layer.output_weight):
                if logits is not None:
                    logits.copy_(torch.randn(logits.shape, generator=gen))
    controller.step(0.2)
    layers = [layer for _, layer in controller.layers]
    layers[0].radius = 0.3  # rows at different radii in one call
    pending, expected = [], []
    for layer in layers:
        mean, var = layer.soft_ratios()
        choices = [("tied", mean)] if layer.tied else [("mean", mean), ("var", var)]
        if layer.output_choices:
            choices.append(("output", layer.soft_output_ratios()))
        for which, ratios in choices:
            pending.append(("layer", layer, which))
            expected.append((ratios.max().item(), float(ratios.argmax())))
    got = _top_ratios(pending)
    for (top, index), (want_top, want_index) in zip(got, expected, strict=True):
        assert index == want_index
        assert top == pytest.approx(want_top, abs=1e-6)
