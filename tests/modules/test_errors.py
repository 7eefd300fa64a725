"""Bad input to the mask layers: ValueError/TypeError naming the parameter, the value and what is
allowed; a rejected setter leaves the layer as it was; non-finite mask parameters are reported
(with the layer's name) where a mask is made hard, never binarised to zeros."""

from __future__ import annotations

import re

import pytest
import torch
from _modules_zoo import LEARNED, base_layer, cases, example_input, layer_class

import neurosurgeon as ns

NAN, INF = float("nan"), float("inf")
ALL = cases()
LEARNED_CASES = cases(LEARNED)
WITH_OPTIONAL_BIAS = cases(kinds=("linear", "conv1d", "conv2d"))  # GPT-2's Conv1D always has a bias


def names_value(*parts) -> str:
    """A regex requiring every part (escaped) to appear in the message, in any order."""
    return "".join(f"(?=[\\s\\S]*{re.escape(str(p))})" for p in parts)


# -- constructors --------------------------------------------------------------------------------

COMMON_BAD = [
    ("ablation", "zero", ValueError, ("ablation", "'zero'", "none", "zero_ablate", "random_ablate", "complement_sampled")),
    ("ablation", None, TypeError, ("ablation", "None")),
    ("mask_bias", "yes", TypeError, ("mask_bias", "'yes'", "bool")),
    ("key", torch.zeros(3, dtype=torch.int64), ValueError, ("key", "(3,)", "(2,)")),
    ("key", torch.zeros(2), ValueError, ("key", "torch.float32", "int64")),
    ("key", "seed", TypeError, ("key", "str")),
]
STRATEGY_BAD = {
    "continuous_sparsification": [
        ("mask_unit", "neurons", ValueError, ("mask_unit", "'neurons'", "weight", "neuron")),
        ("temperature", 0.0, ValueError, ("temperature", "0.0", "> 0")),
        ("temperature", -1.0, ValueError, ("temperature", "-1.0", "> 0")),
        ("temperature", NAN, ValueError, ("temperature", "nan", "finite")),
        ("temperature", INF, ValueError, ("temperature", "inf", "finite")),
        ("temperature", "1", TypeError, ("temperature", "'1'")),
        ("mask_init_value", NAN, ValueError, ("mask_init_value", "nan", "finite")),
    ],
    "hard_concrete": [
        ("mask_unit", "all", ValueError, ("mask_unit", "'all'", "weight", "neuron")),
        ("mask_init_percentage", 1.5, ValueError, ("mask_init_percentage", "1.5", "[0, 1]")),
        ("mask_init_percentage", -0.1, ValueError, ("mask_init_percentage", "-0.1", "[0, 1]")),
        ("mask_init_percentage", NAN, ValueError, ("mask_init_percentage", "nan", "[0, 1]")),
        ("temperature", 0.0, ValueError, ("temperature", "0.0", "> 0")),
        ("temperature", INF, ValueError, ("temperature", "inf", "finite")),
        ("left_stretch", 0.1, ValueError, ("left_stretch", "0.1", "< 0")),
        ("right_stretch", 0.9, ValueError, ("right_stretch", "0.9", "> 1")),
    ],
    "magnitude_pruning": [
        ("prune_percentage", 1.01, ValueError, ("prune_percentage", "1.01", "[0, 1]")),
        ("prune_percentage", -0.5, ValueError, ("prune_percentage", "-0.5", "[0, 1]")),
        ("prune_percentage", NAN, ValueError, ("prune_percentage", "nan", "[0, 1]")),
        ("prune_percentage", "0.2", TypeError, ("prune_percentage", "'0.2'")),
    ],
}
CTOR_CASES = [
    pytest.param(*c.values, *case, id=f"{c.id}-{case[0]}-{case[1]!r}")
    for c in ALL
    for case in COMMON_BAD + STRATEGY_BAD[c.values[0]]
]


@pytest.mark.parametrize("strategy,kind,param,value,exc,parts", CTOR_CASES)
def test_constructor_rejects_bad_value_naming_parameter_value_and_allowed(make_layer, strategy, kind, param, value,
                                                                           exc, parts):
    with pytest.raises(exc, match=names_value(*parts)):
        make_layer(strategy, kind, subnetwork=False, **{param: value})


@pytest.mark.parametrize("strategy,kind", WITH_OPTIONAL_BIAS)
def test_mask_bias_without_bias_is_a_value_error_in_constructor_and_a_warning_in_from_layer(make_layer, strategy, kind):
    with pytest.raises(ValueError, match=names_value("mask_bias", "bias")):
        make_layer(strategy, kind, bias=False, mask_bias=True)
    base = base_layer(kind, bias=False)
    with pytest.warns(UserWarning, match="no bias; setting mask_bias=False"):
        layer = layer_class(strategy, kind).from_layer(base, mask_bias=True)
    assert layer.mask_bias is False and layer.bias is None
    x = example_input(base)
    assert layer.eval()(x).shape == base(x).shape


