"""Module shells: construction, mask parameters, modes, L0, the masks a forward applied, random
draws, gradients, state dicts, bake and the public accessors."""

import copy

import pytest
import torch
import torch.nn as nn
from _modules_zoo import ABLATIONS, LEARNED, base_layer, cases, conv_args, example_input, layer_class, reference
from hypothesis import example, given
from hypothesis import strategies as st

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional import random as nr
from neurosurgeon.functional import reinit as FR

ALL = cases()
LEARNED_CASES = cases(LEARNED)
MASKING_ABLATIONS = ["zero_ablate", "random_ablate", "randomly_sampled", "complement_sampled"]


def _unit(strategy, kind):
    """A neuron unit on convolutions and weight units elsewhere (magnitude pruning takes none)."""
    if strategy == "magnitude_pruning":
        return {}
    return {"mask_unit": "neuron" if kind.startswith("conv") else "weight"}


def _all_ones_(layer):
    """Mask parameters large enough that every mask entry is exactly 1, soft or hard."""
    if isinstance(layer, ns.MagPruneLayer):
        layer.prune_percentage = 0.0
        return
    with torch.no_grad():
        for p in layer.mask_tensors():
            if p is not None:
                p.fill_(50.0)


# -- construction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy,kind", ALL)
def test_from_layer_shares_weight_and_bias_parameter_objects(strategy, kind):
    base = base_layer(kind)
    layer = layer_class(strategy, kind).from_layer(base, key=0)
    assert layer.weight is base.weight and layer.bias is base.bias


@pytest.mark.parametrize("strategy,kind", LEARNED_CASES)
@pytest.mark.parametrize("unit", ["weight", "neuron"])
def test_mask_params_have_mask_unit_shape_and_bias_mask_per_element(make_layer, strategy, kind, unit):
    layer = make_layer(strategy, kind, mask_unit=unit, mask_bias=True)
    assert tuple(layer.weight_mask_params.shape) == F.unit_shape(tuple(layer.weight.shape), unit, kind=kind)
    assert tuple(layer.bias_mask_params.shape) == tuple(layer.bias.shape)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight", "bias", "weight_mask_params", "bias_mask_params"}


def test_initial_mask_params_follow_each_strategy_init(make_layer):
    cs = make_layer("continuous_sparsification", "linear", subnetwork=False, mask_init_value=0.3)
    assert (cs.weight_mask_params == 0.3).all()
    hc = make_layer("hard_concrete", "linear", subnetwork=False, mask_init_percentage=0.8)
    assert torch.allclose(hc.weight_mask_params, torch.tensor(0.8 / 0.2).log())
    hc0 = make_layer("hard_concrete", "linear", subnetwork=False, mask_init_percentage=0.0)
    assert torch.allclose(hc0.weight_mask_params, torch.tensor(1e-4 / (1 - 1e-4)).log())


# -- exactness -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy,kind", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_all_ones_mask_and_use_masks_false_reproduce_base_layer_bitwise(strategy, kind, dtype):
    base = base_layer(kind, dtype)
    x = example_input(base)
    want = base(x)
    layer = layer_class(strategy, kind).from_layer(base, mask_bias=True, key=0)
    for mode in (True, False):
        layer.train(mode)
        layer.use_masks = False
        assert torch.equal(layer(x), want)
    layer.use_masks = True
    _all_ones_(layer)
    for mode in (True, False):
        layer.train(mode)
        assert torch.equal(layer(x), want)


# -- modes --------------------------------------------------------------------------------------------------
def test_train_returns_self_and_is_recursive(make_layer):
    model = nn.Sequential(make_layer("continuous_sparsification", "linear"),
                          nn.Sequential(make_layer("hard_concrete", "linear")))
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    layer = model[0]
    assert layer.train() is layer and layer.training
    assert model.train(True) is model and all(m.training for m in model.modules())


@pytest.mark.parametrize("strategy,kind", LEARNED_CASES)
@pytest.mark.parametrize("ablation", MASKING_ABLATIONS)
def test_learned_masks_cannot_ablate_while_training_but_can_once_frozen_or_in_eval(make_layer, strategy, kind, ablation):
    layer = make_layer(strategy, kind, ablation=ablation).train()
    x = example_input(layer)
    with pytest.raises(ValueError, match=f"cannot ablate while training: ablation='{ablation}'"):
        layer(x)
    layer.weight_mask_params.requires_grad_(False)  # frozen mask params make the layer hard
    layer(x)
    layer.weight_mask_params.requires_grad_(True)
    layer.eval()(x)


