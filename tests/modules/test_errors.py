"""Bad input at layer and functional level: ValueError/TypeError naming the parameter, the value
and what is allowed; a rejected setter leaves the layer as it was; non-finite mask parameters
are reported (with the layer's name) where a mask is made hard, never binarised to zeros."""

from __future__ import annotations

import math
import re

import pytest
import torch

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional import random as nr
from neurosurgeon.functional import sampling as FS
from neurosurgeon.functional import reinit as FR
from neurosurgeon.functional import layers as FLY
from neurosurgeon.functional import layer as FL

NAN, INF = float("nan"), float("inf")
SUFFIX_ARGS = {"Linear": (4, 3), "GPTConv1D": (3, 4), "Conv1d": (2, 3, 3), "Conv2d": (2, 3, 2)}
INPUTS = {"Linear": (2, 4), "GPTConv1D": (2, 4), "Conv1d": (2, 2, 5), "Conv2d": (2, 2, 4, 4)}
LEARNED = [f"{s}{t}" for s in ("ContSparse", "HardConcrete") for t in SUFFIX_ARGS]
ALL = LEARNED + [f"MagPrune{t}" for t in SUFFIX_ARGS]


def suffix(name: str) -> str:
    return next(s for s in SUFFIX_ARGS if name.endswith(s))


def make(name: str, **kw):
    return getattr(ns, name)(*SUFFIX_ARGS[suffix(name)], **{"key": 0, **kw})


def x_for(name: str) -> torch.Tensor:
    return torch.randn(INPUTS[suffix(name)], generator=torch.Generator().manual_seed(0))


def names_value(*parts) -> str:
    """A regex requiring every part (escaped) to appear in the message, in any order."""
    return "".join(f"(?=[\\s\\S]*{re.escape(str(p))})" for p in parts)


# -- constructors --------------------------------------------------------------------------------

COMMON_BAD = [
    ("ablation", "zero", ValueError, ("ablation", "'zero'", "zero_ablate", "complement_sampled")),
    ("ablation", None, TypeError, ("ablation", "None")),
    ("mask_bias", "yes", TypeError, ("mask_bias", "'yes'", "bool")),
    ("key", torch.zeros(3, dtype=torch.int64), ValueError, ("key", "(3,)", "(2,)")),
    ("key", torch.zeros(2), ValueError, ("key", "torch.float32", "int64")),
    ("key", "seed", TypeError, ("key", "str")),
]
STRATEGY_BAD = {
    "ContSparse": [
        ("mask_unit", "neurons", ValueError, ("mask_unit", "'neurons'", "weight", "neuron")),
        ("temperature", 0.0, ValueError, ("temperature", "0.0", "> 0")),
        ("temperature", -1.0, ValueError, ("temperature", "-1.0", "> 0")),
        ("temperature", NAN, ValueError, ("temperature", "nan", "finite")),
        ("temperature", INF, ValueError, ("temperature", "inf", "finite")),
        ("temperature", "1", TypeError, ("temperature", "'1'")),
        ("mask_init_value", NAN, ValueError, ("mask_init_value", "nan", "finite")),
    ],
    "HardConcrete": [
        ("mask_unit", "all", ValueError, ("mask_unit", "'all'", "weight", "neuron")),
        ("mask_init_percentage", 1.5, ValueError, ("mask_init_percentage", "1.5", "[0, 1]")),
        ("mask_init_percentage", -0.1, ValueError, ("mask_init_percentage", "-0.1", "[0, 1]")),
        ("mask_init_percentage", NAN, ValueError, ("mask_init_percentage", "nan", "[0, 1]")),
        ("temperature", 0.0, ValueError, ("temperature", "0.0", "> 0")),
        ("temperature", INF, ValueError, ("temperature", "inf", "finite")),
        ("left_stretch", 0.1, ValueError, ("left_stretch", "0.1", "< 0")),
        ("right_stretch", 0.9, ValueError, ("right_stretch", "0.9", "> 1")),
    ],
    "MagPrune": [
        ("prune_percentage", 1.01, ValueError, ("prune_percentage", "1.01", "[0, 1]")),
        ("prune_percentage", -0.5, ValueError, ("prune_percentage", "-0.5", "[0, 1]")),
        ("prune_percentage", NAN, ValueError, ("prune_percentage", "nan", "[0, 1]")),
        ("prune_percentage", "0.2", TypeError, ("prune_percentage", "'0.2'")),
    ],
}
CTOR_CASES = [
    (name, *case)
    for name in ALL
    for case in COMMON_BAD + STRATEGY_BAD[name.removesuffix(suffix(name))]
]


