"""Mask units are checked once, with one kind of error: a unit a strategy does not support or a
pattern that does not fit is a ValueError naming the pattern, the weight's shape and the
reason, the same from the functional core as from the shells; per-unit masks come back from
weight-shaped ones; renamed knobs still work, with a warning; a forward's error names its layer."""

from collections import OrderedDict

import einops
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import neurosurgeon as ns
import neurosurgeon.functional as F

W = torch.randn(6, 4)


@pytest.mark.parametrize("unit", ["neuron", "(h d) i -> h", "o i -> o 1"])
def test_magnitude_pruning_refuses_any_unit_but_weight_in_the_core_as_in_the_shells(unit):
    sizes = {"h": 2} if "h" in unit else None
    with pytest.raises(ValueError) as core:
        F.mask_parameters(W, None, W, None, None, strategy="magnitude_pruning", kind="linear", hard=True,
                          mask_unit=unit, unit_sizes=sizes)
    with pytest.raises(ValueError) as shell:
        ns.MagPruneLinear(4, 6, mask_unit=unit, unit_sizes=sizes)
    assert type(core.value) is ValueError and str(core.value) == str(shell.value)
    assert "mask_unit" in str(core.value) and repr(unit) in str(core.value) and "'weight'" in str(core.value)


BAD_PATTERNS = [
    ("o i -> o (", None),  # unbalanced
    ("o i -> x", None),  # an axis the weight does not have
    ("o i k -> o", None),  # too many weight axes
    ("(h d) i -> h", {"h": 4}),  # 6 rows do not split into 4 heads
    ("(h d) i -> h", None),  # h and d both unknown
    ("o i -> o", {"q": 2}),  # a size for an axis the pattern lacks
]


@pytest.mark.parametrize("pattern,sizes", BAD_PATTERNS)
def test_a_pattern_that_does_not_fit_is_a_value_error_naming_pattern_shape_and_reason(pattern, sizes):
    calls = [
        lambda: F.unit_shape(W.shape, pattern, sizes),
        lambda: F.expand_mask(torch.ones(2), W.shape, pattern, sizes),
        lambda: F.reduce_mask(torch.ones(6, 4), W.shape, pattern, sizes),
        lambda: F.mask_parameters(W, None, torch.ones(2), None, None, strategy="continuous_sparsification",
                                  kind="linear", hard=True, mask_unit=pattern, unit_sizes=sizes),
        lambda: ns.ContSparseLinear(4, 6, mask_unit=pattern, unit_sizes=sizes),
    ]
    for call in calls:
        with pytest.raises(ValueError) as e:
            call()
        assert not isinstance(e.value, einops.EinopsError)
        message = str(e.value)
        assert pattern in message and "(6, 4)" in message and message.rsplit(":", 1)[-1].strip(), message


def test_a_shells_mask_unit_setter_checks_once_and_changes_nothing_on_error():
    layer = ns.ContSparseLinear(4, 6, mask_unit="(h d) i -> h", unit_sizes={"h": 2}, key=0)
    theta = layer.weight_mask_params
    with pytest.raises(ValueError, match="o i k"):
        layer.mask_unit = "o i k -> o"
    assert layer.mask_unit == "(h d) i -> h" and layer.weight_mask_params is theta


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_reduce_mask_inverts_expand_mask_for_head_units(heads, per_head, inputs, seed):
    g = torch.Generator().manual_seed(seed)
    shape, pattern, sizes = (heads * per_head, inputs), "(h d) i -> h", {"h": heads}
    mask = (torch.rand(heads, generator=g) > 0.5).float()
    expanded = F.expand_mask(mask, shape, pattern, sizes)
    assert expanded.shape == shape
    assert torch.equal(F.reduce_mask(expanded, shape, pattern, sizes), mask)


def test_per_unit_masks_of_a_layers_masked_parameters_are_its_subnetwork_per_head():
    torch.manual_seed(0)
    layer = ns.ContSparseLinear(5, 8, mask_unit="(h d) i -> h", unit_sizes={"h": 4}, key=0).eval()
    with torch.no_grad():
        layer.weight_mask_params.copy_(torch.tensor([1.0, -1.0, 2.0, -3.0]))
    p = layer.masked_parameters()
    assert p.weight_mask.shape == (8, 5)
    per_head = F.reduce_mask(p.weight_mask, (8, 5), layer.mask_unit, layer.unit_sizes)
    assert per_head.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_hard_concretes_old_stretch_names_still_work_with_a_deprecation_warning():
    theta = torch.tensor([-0.5, 0.0, 0.3, 1.0])
    want = F.hard_concrete_hard_mask(theta, left_stretch=-0.5, right_stretch=1.2)
    with pytest.warns(DeprecationWarning) as caught:
        got = F.hard_concrete_hard_mask(theta, left=-0.5, right=1.2)
    assert [str(w.message).split("is now ")[1] for w in caught] == ["'left_stretch'", "'right_stretch'"]
    assert torch.equal(got, want) and not torch.equal(want, F.hard_concrete_hard_mask(theta))
    with pytest.warns(DeprecationWarning, match="right_stretch"):
        h = F.hard_mask("hard_concrete", theta, left_stretch=-0.5, right=1.2)
    assert torch.equal(h, want)


def test_an_impossible_sampled_ablation_names_the_layer_in_the_forwards_error():
    model = nn.Sequential(OrderedDict(encoder=nn.Linear(4, 6), head=nn.Linear(6, 2)))
    layers = ns.inject_masks(model, nn.Linear, key=0, mask_init_value=1.0)  # everything kept: nothing outside
    model.eval()
    layers["head"].ablation = "complement_sampled"  # set on the layer itself, past set_ablation's check
    with pytest.raises(ValueError, match=r"(?s)^head \(ContSparseLinear, weight \(2, 6\)\):.*complement"):
        model(torch.randn(3, 4))