def test_magnitude_masks_same_in_train_and_eval_and_bias_pruned_separately(make_layer):
    layer = make_layer("magnitude_pruning", "linear", mask_bias=True, prune_percentage=0.5)
    x = example_input(layer)
    layer.train()
    y_train, wm, bm = layer(x), layer.weight_mask, layer.bias_mask
    layer.eval()
    assert torch.equal(layer(x), y_train) and torch.equal(layer.weight_mask, wm)
    assert int((wm == 0).sum()) == 10 and int((bm == 0).sum()) == 2
    assert torch.equal(bm, F.magnitude_mask(layer.bias, prune_percentage=0.5))


# -- L0 ---------------------------------------------------------------------------------------------------
L0_CASES = [pytest.param(*c.values, unit, id=f"{c.id}-{unit}") for c in ALL for unit in ("weight", "neuron")
            if c.values[0] != "magnitude_pruning" or unit == "weight"]  # magnitude pruning has weight units only


@pytest.mark.parametrize("strategy,kind,unit", L0_CASES)
def test_calculate_l0_soft_surrogate_while_training_count_while_hard(make_layer, strategy, kind, unit):
    unit = None if strategy == "magnitude_pruning" else unit
    assert make_layer(strategy, kind, mask_unit=unit).calculate_max_l0() == make_layer(strategy, kind).weight.numel()
    layer = make_layer(strategy, kind, mask_bias=True, mask_unit=unit)
    assert layer.calculate_max_l0() == layer.weight.numel() + layer.bias.numel()
    layer.eval()
    layer(example_input(layer))
    hard = layer.calculate_l0()
    assert float(hard) == float(layer.weight_mask.sum() + layer.bias_mask.sum())
    if strategy == "magnitude_pruning":
        return
    layer.train()
    soft = layer.calculate_l0()
    assert soft.requires_grad
    scale = layer.weight.numel() // layer.weight_mask_params.numel()
    theta, beta = layer.weight_mask_params, layer.temperature
    if strategy == "continuous_sparsification":
        want = torch.sigmoid(beta * theta).sum() * scale + torch.sigmoid(beta * layer.bias_mask_params).sum()
    else:
        shift = beta * torch.log(torch.tensor(0.1 / 1.1))
        want = torch.sigmoid(theta - shift).sum() * scale + torch.sigmoid(layer.bias_mask_params - shift).sum()
    assert torch.allclose(soft, want)
    soft.backward()
    assert layer.weight_mask_params.grad is not None and layer.weight.grad is None


# -- masks after forward ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy,kind", ALL)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_weight_and_bias_mask_after_forward_are_the_applied_masks(make_layer, strategy, kind, ablation):
    layer = make_layer(strategy, kind, ablation=ablation, mask_bias=True, key=3, **_unit(strategy, kind)).eval()
    x = example_input(layer)
    layer(x)
    wm, bm = layer.weight_mask, layer.bias_mask
    assert wm.shape == layer.weight.shape and bm.shape == layer.bias.shape
    assert wm.dtype == layer.weight.dtype
    p = layer.masked_parameters()
    if ablation == "random_ablate":
        r = FR.reinit_weight(nr.split(layer.mask_key, 4)[2], kind, layer.weight)
        assert torch.equal(p.weight, layer.weight * wm + r * (1 - wm))
    else:
        assert torch.equal(p.weight, layer.weight * wm)
        assert torch.equal(p.bias, layer.bias * bm)
    if ablation in ("randomly_sampled", "complement_sampled"):
        layer.ablation = "none"
        layer(x)
        h = layer.weight_mask
        assert int((wm == 0).sum()) == int(h.sum())
        if ablation == "complement_sampled":
            assert (wm[h == 1] == 1).all()