@pytest.mark.parametrize(
    "name,kw,exc,parts",
    [
        ("ContSparseLinear", dict(in_features=-1, out_features=3), ValueError, ("in_features", "-1", ">= 0")),
        ("ContSparseLinear", dict(in_features=2.5, out_features=3), TypeError, ("in_features", "2.5", "int")),
        ("HardConcreteGPTConv1D", dict(nf=3, nx=-2), ValueError, ("nx", "-2", ">= 0")),
        ("MagPruneConv1d", dict(in_channels=2, out_channels=3, kernel_size=0), ValueError, ("kernel_size", "0", ">= 1")),
        ("ContSparseConv2d", dict(in_channels=2, out_channels=3, kernel_size=2, stride=0), ValueError, ("stride", "0", ">= 1")),
        ("ContSparseConv2d", dict(in_channels=2, out_channels=3, kernel_size=2, dilation=(1, 0)), ValueError, ("dilation", "0")),
        ("HardConcreteConv1d", dict(in_channels=2, out_channels=3, kernel_size=2, padding=-1), ValueError, ("padding", "-1", ">= 0")),
        ("HardConcreteConv1d", dict(in_channels=2, out_channels=3, kernel_size=2, padding="full"), ValueError, ("padding", "'full'", "same", "valid")),
        ("HardConcreteConv1d", dict(in_channels=2, out_channels=3, kernel_size=2, padding_mode="zero"), ValueError, ("padding_mode", "'zero'", "reflect")),
        ("ContSparseConv1d", dict(in_channels=2, out_channels=3, kernel_size=2, groups=2), ValueError, ("groups", "2", "divisible")),
        ("ContSparseConv1d", dict(in_channels=0, out_channels=3, kernel_size=2), ValueError, ("in_channels", "0", "positive")),
    ],
)
def test_layer_configuration_is_validated(name, kw, exc, parts):
    with pytest.raises(exc, match=names_value(*parts)):
        getattr(ns, name)(**kw, key=0)


@pytest.mark.parametrize("strategy,kind", ALL)
def test_from_layer_rejects_the_wrong_base_type(strategy, kind):
    cls = layer_class(strategy, kind)
    with pytest.raises(TypeError, match=names_value(cls.__name__, "Embedding")):
        cls.from_layer(torch.nn.Embedding(3, 4))


def test_magnitude_pruning_has_only_weight_units(make_layer):
    for unit in ("neuron", "o i -> o"):  # the same error as the functional core's
        with pytest.raises(ValueError, match=names_value("mask_unit", repr(unit), "weight")):
            make_layer("magnitude_pruning", "linear", mask_unit=unit)
    layer = make_layer("magnitude_pruning", "linear")
    with pytest.raises(ValueError, match=names_value("mask_unit", "'neuron'", "weight")):
        layer.mask_unit = "neuron"
    assert layer.mask_unit == "weight"


# -- setters ----------------------------------------------------------------------------------------

PROPS = ("ablation", "mask_unit", "mask_bias", "use_masks", "force_resample", "temperature", "mask_init_value",
         "mask_init_percentage", "prune_percentage", "training")


def snapshot(layer):
    state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    props = {p: getattr(layer, p) for p in PROPS if hasattr(layer, p)}
    params = {n: (p.shape, p.requires_grad) for n, p in layer.named_parameters()}
    return state, props, params


def assert_same_snapshot(a, b):
    (sa, pa, qa), (sb, pb, qb) = a, b
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert pa == pb and qa == qb


SETTER_BAD = {
    "ablation": [("zero", ValueError), (None, TypeError), (1, TypeError)],
    "mask_unit": [("neurons", ValueError), (None, TypeError)],
    "mask_bias": [("x", TypeError), (1, TypeError), (None, TypeError)],
    "use_masks": [("x", TypeError), (1, TypeError), (None, TypeError)],
    "force_resample": [("x", TypeError), (0, TypeError)],
    "temperature": [(0, ValueError), (-1.0, ValueError), (NAN, ValueError), (INF, ValueError), (-INF, ValueError),
                    ("1", TypeError), (None, TypeError), (True, TypeError)],
    "mask_init_value": [(NAN, ValueError), (INF, ValueError), ("0", TypeError)],
    "mask_init_percentage": [(-0.01, ValueError), (1.01, ValueError), (NAN, ValueError), ("0.5", TypeError)],
    "prune_percentage": [(-0.1, ValueError), (1.1, ValueError), (NAN, ValueError), (INF, ValueError), ("0.2", TypeError)],
}
#: what a rejected string choice must list as allowed
ALLOWED = {"ablation": ("none", "zero_ablate", "random_ablate", "complement_sampled"), "mask_unit": ("'weight'", "'neuron'")}
SETTER_CASES = [
    pytest.param(*c.values, prop, value, exc, id=f"{c.id}-{prop}-{value!r}")
    for c in ALL
    for prop, bad in SETTER_BAD.items()
    for value, exc in bad
    if hasattr(layer_class(*c.values), prop) and not (c.values[0] == "magnitude_pruning" and prop == "mask_unit")
]