@pytest.mark.parametrize("name,param,value,exc,parts", CTOR_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_constructor_rejects_bad_value_naming_parameter_value_and_allowed(name, param, value, exc, parts):
    with pytest.raises(exc, match=names_value(*parts)):
        make(name, **{param: value})


@pytest.mark.parametrize("name", ALL)
def test_mask_bias_without_bias_is_a_value_error_in_constructor_and_a_warning_in_from_layer(name):
    if suffix(name) == "GPTConv1D":
        pytest.skip("GPT-2's Conv1D always has a bias")
    with pytest.raises(ValueError, match=names_value("mask_bias", "bias")):
        make(name, bias=False, mask_bias=True)
    base = {"Linear": torch.nn.Linear(4, 3, bias=False), "Conv1d": torch.nn.Conv1d(2, 3, 3, bias=False),
            "Conv2d": torch.nn.Conv2d(2, 3, 2, bias=False)}[suffix(name)]
    with pytest.warns(UserWarning, match="no bias"):
        layer = getattr(ns, name).from_layer(base, mask_bias=True)
    assert layer.mask_bias is False


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


@pytest.mark.parametrize("name", ALL)
def test_from_layer_rejects_the_wrong_base_type(name):
    with pytest.raises(TypeError, match=names_value(name, "Embedding")):
        getattr(ns, name).from_layer(torch.nn.Embedding(3, 4))


def test_magnitude_pruning_has_only_weight_units():
    with pytest.raises(TypeError, match="mask_unit"):
        ns.MagPruneLinear(4, 3, mask_unit="neuron")
    layer = ns.MagPruneLinear(4, 3, key=0)
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
SETTER_CASES = [
    (name, prop, value, exc)
    for name in ALL
    for prop, bad in SETTER_BAD.items()
    for value, exc in bad
    if hasattr(getattr(ns, name), prop) and not (name.startswith("MagPrune") and prop == "mask_unit")
]


@pytest.mark.parametrize("name,prop,value,exc", SETTER_CASES, ids=lambda v: repr(v) if not isinstance(v, str) else v)
def test_rejected_setter_names_parameter_and_value_and_leaves_layer_unchanged(name, prop, value, exc):
    layer = make(name, mask_bias=True, ablation="none")
    layer.eval()
    x = x_for(name)
    y_before = layer(x)
    before = snapshot(layer)
    with pytest.raises(exc) as info:
        setattr(layer, prop, value)
    msg = str(info.value)
    assert prop in msg and (repr(value) in msg or str(value) in msg), msg
    assert_same_snapshot(before, snapshot(layer))
    assert torch.equal(layer(x), y_before)


@pytest.mark.parametrize("name", [n for n in ALL if suffix(n) != "GPTConv1D"])
def test_setting_mask_bias_on_a_layer_without_bias_is_rejected_unchanged(name):
    layer = make(name, bias=False)
    before = snapshot(layer)
    with pytest.raises(ValueError, match=names_value("mask_bias", "bias")):
        layer.mask_bias = True
    assert_same_snapshot(before, snapshot(layer))


# -- loading mismatched state dicts ------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEARNED)
def test_mismatched_state_dict_lists_every_mismatch_and_changes_nothing(name):
    layer = make(name, mask_bias=True)
    other = make(name, mask_bias=True, mask_unit="neuron", key=1)
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


# -- non-finite mask parameters -------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEARNED)
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("which", ["weight_mask_params", "bias_mask_params"])
def test_non_finite_mask_params_are_reported_with_the_layers_name_when_hard(name, bad, which):
    layer = make(name, mask_bias=True)
    with torch.no_grad():
        getattr(layer, which).view(-1)[0] = bad
    with pytest.raises(ValueError, match=names_value(f"{name}.{which}", "non-finite")):
        layer.eval()  # where the hard mask is made from the parameters


def test_non_finite_theta_is_an_error_in_the_functional_core_not_a_zero_mask():
    w, theta = torch.randn(3, 4), torch.randn(3, 4)
    theta[1, 2] = NAN
    for strategy in ("continuous_sparsification", "hard_concrete"):
        with pytest.raises(ValueError, match=names_value("weight_mask_params", "non-finite")):
            F.mask_parameters(w, None, theta, None, None, strategy=strategy, kind="linear", hard=True)
    # Soft masks propagate NaN visibly (no silent zeros); the check is only where h is made.
    out = F.mask_parameters(w, None, theta, None, None, strategy="continuous_sparsification", kind="linear", hard=False)
    assert torch.isnan(out.weight[1, 2])


# -- functional entry points --------------------------------------------------------------------------------

W, B, TH, K = torch.randn(3, 4), torch.randn(3), torch.randn(3, 4), nr.key(0)


def lm(args=(W, B, TH, None, K), **kw):
    base = dict(strategy="continuous_sparsification", kind="linear", hard=True)
    return FL.layer_masks(*args, **{**base, **kw})


FUNCTIONAL_CASES = [
    ("strategy", lambda: lm(strategy="cs"), ValueError, ("strategy", "'cs'", "hard_concrete")),
    ("kind", lambda: lm(kind="conv3d"), ValueError, ("kind", "'conv3d'", "gpt_conv1d")),
    ("ablation", lambda: lm(ablation="zero"), ValueError, ("ablation", "'zero'", "zero_ablate")),
    ("hard", lambda: lm(hard="yes"), TypeError, ("hard", "'yes'", "bool")),
    ("temperature soft", lambda: lm(hard=False, temperature=0.0), ValueError, ("temperature", "0.0", "> 0")),
    ("temperature nan", lambda: lm(hard=False, temperature=NAN), ValueError, ("temperature", "nan")),
    ("temperature inf hard", lambda: lm(temperature=INF), ValueError, ("temperature", "inf")),
    ("hc temperature", lambda: lm(strategy="hard_concrete", hard=False, temperature=-1.0), ValueError, ("temperature", "-1.0")),
    ("stretch", lambda: lm(strategy="hard_concrete", left=0.2), ValueError, ("left_stretch", "0.2", "< 0")),
    ("prune_percentage", lambda: lm(strategy="magnitude_pruning", args=(W, B, W, None, K), prune_percentage=1.5),
     ValueError, ("prune_percentage", "1.5", "[0, 1]")),
    ("theta shape", lambda: lm(args=(W, B, torch.randn(4, 3), None, K)), ValueError,
     ("weight_mask_params", "(4, 3)", "(3, 4)", "mask_unit")),
    ("theta not a unit shape", lambda: lm(args=(W, B, torch.randn(1, 4), None, K)), ValueError,
     ("weight_mask_params", "(1, 4)", "(3, 4)")),
    ("gpt neuron shape", lambda: lm(kind="gpt_conv1d", args=(W, torch.randn(4), torch.randn(3, 1), None, K)), ValueError,
     ("weight_mask_params", "(3, 1)", "(3, 4)")),
    ("bias theta shape", lambda: lm(args=(W, B, TH, torch.randn(4), K)), ValueError, ("bias_mask_params", "(4,)", "(3,)")),
    ("mask_bias without bias", lambda: lm(args=(W, None, TH, torch.randn(3), K)), ValueError, ("bias_mask_params", "no bias")),
    ("bias shape", lambda: lm(args=(W, torch.randn(5), TH, None, K)), ValueError, ("bias", "(5,)", "(3,)")),
    ("weight dims", lambda: lm(kind="conv2d", args=(W, B, TH, None, K)), ValueError, ("weight", "conv2d", "4 dimensions")),
    ("key shape", lambda: lm(ablation="randomly_sampled", args=(W, B, TH, None, torch.zeros(3, dtype=torch.int64))),
     ValueError, ("key", "(3,)", "(2,)")),
    ("key dtype", lambda: lm(ablation="random_ablate", args=(W, B, TH, None, torch.zeros(2, dtype=torch.int32))),
     ValueError, ("key", "torch.int32", "int64")),
    ("key type", lambda: lm(ablation="random_ablate", args=(W, B, TH, None, [0, 0])), TypeError, ("key", "list")),
    ("key missing", lambda: lm(ablation="randomly_sampled", args=(W, B, TH, None, None)), ValueError, ("key", "None")),
    ("hc noise key missing", lambda: lm(strategy="hard_concrete", hard=False, args=(W, B, TH, None, None)),
     ValueError, ("key", "None")),
    ("ablate while soft", lambda: lm(hard=False, ablation="zero_ablate"), ValueError, ("ablate while training", "'zero_ablate'")),
    ("complement over half", lambda: lm(ablation="complement_sampled", args=(W, B, torch.ones(3, 4), None, K)),
     ValueError, ("complement", "12", "0")),
    ("apply_mask shape", lambda: FLY.apply_mask(W, torch.ones(4, 3)), ValueError, ("mask", "(4, 3)", "(3, 4)")),
    ("apply_mask replacement", lambda: FLY.apply_mask(W, torch.ones(3, 4), torch.ones(2, 2)), ValueError,
     ("replacement", "(2, 2)", "(3, 4)")),
    ("cs mask temperature", lambda: F.continuous_sparsification_mask(TH, temperature=0), ValueError, ("temperature", "0")),
    ("hc mask key", lambda: F.hard_concrete_mask(TH, torch.zeros(2)), ValueError, ("key", "torch.float32")),
    ("hc init", lambda: F.hard_concrete_init(2.0), ValueError, ("mask_init_percentage", "2.0", "[0, 1]")),
    ("magnitude p", lambda: F.magnitude_mask(W, prune_percentage=-0.1), ValueError, ("prune_percentage", "-0.1")),
    ("hard_mask strategy", lambda: F.hard_mask("x", TH), ValueError, ("strategy", "'x'")),
    ("mask_parameters unknown hyper-parameter", lambda: F.mask_parameters(W, B, TH, None, K, strategy="magnitude_pruning",
     kind="linear", hard=True, temperature=1.0), ValueError, ("temperature", "prune_percentage")),
    ("mask_l0 strategy", lambda: F.mask_l0("x", TH, 12, hard=False), ValueError, ("strategy", "'x'")),
    ("ablate", lambda: F.ablate(torch.ones(3), K, ablation="foo"), ValueError, ("ablation", "'foo'")),
    ("ablate key", lambda: F.ablate(torch.ones(3), None, ablation="complement_sampled"), ValueError, ("key", "None")),
    ("complement_sampled_mask", lambda: F.complement_sampled_mask(K, torch.tensor([1.0, 1.0, 0.0])), ValueError,
     ("complement", "2", "1")),
    ("randomly_sampled key", lambda: F.randomly_sampled_mask(torch.zeros(2, 2, dtype=torch.int64), torch.ones(3)),
     ValueError, ("key", "(2, 2)")),
    ("sample_zeros negative", lambda: FS.sample_zeros(K, torch.ones(3, dtype=torch.bool), -1), ValueError, ("num_zeros", "-1")),
    ("mask_shape unit", lambda: F.unit_shape((3, 4), "neurons", kind="linear"), ValueError, ("mask_unit", "'neurons'")),
    ("layer_forward kind", lambda: F.layer_forward("lin", torch.randn(2, 4), W, B), ValueError, ("kind", "'lin'")),
    ("padding_mode", lambda: FLY.conv1d(torch.randn(1, 2, 5), torch.randn(3, 2, 2), padding_mode="zero"), ValueError,
     ("padding_mode", "'zero'")),
    ("reinit kind", lambda: FR.reinit_weight(K, "x", W), ValueError, ("kind", "'x'")),
    ("seed type", lambda: nr.key(1.5), TypeError, ("seed", "1.5")),
    ("split num", lambda: nr.split(K, 0), ValueError, ("num", "0")),
    ("uniform shape", lambda: nr.uniform(K, (-1,)), ValueError, ("shape", "-1")),
    ("fold_in data", lambda: nr.fold_in(K, 1.5), ValueError, ("data", "1.5")),
]


@pytest.mark.parametrize("label,call,exc,parts", FUNCTIONAL_CASES, ids=[c[0] for c in FUNCTIONAL_CASES])
def test_functional_entry_points_reject_bad_input_clearly(label, call, exc, parts):
    with pytest.raises(exc, match=names_value(*parts)):
        call()


def test_sample_zeros_refuses_more_zeros_than_eligible_entries():
    eligible = torch.tensor([True, False, True, False])
    with pytest.raises(ValueError, match=names_value("3", "2")):
        FS.sample_zeros(K, eligible, 3)


# -- module-level runtime errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEARNED)
def test_ablating_while_training_is_a_clear_error(name):
    layer = make(name, ablation="zero_ablate")
    layer.train()
    with pytest.raises(ValueError, match=names_value("ablate while training", "zero_ablate")):
        layer(x_for(name))
    layer.eval()
    layer(x_for(name))  # and fine once hard


@pytest.mark.parametrize("name", LEARNED)
def test_complement_sampling_of_a_subnetwork_over_half_the_layer_states_both_counts(name):
    layer = make(name, ablation="complement_sampled")
    with torch.no_grad():
        layer.weight_mask_params.fill_(1.0)  # everything is in the subnetwork
    layer.eval()
    n = layer.weight_mask_params.numel()
    with pytest.raises(ValueError, match=names_value("complement", str(n), "0")):
        layer(x_for(name))


def test_functional_validation_adds_no_host_reads_under_vmap():
    """The checks are shape/type checks (plus a value check skipped under transforms): vmap over keys works."""
    theta = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    keys = nr.split(K, 3)

    def one(k):
        return FL.layer_masks(W, B, theta, None, k, strategy="hard_concrete", kind="linear", hard=False)[0]

    out = torch.func.vmap(one)(keys)
    # Batched and unbatched float kernels may round differently in the last bit.
    torch.testing.assert_close(out[1], one(keys[1]), rtol=1e-6, atol=1e-6)
    assert not math.isnan(float(out.sum()))


def test_loading_non_finite_theta_into_a_hard_layer_raises_before_anything_is_copied():
    layer = make("ContSparseLinear").eval()
    before = layer.weight_mask_params.detach().clone()
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd["weight_mask_params"][0, 0] = NAN
    sd["weight"] = sd["weight"] + 1.0
    weight_before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match=names_value("weight_mask_params", "non-finite")):
        layer.load_state_dict(sd)
    assert torch.equal(layer.weight_mask_params, before) and torch.equal(layer.weight, weight_before)
