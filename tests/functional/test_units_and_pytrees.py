"""Mask units as einops patterns (heads included), and MaskedParameters as a vmap-returnable pytree."""

import pytest
import torch
from torch.func import vmap

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional import random as nr

HEADS = "(h d) i -> h"


@pytest.mark.parametrize("kind, w_shape, neuron", [
    ("linear", (5, 7), (5, 1)),
    ("gpt_conv1d", (7, 5), (1, 5)),  # GPT-2's Conv1D weight is (in, out)
    ("conv1d", (5, 2, 3), (5, 1, 1)),
    ("conv2d", (5, 2, 3, 4), (5, 1, 1, 1)),
])
def test_weight_units_are_the_weight_and_neuron_units_one_per_output(kind, w_shape, neuron):
    assert F.unit_shape(w_shape, "weight", kind=kind) == w_shape
    assert F.unit_shape(w_shape, "neuron", kind=kind) == neuron
    assert F.unit_shape(w_shape[:2], "neuron") == (w_shape[0], 1)  # the kind defaults to linear


def test_unit_shapes_of_patterns():
    assert F.unit_shape((12, 8), HEADS, {"h": 3}) == (3,)
    assert F.unit_shape((8, 24), "i (qkv h d) -> qkv h", {"qkv": 3, "h": 2}, kind="gpt_conv1d") == (3, 2)


@pytest.mark.parametrize("pattern, sizes, reason", [
    ("(h d) i -> h", {"h": 5}, "(12, 8)"),  # 12 heads' rows do not split into 5
    ("(h d) i -> h", None, "(h d) i -> h"),  # h unknown
    ("o i k -> o", None, "(12, 8)"),  # three axes for a 2-d weight
    ("not a pattern", None, "not a pattern"),
])
def test_a_bad_pattern_names_the_pattern_and_the_weights_shape(pattern, sizes, reason):
    with pytest.raises(ValueError, match="mask_unit") as e:
        F.unit_shape((12, 8), pattern, sizes)
    assert reason in str(e.value)


def test_expand_mask_repeats_each_head_over_its_rows():
    m = torch.tensor([1.0, 0.0, 1.0])
    w = F.expand_mask(m, (12, 8), HEADS, {"h": 3})
    assert w.shape == (12, 8)
    assert torch.equal(w[:4], torch.ones(4, 8)) and torch.equal(w[4:8], torch.zeros(4, 8))


def test_head_masks_gate_whole_heads_and_l0_counts_the_weights_gated():
    layer = ns.ContSparseLinear(8, 12, key=0, mask_unit=HEADS, unit_sizes={"h": 3})
    with torch.no_grad():
        layer.weight_mask_params.copy_(torch.tensor([1.0, -1.0, 1.0]))
    layer.eval()
    x = torch.randn(2, 8)
    y = layer(x)
    assert torch.equal(y[:, 4:8], layer.bias[4:8].expand(2, 4))  # head 1 removed: only its bias is left
    assert float(layer.calculate_l0()) == 2 * 4 * 8
    assert tuple(layer.state_dict()["weight_mask_params"].shape) == (3,)  # theta saved at unit shape


@pytest.mark.parametrize("ablation", ["randomly_sampled", "complement_sampled"])
def test_sampled_ablations_remove_whole_heads_under_vmap_as_in_a_loop(ablation):
    layer = ns.ContSparseGPTConv1D(24, 8, key=0, mask_unit="i (qkv h d) -> qkv h", unit_sizes={"qkv": 3, "h": 2},
                                   ablation=ablation)
    with torch.no_grad():
        layer.weight_mask_params.copy_(torch.tensor([[1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]]))
    layer.eval()
    keys = nr.split(nr.key(4), 5)
    def mask_of(k):
        return F.mask_parameters(layer.weight, None, layer.weight_mask_params, None, k, strategy=layer.strategy,
                                 kind="gpt_conv1d", hard=True, ablation=ablation, mask_unit=layer.mask_unit,
                                 unit_sizes=layer.unit_sizes).weight_mask

    masks = vmap(mask_of)(keys)
    for i, k in enumerate(keys):
        loop = mask_of(k)
        assert torch.equal(masks[i], loop)
        units = loop.reshape(8, 3, 2, 4)  # (in, qkv, h, d)
        per_unit = units.amin(dim=(0, 3))
        assert torch.equal(units.amax(dim=(0, 3)), per_unit)  # each (qkv, head) all kept or all removed
        assert int((per_unit == 0).sum()) == 1  # one unit in the subnetwork: one removed
        if ablation == "complement_sampled":
            assert per_unit[0, 0] == 1  # never the subnetwork's own head


def test_vmap_returns_masked_parameters_with_absent_masks():
    w, theta = torch.randn(4, 3), torch.randn(4, 3)
    keys = nr.split(nr.key(0), 3)
    out = vmap(lambda k: F.mask_parameters(w, None, theta, None, k, strategy="hard_concrete", kind="linear",
                                           hard=False))(keys)
    assert isinstance(out, F.MaskedParameters) and out.bias is None and out.bias_mask is None
    assert out.weight.shape == (3, 4, 3) and out.weight_mask.shape == (3, 4, 3)
    for i, k in enumerate(keys):
        torch.testing.assert_close(out.weight[i], F.mask_parameters(w, None, theta, None, k, strategy="hard_concrete",
                                                                    kind="linear", hard=False).weight)
