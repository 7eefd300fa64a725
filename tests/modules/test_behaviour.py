"""Module shells: construction, validation, modes, L0, masks after forward,
resampling and caching, state dicts, dtypes and devices."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from _modules_zoo import (
    ABLATIONS,
    ALL_CLASSES,
    LEARNED,
    SUFFIXES,
    base_layer,
    example_input,
    mask_layer,
    mixed_sign_,
    suffix_of,
)
from hypothesis import given
from hypothesis import strategies as st

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional import random as nr
from neurosurgeon.functional import reinit as FR

LEARNED_CLASSES = [s + x for s in LEARNED for x in SUFFIXES]
RANDOM_ABLATIONS = ["random_ablate", "randomly_sampled", "complement_sampled"]


def _all_ones_(layer):
    """Mask parameters large enough that every mask entry is exactly 1, soft or hard."""
    if isinstance(layer, ns.MagPruneLayer):
        layer.prune_percentage = 0.0
        return
    with torch.no_grad():
        for name in ("weight_mask_params", "bias_mask_params"):
            p = getattr(layer, name, None)
            if p is not None:
                p.fill_(50.0)


# -- construction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CLASSES)
def test_from_layer_shares_weight_and_bias_parameter_objects(name):
    base = base_layer(suffix_of(name))
    layer = getattr(ns, name).from_layer(base, key=0)
    assert layer.weight is base.weight and layer.bias is base.bias


@pytest.mark.parametrize("name", ["ContSparseLinear", "HardConcreteConv1d", "MagPruneConv2d"])
def test_mask_bias_without_bias_constructor_raises_from_layer_warns_and_disables(name):
    cls = getattr(ns, name)
    args = {"Linear": (5, 4), "Conv1d": (2, 4, 3), "Conv2d": (2, 4, 3)}[suffix_of(name)]
    with pytest.raises(ValueError, match="mask_bias"):
        cls(*args, bias=False, mask_bias=True)
    base = base_layer(suffix_of(name), bias=False)
    with pytest.warns(UserWarning, match="mask_bias=False"):
        layer = cls.from_layer(base, mask_bias=True)
    assert layer.mask_bias is False and layer.bias is None
    layer.eval()
    x = example_input(suffix_of(name))
    assert layer(x).shape == base(x).shape


@pytest.mark.parametrize("name", ["ContSparseGPTConv1D", "HardConcreteLinear", "MagPruneConv1d"])
def test_invalid_ablation_and_mask_unit_strings_raise_naming_the_options(name):
    cls = getattr(ns, name)
    base = base_layer(suffix_of(name))
    with pytest.raises(ValueError, match=r"ablation.*'none'.*'zero_ablate'.*'random_ablate'"):
        cls.from_layer(base, ablation="zero")
    layer = cls.from_layer(base)
    with pytest.raises(ValueError, match=r"ablation.*complement_sampled"):
        layer.ablation = "complement"
    if not name.startswith("MagPrune"):
        with pytest.raises(ValueError, match=r"mask_unit.*'weight'.*'neuron'"):
            cls.from_layer(base, mask_unit="neurons")
        with pytest.raises(ValueError, match=r"mask_unit.*'weight'.*'neuron'"):
            layer.mask_unit = "unit"


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (ns.ContSparseLinear, dict(temperature=0.0), "temperature"),
        (ns.ContSparseLinear, dict(temperature=float("inf")), "temperature"),
        (ns.HardConcreteLinear, dict(mask_init_percentage=1.5), "mask_init_percentage"),
        (ns.MagPruneLinear, dict(prune_percentage=-0.2), "prune_percentage"),
    ],
)
def test_invalid_hyper_parameters_raise_value_error_naming_them(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(5, 4, **kwargs)


@pytest.mark.parametrize("name", LEARNED_CLASSES)
@pytest.mark.parametrize("unit", ["weight", "neuron"])
def test_mask_params_have_mask_unit_shape_and_bias_mask_per_element(name, unit):
    layer = mask_layer(name, mask_unit=unit, mask_bias=True)
    kind = layer._layer.kind
    assert tuple(layer.weight_mask_params.shape) == F.unit_shape(tuple(layer.weight.shape), unit, kind=kind)
    assert tuple(layer.bias_mask_params.shape) == tuple(layer.bias.shape)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight", "bias", "weight_mask_params", "bias_mask_params"}


def test_initial_mask_params_follow_each_strategy_init():
    cs = ns.ContSparseLinear(5, 4, mask_init_value=0.3)
    assert (cs.weight_mask_params == 0.3).all()
    hc = ns.HardConcreteLinear(5, 4, mask_init_percentage=0.8)
    assert torch.allclose(hc.weight_mask_params, torch.tensor(0.8 / 0.2).log())
    hc0 = ns.HardConcreteLinear(5, 4, mask_init_percentage=0.0)
    assert torch.allclose(hc0.weight_mask_params, torch.tensor(1e-4 / (1 - 1e-4)).log())


# -- exactness -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CLASSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_ones_mask_and_use_masks_false_reproduce_base_layer_bitwise(name, dtype):
    suffix = suffix_of(name)
    base = base_layer(suffix, dtype)
    x = example_input(suffix, dtype)
    want = base(x)
    layer = getattr(ns, name).from_layer(base, mask_bias=True, key=0)
    mixed_sign_(layer)
    for mode in (True, False):
        layer.train(mode)
        layer.use_masks = False
        assert torch.equal(layer(x), want)
    layer.use_masks = True
    _all_ones_(layer)
    for mode in (True, False):
        layer.train(mode)
        assert torch.equal(layer(x), want)


@pytest.mark.parametrize("name", ALL_CLASSES)
def test_module_forward_equals_functional_mask_parameters(name):
    layer = mask_layer(name, mask_bias=True).eval()
    x = example_input(suffix_of(name))
    wp, bp = layer.mask_tensors()
    p = F.mask_parameters(layer.weight, layer.bias, wp, bp, None, strategy=layer._strategy, kind=layer._layer.kind,
                          hard=True, mask_unit=layer.mask_unit, **layer._hparams())
    assert torch.equal(layer(x), layer._layer.forward(layer, x, p.weight, p.bias))


# -- modes --------------------------------------------------------------------------------------------------
def test_train_returns_self_and_is_recursive():
    model = nn.Sequential(mask_layer("ContSparseLinear"), nn.Sequential(mask_layer("HardConcreteLinear")))
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    layer = model[0]
    assert layer.train() is layer and layer.training
    assert model.train(True) is model and all(m.training for m in model.modules())


@pytest.mark.parametrize("name", LEARNED_CLASSES)
@pytest.mark.parametrize("ablation", ["zero_ablate", "random_ablate", "randomly_sampled", "complement_sampled"])
def test_module_cannot_ablate_while_training(name, ablation):
    layer = mask_layer(name, ablation=ablation).train()
    with pytest.raises(ValueError, match="cannot ablate while training"):
        layer(example_input(suffix_of(name)))
    layer.weight_mask_params.requires_grad_(False)  # frozen mask params make the layer hard
    layer(example_input(suffix_of(name)))


def test_soft_masks_while_training_binary_when_eval_or_frozen():
    layer = mask_layer("ContSparseLinear").train()
    x = example_input("Linear")
    layer(x)
    soft = layer.weight_mask
    assert ((soft > 0) & (soft < 1)).any()
    assert torch.allclose(soft, torch.sigmoid(layer.weight_mask_params).detach())
    layer.eval()
    layer(x)
    assert torch.equal(layer.weight_mask, (layer.weight_mask_params > 0).float())


def test_hard_concrete_training_noise_differs_per_step_and_is_reproducible_from_key():
    a, b = mask_layer("HardConcreteLinear", key=5), mask_layer("HardConcreteLinear", key=5)
    x = example_input("Linear")
    a(x)
    m1 = a.weight_mask.clone()
    a(x)
    assert not torch.equal(m1, a.weight_mask)
    b(x)
    assert torch.equal(m1, b.weight_mask)
    assert int(a.noise_step) == 2


def test_magnitude_masks_same_in_train_and_eval_and_bias_pruned_separately():
    layer = ns.MagPruneLinear.from_layer(base_layer("Linear"), mask_bias=True, prune_percentage=0.5)
    x = example_input("Linear")
    layer.train()
    y_train, wm, bm = layer(x), layer.weight_mask, layer.bias_mask
    layer.eval()
    assert torch.equal(layer(x), y_train) and torch.equal(layer.weight_mask, wm)
    assert int((wm == 0).sum()) == 10 and int((bm == 0).sum()) == 2
    assert torch.equal(bm, F.magnitude_mask(layer.bias, prune_percentage=0.5))
    assert layer.mask_unit == "weight"
    with pytest.raises(ValueError, match="mask_unit"):
        layer.mask_unit = "neuron"


# -- L0 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CLASSES)
@pytest.mark.parametrize("unit", ["weight", "neuron"])
def test_calculate_l0_soft_surrogate_while_training_count_while_hard(name, unit):
    if name.startswith("MagPrune") and unit == "neuron":
        pytest.skip("magnitude pruning has weight units only")
    kwargs = {} if name.startswith("MagPrune") else dict(mask_unit=unit)
    layer = mask_layer(name, mask_bias=True, **kwargs)
    assert layer.calculate_max_l0() == layer.weight.numel() + layer.bias.numel()
    layer.eval()
    layer(example_input(suffix_of(name)))
    hard = layer.calculate_l0()
    assert float(hard) == float(layer.weight_mask.sum() + layer.bias_mask.sum())
    if name.startswith("MagPrune"):
        return
    layer.train()
    soft = layer.calculate_l0()
    assert soft.requires_grad
    scale = layer.weight.numel() // layer.weight_mask_params.numel()
    theta, beta = layer.weight_mask_params, layer.temperature
    if name.startswith("ContSparse"):
        want = torch.sigmoid(beta * theta).sum() * scale + torch.sigmoid(beta * layer.bias_mask_params).sum()
    else:
        shift = beta * torch.log(torch.tensor(0.1 / 1.1))
        want = torch.sigmoid(theta - shift).sum() * scale + torch.sigmoid(layer.bias_mask_params - shift).sum()
    assert torch.allclose(soft, want)
    soft.backward()
    assert layer.weight_mask_params.grad is not None and layer.weight.grad is None


def test_calculate_max_l0_counts_bias_only_when_masked():
    assert ns.ContSparseLinear(5, 4).calculate_max_l0() == 20
    assert ns.ContSparseLinear(5, 4, mask_bias=True).calculate_max_l0() == 24
    assert ns.HardConcreteConv2d(2, 4, 3, mask_unit="neuron").calculate_max_l0() == 72


# -- masks after forward ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CLASSES)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_weight_and_bias_mask_after_forward_are_the_applied_masks(name, ablation):
    unit = {} if name.startswith("MagPrune") else dict(mask_unit="neuron" if "Conv" in name else "weight")
    layer = mask_layer(name, ablation=ablation, mask_bias=True, key=3, **unit).eval()
    layer(example_input(suffix_of(name)))
    wm, bm = layer.weight_mask, layer.bias_mask
    assert wm.shape == layer.weight.shape and bm.shape == layer.bias.shape
    assert wm.dtype == layer.weight.dtype
    p = layer.masked_parameters()
    if ablation == "random_ablate":
        r = FR.reinit_weight(nr.split(layer.mask_key, 4)[2], layer._layer.kind, layer.weight)
        assert torch.equal(p.weight, layer.weight * wm + r * (1 - wm))
    else:
        assert torch.equal(p.weight, layer.weight * wm)
        assert torch.equal(p.bias, layer.bias * bm)
    if ablation in ("randomly_sampled", "complement_sampled"):
        layer.ablation = "none"
        layer(example_input(suffix_of(name)))
        h = layer.weight_mask
        assert int((wm == 0).sum()) == int(h.sum())
        if ablation == "complement_sampled":
            assert (wm[h == 1] == 1).all()


def test_deepcopy_works_after_a_training_forward():
    layer = mask_layer("HardConcreteLinear", mask_bias=True).train()
    x = example_input("Linear")
    layer(x)
    twin = copy.deepcopy(layer)
    assert twin.weight is not layer.weight and torch.equal(twin.weight, layer.weight)
    assert torch.equal(twin.mask_key, layer.mask_key) and torch.equal(twin.noise_step, layer.noise_step)
    assert torch.equal(twin(x), layer(x))


def test_weight_mask_is_none_before_first_forward():
    layer = ns.ContSparseLinear(5, 4)
    assert layer.weight_mask is None and layer.bias_mask is None


# -- resampling and caching --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ablation", RANDOM_ABLATIONS)
def test_random_masks_reused_between_forwards_and_force_resample_draws_once(ablation):
    layer = mask_layer("ContSparseLinear", ablation=ablation, key=7).eval()
    layer.weight_mask_params.data = torch.full_like(layer.weight_mask_params, -1.0)
    layer.weight_mask_params.data[:, :2] = 1.0  # h: 8 of 20 entries
    x = example_input("Linear")
    y1 = layer(x)
    assert torch.equal(layer(x), y1) and torch.equal(layer(x), y1)
    assert layer.force_resample is False
    layer.force_resample = True
    assert layer.force_resample is True
    y2 = layer(x)
    assert layer.force_resample is False
    assert not torch.equal(y2, y1)
    assert torch.equal(layer(x), y2)


def test_random_masks_are_a_function_of_the_key_across_layers():
    a = mask_layer("HardConcreteConv2d", ablation="randomly_sampled", key=11).eval()
    b = mask_layer("HardConcreteConv2d", ablation="randomly_sampled", key=11).eval()
    x = example_input("Conv2d")
    assert torch.equal(a(x), b(x))
    c = mask_layer("HardConcreteConv2d", ablation="randomly_sampled", key=12).eval()
    assert not torch.equal(a(x), c(x))


def test_module_randomness_reproducible_from_global_seed_when_no_key_given():
    torch.manual_seed(123)
    k1 = ns.ContSparseLinear(5, 4).mask_key.clone()
    torch.manual_seed(123)
    assert torch.equal(ns.ContSparseLinear(5, 4).mask_key, k1)


@pytest.mark.parametrize("name", ["ContSparseLinear", "HardConcreteGPTConv1D"])
@pytest.mark.parametrize("ablation", ["none", "randomly_sampled", "complement_sampled"])
def test_cached_masks_never_stale_after_optimizer_step_or_inplace_edits(name, ablation):
    layer = mask_layer(name, ablation=ablation, mask_bias=True, key=1)
    x = example_input(suffix_of(name))
    opt = torch.optim.SGD([layer.weight_mask_params, layer.bias_mask_params], lr=10.0)

    def check():
        h = (layer.weight_mask_params > 0).to(layer.weight.dtype)
        hb = layer.bias_mask_params > 0
        too_big = 2 * int(h.sum()) > h.numel() or 2 * int(hb.sum()) > hb.numel()
        if ablation == "complement_sampled" and too_big:
            with pytest.raises(ValueError, match="complement"):
                layer(x)
            return
        y = layer(x)
        fresh = copy.deepcopy(layer)
        fresh._cache = None
        assert torch.equal(fresh(x), y)
        if ablation == "none":
            assert torch.equal(layer.weight_mask, h.expand_as(layer.weight))

    layer.eval()
    check()
    layer.train()
    layer.ablation = "none"
    layer(x).square().sum().backward()
    opt.step()  # large steps flip signs of theta
    layer.ablation = ablation
    layer.eval()
    check()
    with torch.no_grad():
        layer.weight_mask_params.mul_(-1)
    check()
    layer.weight_mask_params.data[0].fill_(3.0)  # .data edits bump no version counter
    check()
    layer.weight_mask_params.data = -layer.weight_mask_params.data
    check()
    layer.bias_mask_params.data.neg_()
    check()


def test_magnitude_mask_follows_weight_edits_made_through_data():
    layer = ns.MagPruneLinear.from_layer(base_layer("Linear"), ablation="randomly_sampled", prune_percentage=0.5, key=0)
    x = example_input("Linear")
    layer(x)
    assert int((layer.weight_mask == 0).sum()) == 10
    layer.weight.data.zero_()
    layer.weight.data[0, 0] = 1.0
    layer.prune_percentage = 0.0  # h = all ones now: 20 sampled zeros
    layer(x)
    assert int((layer.weight_mask == 0).sum()) == 20


def test_non_finite_mask_params_raise_when_made_hard():
    layer = mask_layer("ContSparseLinear")
    with torch.no_grad():
        layer.weight_mask_params[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        layer.eval()


# -- gradients -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LEARNED_CLASSES)
def test_gradients_reach_mask_params_never_frozen_base_weights(name):
    layer = mask_layer(name, mask_bias=True).train()
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    layer(example_input(suffix_of(name))).square().sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.weight_mask_params.grad is not None and layer.weight_mask_params.grad.abs().sum() > 0
    assert layer.bias_mask_params.grad is not None


# -- state dicts --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CLASSES)
def test_state_dict_round_trip_reproduces_every_mode_strictly(name):
    unit = {} if name.startswith("MagPrune") else dict(mask_unit="neuron" if "Conv" in name else "weight")
    src = mask_layer(name, key=21, mask_bias=True, **unit)
    src.train()
    x = example_input(suffix_of(name))
    src(x)  # advances the hard-concrete noise counter
    sd = src.state_dict()
    assert {"weight", "bias", "mask_key"} <= set(sd)
    dst = mask_layer(name, key=99, mask_bias=True, **unit)
    with torch.no_grad():
        for p in dst.parameters():
            p.add_(1.0)
    dst.load_state_dict(sd, strict=True)
    for mode in (True, False):
        for ablation in ABLATIONS if not mode or name.startswith("MagPrune") else ["none"]:
            src.train(mode), dst.train(mode)
            src.ablation = dst.ablation = ablation
            assert torch.equal(src(x), dst(x)), (mode, ablation)


@pytest.mark.parametrize("name", LEARNED_CLASSES)
def test_state_dict_with_only_v0_keys_loads_strictly(name):
    src = mask_layer(name, mask_bias=True, key=4).eval()
    v0 = {k: v for k, v in src.state_dict().items() if k in ("weight", "bias", "weight_mask_params", "bias_mask_params")}
    assert len(v0) == 4
    dst = getattr(ns, name).from_layer(base_layer(suffix_of(name)), mask_bias=True, key=4).eval()
    dst.load_state_dict(v0, strict=True)
    x = example_input(suffix_of(name))
    for ablation in ("none", "zero_ablate", "randomly_sampled"):
        src.ablation = dst.ablation = ablation
        assert torch.equal(src(x), dst(x))


def test_state_dict_load_invalidates_cached_random_masks():
    a = mask_layer("ContSparseLinear", ablation="randomly_sampled", key=1).eval()
    b = mask_layer("ContSparseLinear", ablation="randomly_sampled", key=2).eval()
    x = example_input("Linear")
    ya = a(x)
    b(x)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b(x), ya)


def test_magprune_v0_state_dict_with_weight_and_bias_only_loads_strictly():
    src = ns.MagPruneLinear.from_layer(base_layer("Linear"))
    dst = ns.MagPruneLinear(5, 4)
    dst.load_state_dict({"weight": src.weight.detach().clone(), "bias": src.bias.detach().clone()}, strict=True)
    x = example_input("Linear")
    assert torch.equal(src(x), dst(x))


# -- dtypes and devices ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CLASSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_work_with_float32_mask_params(name, dtype):
    layer = mask_layer(name, dtype=dtype, ablation="none", mask_bias=True)
    x = example_input(suffix_of(name), dtype)
    for mode in (True, False):
        layer.train(mode)
        y = layer(x)
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert layer.weight_mask.dtype == dtype
    if not name.startswith("MagPrune"):
        assert layer.weight_mask_params.dtype == torch.float32
        # the mask is computed in float32 then cast: same as the float32 mask rounded
        want = (layer.weight_mask_params > 0).to(dtype).expand_as(layer.weight)
        assert torch.equal(layer.weight_mask, want)
    layer.eval()
    layer.ablation = "random_ablate"
    assert layer(x).dtype == dtype


def test_float64_weights_get_float64_mask_params():
    layer = ns.HardConcreteLinear(5, 4, dtype=torch.float64)
    assert layer.weight_mask_params.dtype == torch.float64
    assert layer(torch.randn(2, 5, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["ContSparseLinear", "HardConcreteConv2d", "MagPruneGPTConv1D"])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_cuda_layer_matches_cpu_layer(name, ablation):
    cpu = mask_layer(name, ablation=ablation, key=5).eval()
    gpu = copy.deepcopy(cpu).cuda()
    assert gpu.mask_key.is_cuda
    x = example_input(suffix_of(name))
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(gpu.weight_mask.cpu(), cpu.weight_mask)


@pytest.mark.cuda
def test_cuda_bf16_training_step_runs():
    layer = mask_layer("HardConcreteLinear", dtype=torch.bfloat16).cuda().train()
    layer(example_input("Linear", torch.bfloat16).cuda()).float().square().sum().backward()
    assert layer.weight_mask_params.grad.is_cuda


# -- properties over the module shells --------------------------------------------------------------------------------
@given(
    name=st.sampled_from(ALL_CLASSES),
    ablation=st.sampled_from(ABLATIONS),
    unit=st.sampled_from(["weight", "neuron"]),
    key=st.integers(0, 2**32),
    seed=st.integers(0, 1000),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_property_module_masks_binary_and_sampled_counts_exact(name, ablation, unit, key, seed, dtype):
    kwargs = {} if name.startswith("MagPrune") else dict(mask_unit=unit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = mask_layer(name, key=key, dtype=dtype, **kwargs)
    mixed_sign_(layer, seed)
    layer.eval()
    x = example_input(suffix_of(name), dtype, batch=1)
    assert layer(x).dtype == dtype
    assert layer.weight_mask.dtype == dtype
    h = layer.weight_mask.clone()
    layer.ablation = ablation
    if ablation == "complement_sampled" and 2 * int(h.sum()) > h.numel():
        with pytest.raises(ValueError, match="complement"):
            layer(x)
        return
    layer(x)
    m = layer.weight_mask
    assert ((m == 0) | (m == 1)).all()
    if ablation in ("zero_ablate", "random_ablate"):
        assert torch.equal(m, 1 - h)
    if ablation in ("randomly_sampled", "complement_sampled"):
        assert int((m == 0).sum()) == int(h.sum())
    if ablation == "complement_sampled":
        assert (m[h == 1] == 1).all()


# -- convolution configurations and bake ---------------------------------------------------------------------------------
@given(
    dims=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from([0, 1, 2, "same", "valid"]),
    padding_mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    strategy=st.sampled_from(["ContSparse", "HardConcrete", "MagPrune"]),
)
def test_property_conv_configurations_reproduce_base_layer_bitwise(dims, groups, kernel, stride, dilation, padding,
                                                                   padding_mode, strategy):
    if padding == "same":
        stride = 1  # torch refuses padding='same' with strides
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(4, 6, kernel, stride=stride, padding=padding, dilation=dilation,
                                                   groups=groups, padding_mode=padding_mode)
    layer = getattr(ns, f"{strategy}Conv{dims}d").from_layer(conv, key=0)
    x = torch.randn((2, 4, 9) if dims == 1 else (2, 4, 9, 8))
    want = conv(x)
    layer.use_masks = False
    assert torch.equal(layer(x), want)
    layer.use_masks = True
    if strategy == "MagPrune":
        layer.prune_percentage = 0.0
    else:
        with torch.no_grad():
            layer.weight_mask_params.fill_(50.0)
    assert torch.equal(layer.eval()(x), want)


@pytest.mark.parametrize("name", ALL_CLASSES)
@pytest.mark.parametrize("ablation", ["none", "zero_ablate", "random_ablate", "complement_sampled"])
def test_bake_returns_base_layer_with_same_output(name, ablation):
    layer = mask_layer(name, ablation=ablation, mask_bias=True, key=8).eval()
    x = example_input(suffix_of(name))
    baked = layer.bake()
    assert type(baked) is type(base_layer(suffix_of(name)))
    assert baked.weight is not layer.weight and baked.weight.is_leaf
    assert torch.equal(baked(x), layer(x))


@pytest.mark.parametrize("name", ["ContSparseGPTConv1D", "HardConcreteLinear", "MagPruneConv2d"])
def test_bake_draws_nothing_from_global_rng(name):
    layer = mask_layer(name, ablation="random_ablate").eval()
    state = torch.get_rng_state()
    layer.bake()
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", LEARNED_CLASSES)
def test_toggling_mask_bias_keeps_the_learned_weight_mask(name):
    layer = mask_layer(name)
    theta = layer.weight_mask_params
    before = theta.detach().clone()
    layer.mask_bias = True
    assert layer.weight_mask_params is theta and torch.equal(theta, before)
    assert layer.bias_mask_params.shape == layer.bias.shape
    layer.eval()
    layer(example_input(suffix_of(name)))
    assert layer.bias_mask is not None
    layer.mask_bias = False
    assert not hasattr(layer, "bias_mask_params") and torch.equal(layer.weight_mask_params, before)
    layer(example_input(suffix_of(name)))
    assert layer.bias_mask is None


@pytest.mark.parametrize("name", ["ContSparseConv2d", "HardConcreteGPTConv1D"])
def test_changing_mask_unit_reshapes_weight_mask_and_keeps_bias_mask(name):
    layer = mask_layer(name, mask_bias=True)
    bias_theta = layer.bias_mask_params
    before = bias_theta.detach().clone()
    layer.mask_unit = "neuron"
    kind = layer._layer.kind
    assert tuple(layer.weight_mask_params.shape) == F.unit_shape(tuple(layer.weight.shape), "neuron", kind=kind)
    assert layer.bias_mask_params is bias_theta and torch.equal(bias_theta, before)
    layer.eval()
    layer(example_input(suffix_of(name)))
    assert layer.weight_mask.shape == layer.weight.shape


@pytest.mark.parametrize("name", ALL_CLASSES)
def test_public_configuration_accessors_describe_the_layer(name):
    layer = mask_layer(name)
    strategy = {"ContSparse": "continuous_sparsification", "HardConcrete": "hard_concrete",
                "MagPrune": "magnitude_pruning"}[next(p for p in ("ContSparse", "HardConcrete", "MagPrune") if name.startswith(p))]
    assert layer.strategy == strategy
    assert layer.layer_kind == {"Linear": "linear", "GPTConv1D": "gpt_conv1d", "Conv1d": "conv1d",
                                "Conv2d": "conv2d"}[suffix_of(name)]
    wp, _ = layer.mask_tensors()
    assert wp is (layer.weight if strategy == "magnitude_pruning" else layer.weight_mask_params)
    # the accessors feed the functional core: it reproduces the layer's eval output
    layer.eval()
    x = example_input(suffix_of(name))
    p = ns.functional.mask_parameters(layer.weight, layer.bias, *layer.mask_tensors(), None, strategy=layer.strategy,
                                      kind=layer.layer_kind, hard=True, mask_unit=layer.mask_unit, **layer.mask_hparams)
    assert torch.equal(p.weight, layer.masked_parameters().weight)
    y = ns.functional.layer_forward(layer.layer_kind, x, p.weight, p.bias,
                                    **{a: getattr(layer, a) for a in ("stride", "padding", "dilation", "groups")
                                       if hasattr(layer, a)})
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    with pytest.raises(AttributeError):
        layer.strategy = "hard_concrete"
