"""worker.export without Ray: the uniform plan of a baseline, and a baseline's trained weights
loading into the skeleton ``sn_core.load_finalized`` builds for that plan."""

from __future__ import annotations

import pytest
import torch

import sn_core
from worker.export import chosen_configuration, load_run_weights, uniform_plan

# (arch, builder kwargs, input shape): 2d convolutions, an MLP (one element per channel) and a 1D
# CNN (where (in, in) is a SelectedNorm, not nn.InstanceNorm1d).
ARCHS = [
    ("resnet20", {}, (4, 1, 8, 8)),
    ("mlp", {"input_size": 12}, (4, 1, 12)),
    ("cnn1d", {}, (4, 1, 40)),
]


def _randomize(model: torch.nn.Module) -> None:
    """Weights and running statistics that are not the fresh skeleton's, so a load shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand_like(tensor) + 0.5 if "var" in name else torch.randn_like(tensor)
                )


@pytest.mark.parametrize(
    ("arch", "kwargs", "shape", "baseline"),
    # IN is undefined on the MLP's one element per channel: no such baseline trains
    [(*a, b) for a in ARCHS for b in ("bn", "gn", "ln", "in") if (a[0], b) != ("mlp", "in")],
)
def test_a_baseline_loads_into_the_skeleton_of_its_uniform_plan(arch, kwargs, shape, baseline):
    trained = sn_core.build_model(arch, num_classes=3, in_channels=1, norm_layer=baseline, **kwargs)
    _randomize(trained)
    plan = uniform_plan(trained, baseline, metadata={"configuration": baseline})
    assert plan.names and {(layer.mean, layer.var) for layer in plan} == {(baseline, baseline)}
    assert plan.metadata == {"configuration": baseline}
    assert sn_core.NormalizerPlan.from_json(plan.to_json()) == plan  # the format sn_core reads
    skeleton = sn_core.apply_plan(
        sn_core.build_model(arch, num_classes=3, in_channels=1, **kwargs), plan
    )
    load_run_weights(skeleton, trained.state_dict())
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(skeleton.eval()(x), trained.eval()(x), rtol=1e-5, atol=1e-5)


def test_weights_of_another_model_are_refused():
    plan = uniform_plan(sn_core.build_model("resnet20", in_channels=1), "bn")
    skeleton = sn_core.apply_plan(sn_core.build_model("resnet20", in_channels=1), plan)
    other = sn_core.build_model("resnet20", in_channels=1, norm_layer="gn").state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        load_run_weights(skeleton, other)
    with pytest.raises(ValueError, match="unknown baseline"):
        uniform_plan(skeleton, "sn")


def test_the_chosen_configuration_follows_the_verdict():
    verdict = {"chosen": "bn", "reason": "within_noise", "text": "use all-BN: ..."}
    choice = chosen_configuration({"verdict": verdict})
    assert (choice.config, choice.verified, choice.label) == ("bn", True, "all-BN")
    assert choice.metadata()["verification"] == "use all-BN: ..."
    none = chosen_configuration({"verdict": {**verdict, "chosen": None, "reason": "no_results"}})
    assert (none.config, none.verified) == ("plan", False)
    assert none.metadata()["verification"] == "not verified: use all-BN: ..."
    disabled = chosen_configuration(None)
    assert (disabled.config, disabled.verified, disabled.reason) == (
        "plan",
        False,
        "verification_disabled",
    )


def test_folding_on_request_says_what_it_did():
    from torch.nn.modules.batchnorm import _BatchNorm

    from worker.export import fold_for_export

    resnet = sn_core.build_model("resnet20", num_classes=3, in_channels=1)
    _randomize(resnet)
    same, info = fold_for_export(resnet, False)
    assert same is resnet and info["batchnorm_folded"] is False
    assert "not requested" in info["fold_batchnorm"]
    folded, info = fold_for_export(resnet, True)
    count = sum(isinstance(m, _BatchNorm) for m in resnet.modules())
    assert info["batchnorm_folded"] is True and info["folded_layers"] == count > 0
    assert not any(isinstance(m, _BatchNorm) for m in folded.modules())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), resnet(x), rtol=1e-4, atol=1e-4)
    # A model torch.fx cannot trace is kept as it is, and the reason is given.
    mlp = sn_core.build_model("mlp", num_classes=3, in_channels=1, input_size=12)
    kept, info = fold_for_export(mlp, True)
    assert kept is mlp and info["batchnorm_folded"] is False
    assert info["fold_batchnorm"].startswith("requested, not done: fold_batchnorm: torch.fx")
    # Nothing to fold (all-GN): not marked folded.
    gn = sn_core.build_model("resnet20", num_classes=3, in_channels=1, norm_layer="gn")
    _, info = fold_for_export(gn, True)
    assert info["batchnorm_folded"] is False and "no BatchNorm" in info["fold_batchnorm"]
