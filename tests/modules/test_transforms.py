"""Mask layers and the functional core under torch.func: functional_call, vmap over keys, grad."""

import pytest
import torch
from _modules_zoo import ALL_CLASSES, SUFFIXES, example_input, mask_layer, suffix_of
from torch.func import functional_call, grad, vmap

import neurosurgeon.functional as F
from neurosurgeon.functional import random as nr
from neurosurgeon.functional import reinit as FR

LEARNED_CLASSES = [s + x for s in ("ContSparse", "HardConcrete") for x in SUFFIXES]
K = 4


def assert_same_draws(batched, looped):
    """vmap == loop. Binary masks and integer draws must match exactly; float outputs may differ
    by an ulp only (batched matmul and SIMD tails round differently), far below any change of draw."""
    if batched.dtype.is_floating_point and not ((looped == 0) | (looped == 1)).all():
        torch.testing.assert_close(batched, looped, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(batched, looped)


def _state(layer):
    return {**dict(layer.named_parameters()), **dict(layer.named_buffers())}


def _fresh_step():
    return torch.zeros((), dtype=torch.int64)


@pytest.mark.parametrize("name", ALL_CLASSES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_functional_call_equals_module_call(name, mode):
    layer = mask_layer(name, mask_bias=True, key=1).train(mode == "train")
    if mode == "eval":
        layer.ablation = "random_ablate"
    x = example_input(suffix_of(name))
    state = {k: v.clone() for k, v in _state(layer).items()}
    y = functional_call(layer, state, (x,))
    assert torch.equal(y, layer(x))


@pytest.mark.parametrize("name", ["ContSparseLinear", "HardConcreteGPTConv1D", "MagPruneConv1d", "HardConcreteConv2d"])
@pytest.mark.parametrize("ablation", ["random_ablate", "randomly_sampled", "complement_sampled"])
def test_vmap_over_mask_keys_through_functional_call_equals_loop(name, ablation):
    layer = mask_layer(name, ablation=ablation, mask_bias=True, key=2).eval()
    x = example_input(suffix_of(name))
    state = _state(layer)
    keys = nr.split(nr.key(3), K)

    def run(k):
        return functional_call(layer, {**state, "mask_key": k}, (x,))

    batched = vmap(run)(keys)
    looped = torch.stack([run(k) for k in keys])
    assert_same_draws(batched, looped)
    assert not torch.equal(looped[0], looped[1])  # different keys, different baselines


@pytest.mark.parametrize("name", [n for n in LEARNED_CLASSES if n.startswith("HardConcrete")])
def test_vmap_over_keys_of_hard_concrete_training_noise_equals_loop(name):
    layer = mask_layer(name, key=2).train()
    x = example_input(suffix_of(name))
    state = _state(layer)
    keys = nr.split(nr.key(4), K)

    def run(k):
        return functional_call(layer, {**state, "mask_key": k, "noise_step": _fresh_step()}, (x,))

    assert_same_draws(vmap(run)(keys), torch.stack([run(k) for k in keys]))


def test_vmap_directly_on_functional_samplers_and_reinit_equals_loop():
    keys = nr.split(nr.key(5), 6)
    h = (torch.randn(7, 3) > 0.5).float()
    theta = torch.randn(7, 3)
    w = torch.empty(7, 3)
    fns = [
        lambda k: F.randomly_sampled_mask(k, h),
        lambda k: F.complement_sampled_mask(k, h),
        lambda k: F.hard_concrete_mask(theta, k),
        lambda k: FR.reinit_weight(k, "linear", w),
        lambda k: FR.reinit_weight(k, "gpt_conv1d", w),
        lambda k: FR.reinit_bias(k, "conv1d", torch.empty(7, 3, 2), torch.empty(7)),
        lambda k: F.ablate(h, k, ablation="randomly_sampled"),
        lambda k: F.mask_parameters(w, None, theta, None, k, strategy="hard_concrete", kind="linear", hard=True,
                                    ablation="complement_sampled").weight_mask,
    ]
    for fn in fns:
        assert_same_draws(vmap(fn)(keys), torch.stack([fn(k) for k in keys]))


def test_vmap_over_batched_subnetworks_equals_loop():
    hs = (torch.rand(5, 12) < 0.3).float()
    keys = nr.split(nr.key(6), 5)
    for fn in (F.randomly_sampled_mask, F.complement_sampled_mask):
        batched = vmap(fn)(keys, hs)
        assert torch.equal(batched, torch.stack([fn(k, h) for k, h in zip(keys, hs)]))
        assert torch.equal((batched == 0).sum(1), hs.sum(1).long())


@pytest.mark.parametrize("name", LEARNED_CLASSES)
def test_func_grad_of_loss_wrt_mask_params_equals_autograd(name):
    layer = mask_layer(name, mask_bias=True, key=7).train()
    x = example_input(suffix_of(name))
    state = {k: v.detach() for k, v in _state(layer).items()}

    def loss(wp, bp):
        out = functional_call(layer, {**state, "weight_mask_params": wp, "bias_mask_params": bp,
                                      "noise_step": _fresh_step()}, (x,))
        return out.square().sum()

    gw, gb = grad(loss, argnums=(0, 1))(state["weight_mask_params"], state["bias_mask_params"])
    with torch.no_grad():
        layer.noise_step.zero_()
    layer(x).square().sum().backward()
    torch.testing.assert_close(gw, layer.weight_mask_params.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gb, layer.bias_mask_params.grad, rtol=1e-5, atol=1e-7)
    assert gw.abs().sum() > 0


def test_func_grad_through_functional_soft_masks_equals_autograd():
    theta = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(4, 5)
    k = nr.key(8)

    def loss(t):
        return F.mask_parameters(w, None, t, None, k, strategy="hard_concrete", kind="linear",
                                 hard=False, temperature=2 / 3).weight.sum()

    g = grad(loss)(theta.detach())
    loss(theta).backward()
    torch.testing.assert_close(g, theta.grad)


def test_vmap_of_grad_over_keys_gives_per_key_gradients():
    layer = mask_layer("HardConcreteLinear", key=9).train()
    x = example_input("Linear")
    state = {k: v.detach() for k, v in _state(layer).items()}

    def loss(wp, k):
        return functional_call(layer, {**state, "weight_mask_params": wp, "mask_key": k,
                                       "noise_step": _fresh_step()}, (x,)).sum()

    keys = nr.split(nr.key(10), 3)
    batched = vmap(grad(loss), in_dims=(None, 0))(state["weight_mask_params"], keys)
    looped = torch.stack([grad(loss)(state["weight_mask_params"], k) for k in keys])
    torch.testing.assert_close(batched, looped)
