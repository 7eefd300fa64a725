"""A new strategy is one row of the strategy table plus its function, with no other change: a
straight-through estimator (soft = hard = 1[theta > 0], with the sigmoid's gradient) registered
here works through a shell, inject_masks, training with the L0 penalty, subnetwork,
evaluate_baselines and save/load."""

import pytest
import torch
import torch.nn as nn
from torch.func import vmap

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional import random as nr


def straight_through_mask(theta: torch.Tensor) -> torch.Tensor:
    """1[theta > 0] forward, d sigma(theta) / d theta backward (Bengio et al. 2013)."""
    s = torch.sigmoid(theta)
    return (theta > 0).to(theta.dtype) + (s - s.detach())


STRAIGHT_THROUGH = F.Strategy(
    init=lambda *, unit, mask_init_value: mask_init_value,
    soft=lambda theta, key, *, unit, **hp: straight_through_mask(theta),
    hard=lambda theta, *, unit, **hp: (theta > 0).to(theta.dtype),
    l0=lambda theta, *, unit, **hp: straight_through_mask(theta).sum(),
    hparams={"mask_init_value": 0.5},
    l0_is_mask_sum=True,
    init_hparam="mask_init_value",
)


@pytest.fixture
def straight_through():
    F.STRATEGIES["straight_through"] = STRAIGHT_THROUGH
    yield "straight_through"
    del F.STRATEGIES["straight_through"]


def test_a_new_row_gives_a_shell_whose_forward_and_gradient_are_the_estimators(straight_through):
    torch.manual_seed(0)
    base = nn.Linear(5, 4)
    layer = ns.mask_class(straight_through, "linear").from_layer(base, key=0, mask_init_value=-0.3)
    assert type(layer).__name__ == "StraightThroughLinear" and layer.mask_init_value == -0.3
    with torch.no_grad():
        layer.weight_mask_params.copy_(torch.randn(4, 5))
    x = torch.randn(3, 5)
    y = layer(x)
    theta = layer.weight_mask_params.detach()
    torch.testing.assert_close(y, nn.functional.linear(x, base.weight * (theta > 0), base.bias))
    y.sum().backward()
    s = torch.sigmoid(theta)
    want = (x.sum(0)[None, :] * base.weight) * s * (1 - s)  # d(sum y)/d m times the sigmoid's slope
    torch.testing.assert_close(layer.weight_mask_params.grad, want)
    with pytest.raises(TypeError, match="StraightThroughLinear.*temperature"):  # not a knob of this row
        ns.mask_class(straight_through, "linear")(5, 4, temperature=2.0)


def test_a_new_row_trains_through_inject_masks_and_is_analysed_saved_and_loaded(straight_through, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    layers = ns.inject_masks(model, nn.Linear, strategy=straight_through, key=3, mask_init_value=0.5)
    assert {type(m).__name__ for m in layers.values()} == {"StraightThroughLinear"}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=2.0)
    model.train()
    before = ns.l0_statistics(model)["total_l0"]
    for _ in range(20):
        with ns.soft_masks_for_l0():
            loss = nn.functional.cross_entropy(model(x), y) + 0.05 * ns.l0_penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    sub = ns.subnetwork(model)
    kept = sum(int(h.sum()) for h in sub.values())
    assert 0 < kept < before  # the L0 term pruned some weights, not all
    for name, layer in layers.items():
        assert torch.equal(sub[f"{name}.weight"], layer.weight_mask_params.detach() > 0)

    keys = nr.split(nr.key(1), 4)
    out = ns.evaluate_baselines(model, lambda f: f(x).sum(), keys, ablation="randomly_sampled")
    loop = torch.stack([ns.run_masked(model, ns.masked_weights(model, k, ablation="randomly_sampled"), x).sum()
                        for k in keys])
    torch.testing.assert_close(out, loop)
    masks = vmap(lambda k: ns.model_masks(model, k, ablation="zero_ablate"))(keys)
    assert torch.equal(masks["0"].weight_mask[0], 1 - sub["0.weight"].float())

    path = tmp_path / "masks.safetensors"
    ns.save_masks(model, path)
    fresh = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    ns.inject_masks(fresh, nn.Linear, strategy=straight_through, key=0)
    ns.load_masks(fresh, path)
    fresh.eval()
    assert all(torch.equal(a, b) for a, b in zip(ns.subnetwork(fresh).values(), sub.values()))
