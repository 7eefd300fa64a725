"""Continuous sparsification's masked weight and L0 from one sigmoid (functional/cs_l0.py) and the
modules' reuse of a training forward's L0 term in ``calculate_l0`` (CS, and hard concrete's fused
kernel): equal values, equal gradients however the backward calls are split, and never a stale term."""

import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional.fused import fused_kernels
from neurosurgeon.modules.mask_layer import MaskLayer


def _separate(weight, theta, beta):
    m = F.continuous_sparsification_mask(theta, temperature=beta)
    return F.apply_mask(weight, m), m, F.continuous_sparsification_l0(theta, temperature=beta)


@given(rows=st.integers(1, 9), cols=st.integers(1, 9), beta=st.sampled_from([1.0, 0.5, 7.0]),
       lam=st.floats(0.0, 3.0), seed=st.integers(0, 2**16), split=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_values_and_gradients_equal_the_separate_expressions(rows, cols, beta, lam, seed, split, dtype):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=dtype).requires_grad_()
    theta = torch.randn(rows, cols, generator=g, dtype=dtype).requires_grad_()
    g_out = torch.randn(rows, cols, generator=g, dtype=dtype)
    w_eff, m, l0 = F.continuous_sparsification_weight_and_l0(w, theta, temperature=beta)
    r_eff, r_m, r_l0 = _separate(w, theta, beta)
    assert torch.equal(w_eff, r_eff) and torch.equal(m, r_m) and torch.equal(l0, r_l0)
    assert m.requires_grad  # the mask itself stays differentiable (weight_mask regularisers)
    if split:  # task loss first, L0 in a second backward call (after autograd freed saved tensors)
        (w_eff * g_out).sum().backward()
        (lam * l0 + m[0].sum()).backward()
    else:
        ((w_eff * g_out).sum() + lam * l0 + m[0].sum()).backward()
    got = theta.grad.clone(), w.grad.clone()
    theta.grad = w.grad = None
    ((r_eff * g_out).sum() + lam * r_l0 + r_m[0].sum()).backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[0], theta.grad, **tol)
    torch.testing.assert_close(got[1], w.grad, **tol)


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_each_output_alone_gets_its_own_gradient(beta):
    # The backward writes d theta into its own scratch tensor; an L0-only backward has none (its
    # incoming gradient is an expanded scalar) and must not write into it.
    g = torch.Generator().manual_seed(4)
    w, theta = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g).requires_grad_()
    g_out = torch.randn(5, 7, generator=g)
    outs = F.continuous_sparsification_weight_and_l0(w, theta, temperature=beta)
    refs = _separate(w, theta, beta)
    for loss in (lambda o: (o[0] * g_out).sum(), lambda o: 0.7 * o[2], lambda o: (o[1] * g_out).sum()):
        (got,) = torch.autograd.grad(loss(outs), theta, retain_graph=True)
        (want,) = torch.autograd.grad(loss(refs), theta, retain_graph=True)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_plain_composition_under_transforms_and_without_autograd():
    w, theta = torch.randn(3, 4), torch.randn(3, 4)
    with torch.no_grad():
        out = F.continuous_sparsification_weight_and_l0(w, theta, temperature=2.0)
    assert all(torch.equal(a, b) for a, b in zip(out, _separate(w, theta, 2.0)))
    batched = torch.func.vmap(lambda t: F.continuous_sparsification_weight_and_l0(w, t)[2])(torch.randn(5, 3, 4))
    assert batched.shape == (5,)
    grad = torch.func.grad(lambda t: F.continuous_sparsification_weight_and_l0(w, t)[2])(theta)
    torch.testing.assert_close(grad, torch.sigmoid(theta) * (1 - torch.sigmoid(theta)))


def test_rejects_neuron_shaped_parameters_and_bad_temperature():
    with pytest.raises(ValueError, match="mask_params and weight must have the same shape"):
        F.continuous_sparsification_weight_and_l0(torch.ones(3, 4), torch.ones(3, 1))
    with pytest.raises(ValueError, match="temperature"):
        F.continuous_sparsification_weight_and_l0(torch.ones(3, 4), torch.ones(3, 4), temperature=0.0)


def _layer_pair(mask_bias=True, mask_unit="weight"):
    torch.manual_seed(0)
    a = ns.ContSparseLinear.from_layer(nn.Linear(6, 5), key=0, mask_bias=mask_bias, mask_unit=mask_unit,
                                       temperature=3.0)
    with torch.no_grad():
        a.weight_mask_params.normal_()
        if mask_bias:
            a.bias_mask_params.normal_()
    b = copy.deepcopy(a)
    for name in ("masked_parameters", "calculate_l0"):  # b: the unfused reference path
        setattr(b, name, getattr(MaskLayer, name).__get__(b))
    return a, b


@pytest.mark.parametrize("mask_unit", ["weight", "neuron"])
def test_module_l0_and_gradients_equal_the_unfused_path(mask_unit):
    a, b = _layer_pair(mask_unit=mask_unit)
    x = torch.randn(4, 6)
    for layer in (a, b):
        out = layer(x)  # weight_mask is differentiable on both paths: a regulariser on it reaches theta
        loss = out.square().sum() + 0.3 * layer.calculate_l0() + 0.1 * layer.weight_mask.square().sum()
        loss.backward()
    assert torch.equal(a.calculate_l0(), b.calculate_l0())
    for p, q in ((a.weight_mask_params, b.weight_mask_params), (a.bias_mask_params, b.bias_mask_params)):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(a.weight_mask, b.weight_mask)


def _cs_layer():
    layer, _ = _layer_pair(mask_bias=False)
    return layer, lambda: F.continuous_sparsification_l0(layer.weight_mask_params, temperature=layer.temperature)


def _hc_layer():
    layer = ns.HardConcreteLinear(600, 500, key=3, temperature=0.5)  # large enough for the fused kernel
    return layer, lambda: F.hard_concrete_l0(layer.weight_mask_params, temperature=layer.temperature,
                                             left=layer.left_stretch, right=layer.right_stretch)


@pytest.mark.parametrize("make", [_cs_layer, _hc_layer], ids=["continuous_sparsification", "hard_concrete"])
def test_reused_l0_is_never_stale(make):
    # Both strategies' fused training forwards compute the L0 term with the mask; calculate_l0
    # reuses it only while theta and the hyper-parameters are what it was computed from.
    a, fresh = make()
    x = torch.randn(4, a.weight.shape[1])
    with fused_kernels("auto"):
        a(x)
        assert a.calculate_l0() is a.calculate_l0()  # the forward's term, reused
        torch.testing.assert_close(a.calculate_l0(), fresh(), rtol=1e-6, atol=0.0)
        opt = torch.optim.SGD(a.parameters(), lr=1.0)
        a.calculate_l0().backward()
        opt.step()  # theta changed, no forward since
        assert torch.equal(a.calculate_l0(), fresh())
        a(x)
        a.temperature = 10.0
        assert torch.equal(a.calculate_l0(), fresh())
        a(x)
        a.weight_mask_params = nn.Parameter(torch.zeros_like(a.weight_mask_params))
        assert torch.equal(a.calculate_l0(), fresh())
        a(x)
        a.eval()
        assert torch.equal(a.calculate_l0(), (a.weight_mask_params > 0).sum().float())
        a.train()
        twin = copy.deepcopy(a)  # the reused term is not copied (a non-leaf tensor)
        assert torch.equal(twin.calculate_l0(), fresh())
