"""Mask layers under torch.compile(fullgraph=True): no graph breaks, and the same output as eager.

The default run compiles one layer per strategy in train and eval mode with the ``aot_eager``
backend (Dynamo's graph capture and AOTAutograd are what graph breaks depend on; Inductor's code
generation costs ~30-60 s per graph on a 2-core machine). ``-m slow`` runs the full matrix and the
Inductor backend.
"""

import pytest
import torch
from _modules_zoo import ABLATIONS, ALL_CLASSES, example_input, mask_layer, suffix_of

EVAL_ABLATION = {"ContSparse": "complement_sampled", "HardConcrete": "random_ablate", "MagPrune": "randomly_sampled"}
ONE_PER_STRATEGY = ["ContSparseLinear", "HardConcreteGPTConv1D", "MagPruneConv2d"]


def _check_compiled_equals_eager(name, train, ablation, backend, **kwargs):
    layer = mask_layer(name, ablation=ablation, key=3, **kwargs).train(train)
    x = example_input(suffix_of(name))
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    step = layer.noise_step.clone()
    y_compiled = compiled(x)
    assert torch.equal(layer.noise_step, step)  # a compiled forward mutates nothing
    y_eager = layer(x)  # the same step's noise, eagerly
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-6, atol=1e-6)
    return layer, compiled, x


def _ablations(name, train):
    if train and not name.startswith("MagPrune"):
        return ["none"]  # other ablations are an error while training
    return ABLATIONS


def _one_ablation(name, train):
    """The ablation a one-per-strategy case uses: none while training a learned mask."""
    strategy = next(s for s in EVAL_ABLATION if name.startswith(s))
    return "none" if train and strategy != "MagPrune" else EVAL_ABLATION[strategy]


@pytest.mark.parametrize("name", ONE_PER_STRATEGY)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_compiled_fullgraph_equals_eager_one_layer_per_strategy(name, train):
    ablation = _one_ablation(name, train)
    _check_compiled_equals_eager(name, train, ablation, "aot_eager", mask_bias=True)


def test_compiled_training_step_gradients_equal_eager():
    layer = mask_layer("HardConcreteLinear", key=4, mask_bias=True).train()
    x = example_input("Linear")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    compiled(x).square().sum().backward()
    g_compiled = layer.weight_mask_params.grad.clone()
    layer.weight_mask_params.grad = None
    layer(x).square().sum().backward()  # the compiled step left the noise step where it was
    torch.testing.assert_close(g_compiled, layer.weight_mask_params.grad, rtol=1e-5, atol=1e-7)
    assert layer.weight.grad is not None  # the base weight is trainable here (not frozen)


def test_compiled_layer_resamples_when_key_changes():
    layer = mask_layer("ContSparseLinear", ablation="randomly_sampled", key=5).eval()
    x = example_input("Linear")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y1 = compiled(x)
    torch.testing.assert_close(compiled(x), y1)
    layer.force_resample = True
    torch.testing.assert_close(compiled(x), y1)  # a compiled forward mutates nothing: still pending
    assert layer.force_resample
    y2 = layer(x)  # the next eager forward moves the key
    assert not layer.force_resample and not torch.allclose(y1, y2)
    torch.testing.assert_close(compiled(x), y2)  # the compiled graph reads the new key


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_CLASSES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("unit", ["weight", "neuron"])
def test_compiled_fullgraph_equals_eager_full_matrix(name, train, unit):
    if name.startswith("MagPrune") and unit == "neuron":
        pytest.skip("magnitude pruning has weight units only")
    kwargs = {} if name.startswith("MagPrune") else dict(mask_unit=unit)
    for ablation in _ablations(name, train):
        torch._dynamo.reset()
        _check_compiled_equals_eager(name, train, ablation, "aot_eager", mask_bias=True, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", ONE_PER_STRATEGY)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_inductor_compiled_fullgraph_equals_eager(name, train):
    ablation = _one_ablation(name, train)
    _check_compiled_equals_eager(name, train, ablation, "inductor", mask_bias=True)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ONE_PER_STRATEGY)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_cuda_inductor_compiled_equals_eager(name, train):
    ablation = _one_ablation(name, train)
    layer = mask_layer(name, ablation=ablation, key=3).train(train).cuda()
    x = example_input(suffix_of(name)).cuda()
    compiled = torch.compile(layer, fullgraph=True)
    step = layer.noise_step.clone()
    y_compiled = compiled(x)
    with torch.no_grad():
        layer.noise_step.copy_(step)
    torch.testing.assert_close(y_compiled, layer(x), rtol=1e-5, atol=1e-5)


def test_compiled_vmap_over_keys_through_functional_call_equals_eager_loop():
    from torch.func import functional_call, vmap

    from neurosurgeon.functional import random as nr

    layer = mask_layer("HardConcreteLinear", ablation="randomly_sampled", key=1).eval()
    x = example_input("Linear")
    state = {**dict(layer.named_parameters()), **dict(layer.named_buffers())}

    def run(k):
        return functional_call(layer, {**state, "mask_key": k}, (x,))

    keys = nr.split(nr.key(0), 3)
    compiled = torch.compile(lambda ks: vmap(run)(ks), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(keys), torch.stack([run(k) for k in keys]), rtol=1e-6, atol=1e-6)
