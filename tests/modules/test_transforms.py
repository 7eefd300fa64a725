"""A layer's forward is a function of its parameters, buffers and input: under ``torch.func``
(``functional_call``, ``grad``, ``jacrev``, ``vmap`` over keys) every class gives its eager output
and module autograd's gradients, in both modes, and mutates nothing."""

import pytest
import torch
from _modules_zoo import cases, example_input
from torch.func import functional_call, grad, jacrev, vmap

from neurosurgeon.functional import random as nr

ALL = cases()
K = 4


def assert_same_draws(batched, looped):
    """vmap == loop. Binary masks and integer draws must match exactly; float outputs may differ
    by an ulp only (batched matmul and SIMD tails round differently), far below any change of draw."""
    if batched.dtype.is_floating_point and not ((looped == 0) | (looped == 1)).all():
        torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(batched, looped)


def _state(layer):
    return {**dict(layer.named_parameters()), **dict(layer.named_buffers())}


def _fresh_step():
    return torch.zeros((), dtype=torch.int64)


@pytest.mark.parametrize("strategy,kind", ALL)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_functional_call_equals_module_call(make_layer, strategy, kind, mode):
    layer = make_layer(strategy, kind, mask_bias=True, key=1).train(mode == "train")
    if mode == "eval":
        layer.ablation = "random_ablate"
    x = example_input(layer)
    state = {k: v.clone() for k, v in _state(layer).items()}
    y = functional_call(layer, state, (x,))
    assert torch.equal(y, layer(x))


@pytest.mark.parametrize("strategy,kind", [("continuous_sparsification", "linear"), ("hard_concrete", "gpt_conv1d"),
                                           ("magnitude_pruning", "conv1d"), ("hard_concrete", "conv2d")])
@pytest.mark.parametrize("ablation", ["random_ablate", "randomly_sampled", "complement_sampled"])
def test_vmap_over_mask_keys_through_functional_call_equals_loop(make_layer, strategy, kind, ablation):
    layer = make_layer(strategy, kind, ablation=ablation, mask_bias=True, key=2).eval()
    x = example_input(layer)
    state = _state(layer)
    keys = nr.split(nr.key(3), K)

    def run(k):
        return functional_call(layer, {**state, "mask_key": k}, (x,))

    batched = vmap(run)(keys)
    looped = torch.stack([run(k) for k in keys])
    assert_same_draws(batched, looped)
    assert not torch.equal(looped[0], looped[1])  # different keys, different baselines


@pytest.mark.parametrize("strategy,kind", cases(["hard_concrete"]))
def test_vmap_over_keys_of_hard_concrete_training_noise_equals_loop(make_layer, strategy, kind):
    layer = make_layer(strategy, kind, key=2).train()
    x = example_input(layer)
    state = _state(layer)
    keys = nr.split(nr.key(4), K)

    def run(k):
        return functional_call(layer, {**state, "mask_key": k, "noise_step": _fresh_step()}, (x,))

    assert_same_draws(vmap(run)(keys), torch.stack([run(k) for k in keys]))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("strategy,kind", ALL)
def test_grad_through_functional_call_equals_module_autograd_and_mutates_nothing(make_layer, strategy, kind, train):
    layer = make_layer(strategy, kind, key=7, mask_bias=True).train(train)
    x = example_input(layer)
    # magnitude pruning has no theta: differentiate through its masked weight and bias instead
    learned = strategy != "magnitude_pruning"
    names = ("weight_mask_params", "bias_mask_params") if learned else ("weight", "bias")
    params = [getattr(layer, n).requires_grad_(True) for n in names]
    g = torch.Generator().manual_seed(0)
    values = [torch.rand(p.shape, generator=g).to(p.dtype) * 2 - 1 for p in params]
    before = {k: v.clone() for k, v in _state(layer).items()}

    def loss(*tensors):
        return functional_call(layer, dict(zip(names, tensors)), (x,)).square().sum()

    grads = grad(loss, argnums=(0, 1))(*values)
    assert all(torch.equal(before[k], v) for k, v in _state(layer).items())  # noise step, key: untouched
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
            p.grad = None
    layer(x).square().sum().backward()  # the eager forward draws the same step's noise
    if learned and not train:  # a hard mask has no gradient in theta
        assert all(p.grad is None for p in params) and all(torch.count_nonzero(gr) == 0 for gr in grads)
        return
    for gr, p in zip(grads, params):
        torch.testing.assert_close(gr, p.grad, rtol=1e-5, atol=1e-6)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("strategy,kind", [("hard_concrete", "linear"), ("continuous_sparsification", "gpt_conv1d"),
                                           ("hard_concrete", "conv2d")])
def test_jacrev_through_functional_call_matches_grad_of_each_output(make_layer, strategy, kind):
    layer = make_layer(strategy, kind, key=1).train()
    x = example_input(layer, batch=1)
    theta = layer.weight_mask_params.detach().clone()

    def out(t):
        return functional_call(layer, {"weight_mask_params": t}, (x,)).sum(dim=0).reshape(-1)[:2]

    jac = jacrev(out)(theta)
    for i in range(2):
        torch.testing.assert_close(jac[i], grad(lambda t: out(t)[i])(theta))


def test_eager_training_forward_advances_the_hard_concrete_step_and_transforms_do_not(make_layer):
    layer = make_layer("hard_concrete", "linear", key=3).train()
    x = example_input(layer)
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


def test_vmap_of_grad_over_keys_gives_per_key_gradients(make_layer):
    layer = make_layer("hard_concrete", "linear", key=9).train()
    x = example_input(layer)
    state = {k: v.detach() for k, v in _state(layer).items()}

    def loss(wp, k):
        return functional_call(layer, {**state, "weight_mask_params": wp, "mask_key": k,
                                       "noise_step": _fresh_step()}, (x,)).sum()

    keys = nr.split(nr.key(10), 3)
    batched = vmap(grad(loss), in_dims=(None, 0))(state["weight_mask_params"], keys)
    looped = torch.stack([grad(loss)(state["weight_mask_params"], k) for k in keys])
    torch.testing.assert_close(batched, looped)