@pytest.mark.parametrize("strategy,kind,prop,value,exc", SETTER_CASES)
def test_rejected_setter_names_parameter_and_value_and_leaves_layer_unchanged(make_layer, strategy, kind, prop, value,
                                                                              exc):
    layer = make_layer(strategy, kind, mask_bias=True).eval()
    x = example_input(layer)
    y_before = layer(x)
    before = snapshot(layer)
    with pytest.raises(exc) as info:
        setattr(layer, prop, value)
    msg = str(info.value)
    assert prop in msg and (repr(value) in msg or str(value) in msg), msg
    if exc is ValueError:
        assert all(option in msg for option in ALLOWED.get(prop, ())), msg
    assert_same_snapshot(before, snapshot(layer))
    assert torch.equal(layer(x), y_before)


@pytest.mark.parametrize("strategy,kind", WITH_OPTIONAL_BIAS)
def test_setting_mask_bias_on_a_layer_without_bias_is_rejected_unchanged(make_layer, strategy, kind):
    layer = make_layer(strategy, kind, bias=False)
    before = snapshot(layer)
    with pytest.raises(ValueError, match=names_value("mask_bias", "bias")):
        layer.mask_bias = True
    assert_same_snapshot(before, snapshot(layer))


# -- loading mismatched or non-finite state dicts -------------------------------------------------------------------


@pytest.mark.parametrize("strategy,kind", LEARNED_CASES)
def test_mismatched_state_dict_lists_every_mismatch_and_changes_nothing(make_layer, strategy, kind):
    layer = make_layer(strategy, kind, mask_bias=True)
    other = make_layer(strategy, kind, mask_bias=True, mask_unit="neuron", key=1)
    sd = other.state_dict()
    sd["bias_mask_params"] = torch.zeros(layer.bias.numel() + 1)
    sd["weight"] = sd["weight"] + 1.0  # loadable on its own: must not be copied either
    before = snapshot(layer)
    with pytest.raises(RuntimeError) as info:
        layer.load_state_dict(sd, strict=True)
    msg = str(info.value)
    assert "size mismatch for weight_mask_params" in msg and "size mismatch for bias_mask_params" in msg
    assert str(tuple(other.weight_mask_params.shape)) in msg and str(tuple(layer.weight_mask_params.shape)) in msg
    assert_same_snapshot(before, snapshot(layer))


def test_loading_non_finite_theta_into_a_hard_layer_raises_before_anything_is_copied(make_layer):
    layer = make_layer("continuous_sparsification", "linear").eval()
    before = snapshot(layer)
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd["weight_mask_params"][0, 0] = NAN
    sd["weight"] = sd["weight"] + 1.0
    with pytest.raises(ValueError, match=names_value("weight_mask_params", "non-finite")):
        layer.load_state_dict(sd)
    assert_same_snapshot(before, snapshot(layer))
    sd["weight_mask_params"][0, 0] = 1.0  # finite again: it loads
    layer.load_state_dict(sd)
    assert torch.equal(layer.weight, sd["weight"]) and torch.equal(layer.weight_mask_params, sd["weight_mask_params"])


# -- non-finite mask parameters and impossible ablations --------------------------------------------------------------


@pytest.mark.parametrize("strategy,kind", LEARNED_CASES)
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("which", ["weight_mask_params", "bias_mask_params"])
def test_non_finite_mask_params_are_reported_with_the_layers_name_when_hard(make_layer, strategy, kind, bad, which):
    layer = make_layer(strategy, kind, mask_bias=True)
    with torch.no_grad():
        getattr(layer, which).view(-1)[0] = bad
    with pytest.raises(ValueError, match=names_value(f"{type(layer).__name__}.{which}", "non-finite")):
        layer.eval()  # where the hard mask is made from the parameters


@pytest.mark.parametrize("strategy,kind", LEARNED_CASES)
def test_complement_sampling_of_a_subnetwork_over_half_the_layer_states_both_counts(make_layer, strategy, kind):
    layer = make_layer(strategy, kind, ablation="complement_sampled")
    with torch.no_grad():
        layer.weight_mask_params.fill_(1.0)  # everything is in the subnetwork
    layer.eval()
    n = layer.weight_mask_params.numel()
    with pytest.raises(ValueError, match=names_value("complement", str(n), "0")):
        layer(example_input(layer))
