"""Bad input to the functional core: ValueError/TypeError naming the argument, the value and what
is allowed; a non-finite theta is an error where a hard mask is made, never a silent zero mask."""

import pytest
import torch

import neurosurgeon.functional as F
from neurosurgeon.functional import layer as FL
from neurosurgeon.functional import forwards as FLY
from neurosurgeon.functional import random as nr
from neurosurgeon.functional import reinit as FR
from neurosurgeon.functional import sampling as FS

NAN, INF = float("nan"), float("inf")


def test_non_finite_theta_is_an_error_where_h_is_made_and_propagates_visibly_in_soft_masks():
    w, theta = torch.randn(3, 4), torch.randn(3, 4)
    theta[1, 2] = NAN
    for strategy in ("continuous_sparsification", "hard_concrete"):
        with pytest.raises(ValueError, match="(?s)weight_mask_params.*non-finite"):
            F.mask_parameters(w, None, theta, None, None, strategy=strategy, kind="linear", hard=True)
    out = F.mask_parameters(w, None, theta, None, None, strategy="continuous_sparsification", kind="linear", hard=False)
    assert torch.isnan(out.weight[1, 2])


# -- every entry point --------------------------------------------------------------------------------

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
    ("stretch", lambda: lm(strategy="hard_concrete", left_stretch=0.2), ValueError, ("left_stretch", "0.2", "< 0")),
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
    ("complement over half", lambda: lm(ablation="complement_sampled", args=(W, B, torch.ones(3, 4), None, K)),
     ValueError, ("complement", "12", "0")),
    ("apply_mask shape", lambda: FL.apply_mask(W, torch.ones(4, 3)), ValueError, ("mask", "(4, 3)", "(3, 4)")),
    ("apply_mask replacement", lambda: FL.apply_mask(W, torch.ones(3, 4), torch.ones(2, 2)), ValueError,
     ("replacement", "(2, 2)", "(3, 4)")),
    ("hc mask key", lambda: F.hard_concrete_mask(TH, torch.zeros(2)), ValueError, ("key", "torch.float32")),
    ("hard_mask strategy", lambda: F.hard_mask("x", TH), ValueError, ("strategy", "'x'")),
    ("mask_parameters unknown hyper-parameter", lambda: F.mask_parameters(W, B, TH, None, K, strategy="magnitude_pruning",
     kind="linear", hard=True, temperature=1.0), ValueError, ("temperature", "prune_percentage")),
    ("mask_l0 strategy", lambda: F.mask_l0("x", TH, 12, hard=False), ValueError, ("strategy", "'x'")),
    ("ablate", lambda: F.ablate(torch.ones(3), K, ablation="foo"), ValueError,
     ("ablation", "'foo'", "zero_ablate", "complement_sampled")),
    ("ablate key", lambda: F.ablate(torch.ones(3), None, ablation="complement_sampled"), ValueError, ("key", "None")),
    ("complement_sampled_mask", lambda: F.complement_sampled_mask(K, torch.tensor([1.0, 1.0, 0.0])), ValueError,
     ("complement", "2", "1")),
    ("randomly_sampled key", lambda: F.randomly_sampled_mask(torch.zeros(2, 2, dtype=torch.int64), torch.ones(3)),
     ValueError, ("key", "(2, 2)")),
    ("sample_zeros negative", lambda: FS.sample_zeros(K, torch.ones(3, dtype=torch.bool), -1), ValueError, ("num_zeros", "-1")),
    ("sample_zeros over eligible", lambda: FS.sample_zeros(K, torch.tensor([True, False, True, False]), 3), ValueError,
     ("3", "2")),
    ("unit_shape unit", lambda: F.unit_shape((3, 4), "neurons", kind="linear"), ValueError,
     ("mask_unit", "'neurons'", "'weight'", "'neuron'")),
    ("unit_shape unit case", lambda: F.unit_shape((3, 4), "Weight", kind="linear"), ValueError, ("mask_unit", "'Weight'")),
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
def test_functional_entry_points_reject_bad_input_naming_argument_value_and_allowed(label, call, exc, parts):
    with pytest.raises(exc) as info:
        call()
    assert all(str(p) in str(info.value) for p in parts), str(info.value)