def test_deepcopy_works_after_a_training_forward(make_layer):
    layer = make_layer("hard_concrete", "linear", mask_bias=True).train()
    x = example_input(layer)
    layer(x)
    twin = copy.deepcopy(layer)
    assert twin.weight is not layer.weight and torch.equal(twin.weight, layer.weight)
    assert torch.equal(twin.mask_key, layer.mask_key) and torch.equal(twin.noise_step, layer.noise_step)
    assert torch.equal(twin(x), layer(x))


def test_weight_mask_is_none_before_first_forward(make_layer):
    layer = make_layer("continuous_sparsification", "linear")
    assert layer.weight_mask is None and layer.bias_mask is None


# -- random draws ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ablation", ["random_ablate", "randomly_sampled", "complement_sampled"])
def test_random_masks_reused_between_forwards_and_force_resample_draws_once(make_layer, ablation):
    layer = make_layer("continuous_sparsification", "linear", ablation=ablation, key=7).eval()
    x = example_input(layer)
    y1 = layer(x)
    assert torch.equal(layer(x), y1) and torch.equal(layer(x), y1)
    assert layer.force_resample is False
    layer.force_resample = True
    assert layer.force_resample is True
    y2 = layer(x)
    assert layer.force_resample is False
    assert not torch.equal(y2, y1)
    assert torch.equal(layer(x), y2)


def test_module_randomness_reproducible_from_global_seed_when_no_key_given(make_layer):
    torch.manual_seed(123)
    k1 = make_layer("continuous_sparsification", "linear", key=None).mask_key.clone()
    torch.manual_seed(123)
    assert torch.equal(make_layer("continuous_sparsification", "linear", key=None).mask_key, k1)


# -- gradients -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy,kind", LEARNED_CASES)
def test_gradients_reach_mask_params_never_frozen_base_weights(make_layer, strategy, kind):
    layer = make_layer(strategy, kind, mask_bias=True).train()
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    layer(example_input(layer)).square().sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.weight_mask_params.grad is not None and layer.weight_mask_params.grad.abs().sum() > 0
    assert layer.bias_mask_params.grad is not None


# -- state dicts --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy,kind", ALL)
def test_state_dict_round_trip_reproduces_every_mode_strictly(make_layer, strategy, kind):
    unit = _unit(strategy, kind)
    src = make_layer(strategy, kind, key=21, mask_bias=True, **unit).train()
    x = example_input(src)
    src(x)  # advances the hard-concrete noise step
    sd = src.state_dict()
    assert {"weight", "bias", "mask_key", "noise_step"} <= set(sd)
    # Another key and other parameters, and random masks already drawn from them before the load.
    dst = make_layer(strategy, kind, key=99, seed=5, mask_bias=True, ablation="randomly_sampled", **unit).eval()
    dst(x)
    dst.load_state_dict(sd, strict=True)
    for mode in (True, False):
        for ablation in ABLATIONS if not mode or strategy == "magnitude_pruning" else ["none"]:
            src.train(mode), dst.train(mode)
            src.ablation = dst.ablation = ablation
            assert torch.equal(src(x), dst(x)), (mode, ablation)


@pytest.mark.parametrize("strategy,kind", ALL)
def test_state_dict_with_only_v0_keys_loads_strictly(make_layer, strategy, kind):
    src = make_layer(strategy, kind, mask_bias=True, key=4).eval()
    v0 = {k: v for k, v in src.state_dict().items() if k not in ("mask_key", "noise_step")}
    learned = {"weight_mask_params", "bias_mask_params"} if strategy != "magnitude_pruning" else set()
    assert set(v0) == {"weight", "bias"} | learned
    dst = make_layer(strategy, kind, mask_bias=True, key=4, seed=5).eval()
    dst.load_state_dict(v0, strict=True)
    x = example_input(src)
    for ablation in ("none", "zero_ablate", "randomly_sampled"):
        src.ablation = dst.ablation = ablation
        assert torch.equal(src(x), dst(x))


