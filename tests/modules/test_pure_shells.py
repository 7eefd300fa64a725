"""A layer's forward is a function of its parameters, buffers and input: ``grad``/``jacrev``
through ``functional_call`` work for every class in both modes, give module autograd's
gradients, and mutate nothing."""

import pytest
import torch
from _modules_zoo import ALL_CLASSES, example_input, mask_layer, suffix_of
from torch.func import functional_call, grad, jacrev, vmap

from neurosurgeon.functional import random as nr



def _state(layer):
    return {k: v.clone() for k, v in (*layer.named_parameters(), *layer.named_buffers())}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ALL_CLASSES)
def test_grad_through_functional_call_equals_module_autograd_and_mutates_nothing(name, train):
    layer = mask_layer(name, key=7, mask_bias=True).train(train)
    x = example_input(suffix_of(name))
    # magnitude pruning has no theta: differentiate through its masked weight instead
    pname = "weight" if name.startswith("MagPrune") else "weight_mask_params"
    param = getattr(layer, pname)
    param.requires_grad_(True)
    theta = param.detach().clone().uniform_(-1.0, 1.0)
    before = _state(layer)

    def loss(t):
        return functional_call(layer, {pname: t}, (x,)).square().sum()

    g = grad(loss)(theta)
    after = _state(layer)
    assert all(torch.equal(before[k], after[k]) for k in before)  # noise step, key: untouched
    with torch.no_grad():
        param.copy_(theta)
    param.grad = None
    out = layer(x).square().sum()  # the eager forward draws the same step's noise
    if not train and pname == "weight_mask_params":
        out.backward()
        assert param.grad is None and torch.count_nonzero(g) == 0  # a hard mask has no gradient in theta
        return
    out.backward()
    torch.testing.assert_close(g, param.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["HardConcreteLinear", "ContSparseGPTConv1D", "HardConcreteConv2d"])
def test_jacrev_through_functional_call_matches_grad_of_each_output(name):
    layer = mask_layer(name, key=1).train()
    x = example_input(suffix_of(name), batch=1)
    theta = layer.weight_mask_params.detach().clone()

    def out(t):
        return functional_call(layer, {"weight_mask_params": t}, (x,)).sum(dim=0).reshape(-1)[:2]

    jac = jacrev(out)(theta)
    for i in range(2):
        torch.testing.assert_close(jac[i], grad(lambda t: out(t)[i])(theta))


def test_eager_training_forward_advances_the_hard_concrete_step_and_transforms_do_not():
    layer = mask_layer("HardConcreteLinear", key=3).train()
    x = example_input("Linear")
    y0 = layer(x)
    assert int(layer.noise_step) == 1
    y1 = layer(x)
    assert int(layer.noise_step) == 2 and not torch.equal(y0, y1)  # fresh noise each step
    theta = layer.weight_mask_params.detach()
    grad(lambda t: functional_call(layer, {"weight_mask_params": t}, (x,)).sum())(theta)
    vmap(lambda t: functional_call(layer, {"weight_mask_params": t}, (x,)))(theta.expand(3, *theta.shape))
    assert int(layer.noise_step) == 2
    with torch.no_grad():
        layer.noise_step.fill_(0)
    assert torch.equal(layer(x), y0)  # the step alone decides the noise


def test_vmap_over_keys_through_functional_call_equals_a_loop():
    layer = mask_layer("ContSparseLinear", key=0, ablation="randomly_sampled").eval()
    with torch.no_grad():
        layer.weight_mask_params.uniform_(-1, 0.3)
    x = example_input("Linear")
    keys = nr.split(nr.key(5), 4)
    out = vmap(lambda k: functional_call(layer, {"mask_key": k}, (x,)))(keys)
    for i, k in enumerate(keys):
        torch.testing.assert_close(out[i], functional_call(layer, {"mask_key": k}, (x,)))
