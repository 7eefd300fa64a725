"""A training step's L0 term sums the soft masks its own forward made: continuous
sparsification's theta goes through one sigmoid per step instead of two, with the loss and the
gradients of an L0 term computed on its own, and a mask never outlives its step or its theta."""

from collections import Counter

import pytest
import torch
from model_zoo import ZOO, build
from torch.utils._python_dispatch import TorchDispatchMode

import neurosurgeon as ns
from neurosurgeon.modules.cache import soft_masks_for_l0


class _OpCounts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _circuit(method, mask_unit="weight"):
    hp = {"ablation": "none", "mask_unit": mask_unit}
    hp.update({"mask_init_value": 0.5} if method == "continuous_sparsification" else {"mask_init_percentage": 0.5})
    cfg = ns.CircuitConfig(mask_method=method, mask_hparams=hp, target_layers=["transformer.h.*.mlp.c_fc", "lm_head"],
                           freeze_base=True, add_l0=True, l0_lambda=0.25, key=0)
    circuit = ns.CircuitModel(cfg, build("gpt2")).train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in circuit.mask_layers().values():  # masks that differ entry by entry
            layer.weight_mask_params.copy_(torch.randn(layer.weight_mask_params.shape, generator=g))
    return circuit


def _step(circuit, loss_fn):
    """(loss, gradients of theta) of one step from the same noise step."""
    steps = {n: b.clone() for n, b in circuit.named_buffers() if n.endswith("noise_step")}
    circuit.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    with torch.no_grad():
        for n, b in circuit.named_buffers():
            if n in steps:
                b.copy_(steps[n])
    return loss.detach(), [p.grad.clone() for p in circuit.parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["continuous_sparsification", "hard_concrete"])
@pytest.mark.parametrize("mask_unit", ["weight", "neuron"])
def test_step_loss_and_gradients_equal_a_separately_computed_l0(method, mask_unit):
    circuit, batch = _circuit(method, mask_unit), ZOO["gpt2"].batch()
    shared = _step(circuit, lambda: circuit(**batch).loss)
    apart = _step(circuit, lambda: circuit.wrapped_model(**batch).loss + 0.25 * ns.l0_penalty(circuit.wrapped_model))
    assert shared[0].item() == pytest.approx(apart[0].item(), rel=1e-6)
    assert len(shared[1]) == 3
    for a, b in zip(shared[1], apart[1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


def test_continuous_sparsification_computes_one_sigmoid_per_theta_per_step():
    circuit, batch = _circuit("continuous_sparsification"), ZOO["gpt2"].batch()
    with _OpCounts() as shared:
        circuit(**batch).loss.backward()
    with _OpCounts() as apart:
        (circuit.wrapped_model(**batch).loss + 0.25 * ns.l0_penalty(circuit.wrapped_model)).backward()
    assert shared.counts["sigmoid"] == 3  # three masked layers, the model itself has no sigmoid
    assert apart.counts["sigmoid"] == 6


def test_a_mask_is_reused_only_for_the_same_theta_inside_the_block():
    circuit, batch = _circuit("continuous_sparsification"), ZOO["gpt2"].batch()
    layer = circuit.mask_layers()["lm_head"]
    with soft_masks_for_l0():
        circuit.wrapped_model(**batch)
        layer.weight_mask_params = torch.nn.Parameter(torch.full_like(layer.weight_mask_params, -2.0))
        inside = layer.calculate_l0()
    assert inside.item() == pytest.approx(torch.sigmoid(torch.tensor(-2.0)).item() * layer.weight.numel(), rel=1e-5)
    with soft_masks_for_l0():
        circuit.wrapped_model(**batch)
    with torch.no_grad():
        layer.weight_mask_params.fill_(3.0)  # edited after the block: the next L0 sees it
    assert layer.calculate_l0().item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item() * layer.weight.numel(),
                                                        rel=1e-5)


def test_a_forward_without_autograd_leaves_the_l0_term_differentiable():
    # A re-entrant checkpoint runs its first forward under no_grad: that mask has no graph and
    # must not stand in for the L0 term.
    circuit, batch = _circuit("continuous_sparsification"), ZOO["gpt2"].batch()
    layer = circuit.mask_layers()["lm_head"]
    with soft_masks_for_l0():
        with torch.no_grad():
            circuit.wrapped_model(**batch)
        l0 = layer.calculate_l0()
    (theta_grad,) = torch.autograd.grad(l0, layer.weight_mask_params)
    s = torch.sigmoid(layer.weight_mask_params.detach())
    assert torch.allclose(theta_grad, s * (1 - s))


def test_a_forward_without_a_loss_computes_no_l0_term():
    # Hard concrete's L0 (eq. 12) is a sigmoid of its own: three layers' gates, plus three for the term.
    circuit, batch = _circuit("hard_concrete"), ZOO["gpt2"].batch()
    with torch.no_grad(), _OpCounts() as with_loss:
        assert circuit(**batch).loss is not None
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad(), _OpCounts() as without_loss:
        assert circuit(**inputs).loss is None
    assert (with_loss.counts["sigmoid"], without_loss.counts["sigmoid"]) == (6, 3)