# -- convolution configurations and bake ---------------------------------------------------------------------------------
@given(
    dims=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from([0, 1, 2, "same", "valid"]),
    padding_mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    prefix=st.sampled_from(["ContSparse", "HardConcrete", "MagPrune"]),
)
@example(dims=2, groups=2, kernel=3, stride=1, dilation=2, padding="same", padding_mode="reflect", prefix="HardConcrete")
def test_property_conv_configurations_reproduce_base_layer_bitwise(dims, groups, kernel, stride, dilation, padding,
                                                                   padding_mode, prefix):
    if padding == "same":
        stride = 1  # torch refuses padding='same' with strides
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(4, 6, kernel, stride=stride, padding=padding, dilation=dilation,
                                                   groups=groups, padding_mode=padding_mode)
    layer = getattr(ns, f"{prefix}Conv{dims}d").from_layer(conv, key=0)
    x = torch.randn((2, 4, 9) if dims == 1 else (2, 4, 9, 8))
    want = conv(x)
    layer.use_masks = False
    assert torch.equal(layer(x), want)
    layer.use_masks = True
    _all_ones_(layer)
    assert torch.equal(layer.eval()(x), want)


@pytest.mark.parametrize("strategy,kind", ALL)
@pytest.mark.parametrize("ablation", ["none", "zero_ablate", "random_ablate", "complement_sampled"])
def test_bake_returns_base_layer_with_same_output_and_draws_nothing_from_global_rng(make_layer, strategy, kind,
                                                                                    ablation):
    layer = make_layer(strategy, kind, ablation=ablation, mask_bias=True, key=8).eval()
    x = example_input(layer)
    state = torch.get_rng_state()
    baked = layer.bake()
    assert torch.equal(torch.get_rng_state(), state)
    assert type(baked) is type(base_layer(kind))
    assert baked.weight is not layer.weight and baked.weight.is_leaf
    assert torch.equal(baked(x), layer(x))


@pytest.mark.parametrize("strategy,kind", LEARNED_CASES)
def test_toggling_mask_bias_keeps_the_learned_weight_mask(make_layer, strategy, kind):
    layer = make_layer(strategy, kind)
    theta = layer.weight_mask_params
    before = theta.detach().clone()
    layer.mask_bias = True
    assert layer.weight_mask_params is theta and torch.equal(theta, before)
    assert layer.bias_mask_params.shape == layer.bias.shape
    layer.eval()
    x = example_input(layer)
    layer(x)
    assert layer.bias_mask is not None
    layer.mask_bias = False
    assert not hasattr(layer, "bias_mask_params") and torch.equal(layer.weight_mask_params, before)
    layer(x)
    assert layer.bias_mask is None


@pytest.mark.parametrize("strategy,kind", [("continuous_sparsification", "conv2d"), ("hard_concrete", "gpt_conv1d")])
def test_changing_mask_unit_reshapes_weight_mask_and_keeps_bias_mask(make_layer, strategy, kind):
    layer = make_layer(strategy, kind, mask_bias=True)
    bias_theta = layer.bias_mask_params
    before = bias_theta.detach().clone()
    layer.mask_unit = "neuron"
    assert tuple(layer.weight_mask_params.shape) == F.unit_shape(tuple(layer.weight.shape), "neuron", kind=kind)
    assert layer.bias_mask_params is bias_theta and torch.equal(bias_theta, before)
    layer.eval()
    layer(example_input(layer))
    assert layer.weight_mask.shape == layer.weight.shape


@pytest.mark.parametrize("strategy,kind", ALL)
def test_public_configuration_accessors_describe_the_layer(make_layer, strategy, kind):
    layer = make_layer(strategy, kind).eval()
    assert layer.strategy == strategy and layer.layer_kind == kind
    wp, _ = layer.mask_tensors()
    assert wp is (layer.weight if strategy == "magnitude_pruning" else layer.weight_mask_params)
    # the accessors feed the functional core: it reproduces the layer's eval output
    x = example_input(layer)
    p = F.mask_parameters(layer.weight, layer.bias, *layer.mask_tensors(), None, strategy=layer.strategy,
                          kind=layer.layer_kind, hard=True, mask_unit=layer.mask_unit, **layer.mask_hparams)
    assert torch.equal(p.weight, reference(layer, x)[1].weight)
    assert torch.equal(p.weight, layer.masked_parameters().weight)
    y = F.layer_forward(layer.layer_kind, x, p.weight, p.bias, **conv_args(layer))
    assert torch.equal(y, layer(x))
    with pytest.raises(AttributeError):
        layer.strategy = "hard_concrete"
