"""Mask layers under torch.compile(fullgraph=True): no graph breaks, and the same output as eager.

The default run compiles one layer per strategy in train and eval mode with the ``aot_eager``
backend (Dynamo's graph capture and AOTAutograd are what graph breaks depend on; Inductor's code
generation costs ~30-60 s per graph on a 2-core machine). ``-m slow`` runs the full matrix and the
Inductor backend.
"""

import pytest
import torch
from _modules_zoo import ABLATIONS, cases, example_input, make_layer

EVAL_ABLATION = {"continuous_sparsification": "complement_sampled", "hard_concrete": "random_ablate",
                 "magnitude_pruning": "randomly_sampled"}
ONE_PER_STRATEGY = [pytest.param("continuous_sparsification", "linear", id="ContSparseLinear"),
                    pytest.param("hard_concrete", "gpt_conv1d", id="HardConcreteGPTConv1D"),
                    pytest.param("magnitude_pruning", "conv2d", id="MagPruneConv2d")]
# the full matrix: every class, both units for learned masks (magnitude pruning has weight units only)
MATRIX = [pytest.param(*c.values, unit, id=f"{c.id}-{unit}") for c in cases() for unit in ("weight", "neuron")
          if c.values[0] != "magnitude_pruning" or unit == "weight"]


def _check_compiled_equals_eager(strategy, kind, train, ablation, backend, **kwargs):
    layer = make_layer(strategy, kind, ablation=ablation, key=3, **kwargs).train(train)
    x = example_input(layer)
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    step = layer.noise_step.clone()
    y_compiled = compiled(x)
    assert torch.equal(layer.noise_step, step)  # a compiled forward mutates nothing
    y_eager = layer(x)  # the same step's noise, eagerly
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-6, atol=1e-6)
    return layer, compiled, x


def _ablations(strategy, train):
    if train and strategy != "magnitude_pruning":
        return ["none"]  # other ablations are an error while training
    return ABLATIONS


def _one_ablation(strategy, train):
    """The ablation a one-per-strategy case uses: none while training a learned mask."""
    return "none" if train and strategy != "magnitude_pruning" else EVAL_ABLATION[strategy]


@pytest.mark.parametrize("strategy,kind", ONE_PER_STRATEGY)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_compiled_fullgraph_equals_eager_one_layer_per_strategy(strategy, kind, train):
    _check_compiled_equals_eager(strategy, kind, train, _one_ablation(strategy, train), "aot_eager", mask_bias=True)


def test_compiled_training_step_gradients_equal_eager(make_layer):
    layer = make_layer("hard_concrete", "linear", key=4, mask_bias=True).train()
    x = example_input(layer)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    compiled(x).square().sum().backward()
    g_compiled = layer.weight_mask_params.grad.clone()
    layer.weight_mask_params.grad = None
    layer(x).square().sum().backward()  # the compiled step left the noise step where it was
    torch.testing.assert_close(g_compiled, layer.weight_mask_params.grad, rtol=1e-5, atol=1e-7)
    assert layer.weight.grad is not None  # the base weight is trainable here (not frozen)


def test_compiled_layer_resamples_when_key_changes(make_layer):
    layer = make_layer("continuous_sparsification", "linear", ablation="randomly_sampled", key=5).eval()
    x = example_input(layer)
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
@pytest.mark.parametrize("strategy,kind,unit", MATRIX)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_compiled_fullgraph_equals_eager_full_matrix(strategy, kind, unit, train):
    kwargs = {} if strategy == "magnitude_pruning" else dict(mask_unit=unit)
    for ablation in _ablations(strategy, train):
        torch._dynamo.reset()
        _check_compiled_equals_eager(strategy, kind, train, ablation, "aot_eager", mask_bias=True, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("strategy,kind", ONE_PER_STRATEGY)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_inductor_compiled_fullgraph_equals_eager(strategy, kind, train):
    _check_compiled_equals_eager(strategy, kind, train, _one_ablation(strategy, train), "inductor", mask_bias=True)


@pytest.mark.cuda
@pytest.mark.parametrize("strategy,kind", ONE_PER_STRATEGY)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_cuda_inductor_compiled_equals_eager(make_layer, strategy, kind, train):
    layer = make_layer(strategy, kind, ablation=_one_ablation(strategy, train), key=3).train(train).cuda()
    x = example_input(layer)
    compiled = torch.compile(layer, fullgraph=True)
    step = layer.noise_step.clone()
    y_compiled = compiled(x)
    with torch.no_grad():
        layer.noise_step.copy_(step)
    torch.testing.assert_close(y_compiled, layer(x), rtol=1e-5, atol=1e-5)


def test_compiled_vmap_over_keys_through_functional_call_equals_eager_loop(make_layer):
    from torch.func import functional_call, vmap

    from neurosurgeon.functional import random as nr

    layer = make_layer("hard_concrete", "linear", ablation="randomly_sampled", key=1).eval()
    x = example_input(layer)
    state = {**dict(layer.named_parameters()), **dict(layer.named_buffers())}

    def run(k):
        return functional_call(layer, {**state, "mask_key": k}, (x,))

    keys = nr.split(nr.key(0), 3)
    compiled = torch.compile(lambda ks: vmap(run)(ks), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(keys), torch.stack([run(k) for k in keys]), rtol=1e-6, atol=1e-6)
