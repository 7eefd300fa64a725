"""Eval-mode hard masks are computed once per theta and never served stale (modules/mask_parameter.py,
``MaskLayer._subnetworks``): theta lives in a ``MaskParameter``, which counts ``.data`` accesses,
the one kind of edit a version counter misses."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn
from _modules_zoo import example_input, mask_layer, suffix_of
from hypothesis import given, settings
from hypothesis import strategies as st

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.modules.mask_parameter import MaskParameter, data_accesses


def _fresh_output(layer, x):
    """What a twin with no derived state computes now (deepcopy drops every cache)."""
    with torch.no_grad():
        return copy.deepcopy(layer)(x)


@pytest.fixture
def hard_mask_calls(monkeypatch):
    """Count calls of the functional hard mask (the recomputation the cache must skip)."""
    calls = []
    original = F.hard_mask

    def counting(strategy, params, **kw):
        calls.append(params)
        return original(strategy, params, **kw)

    monkeypatch.setattr(F, "hard_mask", counting)
    return calls


def _theta_edits(layer):
    """Routes by which theta changes, each of which must invalidate the cached h. They flip
    signs, so h changes whatever the values were."""
    p = layer.weight_mask_params

    def optimizer_step():
        p.grad = 2 * p.detach()  # p - lr * grad = -p
        torch.optim.SGD([p], lr=1.0).step()
        p.grad = None

    def no_grad_in_place():
        with torch.no_grad():
            p.neg_()

    def data_in_place():
        p.data.neg_()

    def data_slice():
        p.data[0] = -p.data[0]

    def data_assigned():
        p.data = -p.data

    def detached_alias():
        with torch.no_grad():
            p.detach().neg_()  # shares the version counter

    def load_state_dict():
        sd = {k: v.clone() for k, v in layer.state_dict().items()}
        sd["weight_mask_params"] = -sd["weight_mask_params"]
        layer.load_state_dict(sd)

    def init_function():
        nn.init.constant_(p, 1.0 if float(p.detach().flatten()[0]) < 0 else -1.0)

    return [optimizer_step, no_grad_in_place, data_in_place, data_slice, data_assigned, detached_alias,
            load_state_dict, init_function]


EDIT_NAMES = [f.__name__ for f in _theta_edits(mask_layer("ContSparseLinear"))]


@pytest.mark.parametrize("name", ["ContSparseLinear", "HardConcreteGPTConv1D", "ContSparseConv2d"])
@pytest.mark.parametrize("mask_bias", [False, True])
def test_h_is_computed_once_while_theta_is_unchanged(name, mask_bias, hard_mask_calls):
    layer = mask_layer(name, mask_bias=mask_bias).eval()
    x = example_input(suffix_of(name))
    with torch.no_grad():
        first = layer(x)
        n = len(hard_mask_calls)
        assert n == (2 if mask_bias else 1)
        for _ in range(3):
            assert torch.equal(layer(x), first)
    assert len(hard_mask_calls) == n


@pytest.mark.parametrize("edit", EDIT_NAMES)
@pytest.mark.parametrize("name", ["ContSparseLinear", "HardConcreteConv1d"])
@pytest.mark.parametrize("ablation", ["none", "zero_ablate", "randomly_sampled"])
def test_every_edit_of_theta_is_seen(name, ablation, edit, hard_mask_calls):
    layer = mask_layer(name, ablation=ablation, key=4).eval()
    x = example_input(suffix_of(name))
    with torch.no_grad():
        before = layer(x)
    h_before = layer._h[2][0].clone()
    calls = len(hard_mask_calls)
    next(f for f in _theta_edits(layer) if f.__name__ == edit)()
    with torch.no_grad():
        after = layer(x)
    assert len(hard_mask_calls) == calls + 1  # recomputed, once
    assert not torch.equal(layer._h[2][0], h_before)
    assert torch.equal(after, _fresh_output(layer, x))
    assert not torch.equal(after, before)


def test_weight_edits_through_data_are_seen_without_recomputing_h(hard_mask_calls):
    # W * h is formed on every call: only h, a function of theta alone, is reused.
    layer = mask_layer("ContSparseLinear").eval()
    x = example_input("Linear")
    with torch.no_grad():
        layer(x)
        layer.weight.data.mul_(-3.0)
        layer.bias.data.fill_(0.5)
        out = layer(x)
    assert len(hard_mask_calls) == 1
    assert torch.equal(out, _fresh_output(layer, x))
    assert torch.equal(out, nn.functional.linear(x, layer.weight * (layer.weight_mask_params > 0), layer.bias))


def test_an_in_place_edit_of_the_returned_mask_does_not_leak_into_the_next_forward():
    layer = mask_layer("ContSparseLinear").eval()
    x = example_input("Linear")
    with torch.no_grad():
        expected = layer(x)
        layer.weight_mask.zero_()  # a view of the cached h: bumps its version
        assert torch.equal(layer(x), expected)
        assert int(layer.weight_mask.sum()) > 0


def test_settings_changes_are_seen(hard_mask_calls):
    layer = mask_layer("HardConcreteLinear").eval()
    x = example_input("Linear")
    with torch.no_grad():
        layer(x)
        layer.mask_unit = "neuron"  # new theta (a new tensor of another shape)
        out = layer(x)
        assert len(hard_mask_calls) == 2
        assert layer._h[2][0].shape == layer.weight_mask_params.shape
        assert torch.equal(out, _fresh_output(layer, x))


def test_nan_written_through_data_is_caught():
    # The NaN check runs once per version; the .data count makes it a new version.
    layer = mask_layer("ContSparseLinear").eval()
    x = example_input("Linear")
    with torch.no_grad():
        layer(x)
        layer.weight_mask_params.data[0, 0] = float("nan")
        with pytest.raises(ValueError, match="non-finite"):
            layer(x)


def test_fused_cs_l0_sees_edits_through_data():
    # Training: calculate_l0 reuses the forward's sum(sigma(beta theta)) only while theta is unchanged.
    layer = ns.ContSparseLinear(6, 4, key=0)
    layer(torch.randn(2, 6))
    layer.weight_mask_params.data.fill_(-2.0)
    expected = F.mask_l0("continuous_sparsification", layer.weight_mask_params, 24, hard=False, temperature=1.0)
    assert torch.allclose(layer.calculate_l0(), expected)
    assert float(expected.detach()) < 0.2 * 24


def test_a_plain_parameter_theta_is_recomputed_every_call(hard_mask_calls):
    # A theta that is not a MaskParameter (e.g. assigned by hand) cannot report .data edits: no cache.
    layer = mask_layer("ContSparseLinear").eval()
    layer.weight_mask_params = nn.Parameter(layer.weight_mask_params.detach().clone())
    x = example_input("Linear")
    with torch.no_grad():
        layer(x)
        layer.weight_mask_params.data.neg_()
        out = layer(x)
    assert len(hard_mask_calls) == 2 and layer._h is None
    assert torch.equal(out, _fresh_output(layer, x))


@settings(deadline=None, max_examples=25)
@given(st.lists(st.tuples(st.sampled_from(EDIT_NAMES + ["forward", "weight_data"]), st.integers(0, 3)), max_size=12),
       st.sampled_from(["ContSparseGPTConv1D", "HardConcreteConv2d"]))
def test_property_any_sequence_of_edits_and_forwards_matches_an_uncached_twin(ops, name):
    layer = mask_layer(name, ablation="none").eval()
    x = example_input(suffix_of(name))
    for op, n in ops:
        if op == "weight_data":
            layer.weight.data[(0,) * layer.weight.dim()] = float(n - 1)
        elif op != "forward":
            for _ in range(n % 2 + 1):  # one or two edits (two flips restore h, not the version)
                next(f for f in _theta_edits(layer) if f.__name__ == op)()
        with torch.no_grad():
            out = layer(x)
        assert torch.equal(out, _fresh_output(layer, x))
        assert torch.equal(layer.weight_mask, F.hard_mask(layer._strategy, layer.weight_mask_params).expand_as(layer.weight))


# -- MaskParameter itself -------------------------------------------------------------------------
def test_mask_parameter_counts_data_reads_and_assignments_only():
    p = ns.MaskParameter(torch.zeros(3))
    assert data_accesses(p) == 0 and data_accesses(nn.Parameter(torch.zeros(1))) is None
    with torch.no_grad():
        p.add_(1.0)
    _ = p * 2, p.detach(), p.grad, p.shape
    assert data_accesses(p) == 0
    p.data.add_(1.0)
    p.data = torch.ones(3)
    assert data_accesses(p) == 2 and torch.equal(p.detach(), torch.ones(3))


def test_mask_parameter_prints_and_saves_as_a_parameter():
    t = torch.arange(3.0)
    p = ns.MaskParameter(t.clone())
    assert repr(p) == repr(nn.Parameter(t.clone()))
    for copied in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert type(copied) is ns.MaskParameter and copied.requires_grad and torch.equal(copied.detach(), t)
    layer = mask_layer("ContSparseLinear")
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded.weight_mask_params) is ns.MaskParameter
    assert torch.equal(loaded.weight_mask_params, layer.weight_mask_params)
    # a state dict holds plain tensors (loadable anywhere, weights_only included)
    assert type(layer.state_dict()["weight_mask_params"]) is torch.Tensor
    assert type(layer.double().weight_mask_params) is ns.MaskParameter


def test_a_training_forward_frees_what_eval_forwards_cached():
    layer = mask_layer("ContSparseLinear", ablation="randomly_sampled")
    x = example_input("Linear")
    layer.eval()
    with torch.no_grad(), ns.cached_masks():
        layer(x)
    assert layer._h is not None and layer._cache is not None and layer._eff is not None
    layer.train()
    layer.ablation = "none"
    layer(x).sum().backward()
    assert layer._h is None and layer._cache is None and layer._eff is None
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(x), _fresh_output(layer, x))


@pytest.mark.parametrize("train", [True, False])
def test_dynamo_traces_a_layer_holding_mask_parameters_in_one_graph(train):
    # fullgraph=True: a graph break on the Parameter subclass would raise, not fall back.
    torch._dynamo.reset()
    layer = ns.ContSparseLinear(5, 4, key=0).train(train)
    mixed = mask_layer("ContSparseLinear")  # mixed-sign theta, so h is non-trivial
    with torch.no_grad():
        layer.weight_mask_params.copy_(mixed.weight_mask_params)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = example_input("Linear")
    assert torch.allclose(compiled(x), layer(x))
    layer.weight_mask_params.data.neg_()  # seen by the compiled call too (it reads theta afresh)
    with torch.no_grad():
        assert torch.allclose(compiled(x), layer(x))
    assert type(layer.weight_mask_params) is ns.MaskParameter


@pytest.mark.parametrize("name", ["ContSparseLinear", "HardConcreteGPTConv1D"])
def test_load_state_dict_with_assign_keeps_theta_a_mask_parameter(name, hard_mask_calls):
    # assign=True installs the checkpoint's own tensors; theta must come back as a MaskParameter
    # on that storage, so the hard mask is still cached and a later .data edit still seen.
    layer = mask_layer(name, mask_bias=True).eval()
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd["weight_mask_params"].neg_()
    layer.bias_mask_params.requires_grad_(False)
    layer.load_state_dict(sd, assign=True)
    for pname in ("weight_mask_params", "bias_mask_params"):
        p = getattr(layer, pname)
        assert isinstance(p, MaskParameter)
        assert p.data_ptr() == sd[pname].data_ptr()
    assert layer.weight_mask_params.requires_grad and not layer.bias_mask_params.requires_grad
    x = example_input(suffix_of(name))
    with torch.no_grad():
        layer(x)
        layer(x)
        assert len(hard_mask_calls) == 2  # weight and bias h, once for both calls
        layer.weight_mask_params.data.neg_()
        out = layer(x)
    assert len(hard_mask_calls) == 4
    assert torch.equal(out, _fresh_output(layer, x))


def test_load_state_dict_without_assign_keeps_a_plain_theta_object():
    # A theta the user installed as a plain Parameter (and an optimizer may hold) is copied
    # into, never replaced, by an ordinary load.
    layer = mask_layer("ContSparseLinear")
    theta = nn.Parameter(layer.weight_mask_params.detach().clone())
    layer.weight_mask_params = theta
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd["weight_mask_params"].neg_()
    layer.load_state_dict(sd)
    assert layer.weight_mask_params is theta and torch.equal(theta.detach(), sd["weight_mask_params"])
