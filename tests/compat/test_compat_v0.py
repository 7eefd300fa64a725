"""Compatibility with NeuroSurgeon 0.1.0 state dicts, both directions.

Fixtures in ``tests/compat/fixtures/v0/`` were written by the original library
(``tests/compat/fixtures/make_v0_fixtures.py``): each holds a layer's state dict, an input and the
original's eval outputs for ablation ``none`` and ``zero_ablate``. The forward direction needs
only this package; the reverse direction (ours -> 0.1.0) needs ``NeuroSurgeon`` installed and
is skipped otherwise.

Deliberate differences, tested as such (see docs/porting.md):
- magnitude pruning prunes the smallest |w|; 0.1.0 prunes the smallest signed w;
- convolution ``mask_unit="neuron"`` masks are (out, 1, 1[, 1]) here, (out, 1, *kernel) in
  0.1.0, which is our einops unit ``neurosurgeon.compat.V0_CONV_NEURON_UNITS[kind]``.
"""

from __future__ import annotations

import importlib
import pathlib

import pytest
import torch

import neurosurgeon
import neurosurgeon.functional as F
from neurosurgeon.compat import V0_CONV_NEURON_UNITS, from_v0_state_dict, to_v0_state_dict

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "v0"
ALL = sorted(p.stem for p in FIXTURES.glob("*.pt"))
CLASSES = [f"{s}{t}" for s in ("ContSparse", "HardConcrete", "MagPrune") for t in ("Linear", "GPTConv1D", "Conv1d", "Conv2d")]
CONV_NEURON = [n for n in ALL if n.endswith("_neuron") and "Conv" in n and "GPT" not in n]
DIRECT = [n for n in ALL if n not in CONV_NEURON]


def _fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def _ours(rec: dict, **override) -> neurosurgeon.MaskLayer:
    kwargs = {**rec["kwargs"], **override}
    return getattr(neurosurgeon, rec["class"])(*rec["args"], **kwargs, key=0)


def _v0_unit(rec: dict) -> str:
    """0.1.0's convolution neuron unit as ours, for the fixture's layer kind."""
    return V0_CONV_NEURON_UNITS["conv2d" if rec["class"].endswith("2d") else "conv1d"]


def _eval(layer, x, ablation: str, train: bool = False) -> torch.Tensor:
    layer.train(train)
    layer.ablation = ablation
    with torch.no_grad():
        return layer(x)


def _assert_same(actual, expected):
    # Bitwise on the machine that generated the fixtures; a last-bit tolerance elsewhere.
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


def test_fixture_set_is_complete_and_small():
    assert len(ALL) == 20  # 12 classes + neuron variants of the 8 learned-mask classes
    assert {n.removesuffix("_neuron") for n in ALL} == set(CLASSES)
    assert sum(p.stat().st_size for p in FIXTURES.glob("*")) < 1_000_000


@pytest.mark.parametrize("name", DIRECT)
def test_v0_state_dict_loads_strictly_and_keeps_our_key(name):
    rec = _fixture(name)
    layer = _ours(rec)
    key_before = layer.mask_key.clone()
    result = layer.load_state_dict(rec["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    sd = rec["state_dict"]
    assert torch.equal(layer.weight, sd["weight"]) and torch.equal(layer.bias, sd["bias"])
    for pname in ("weight_mask_params", "bias_mask_params"):
        if pname in sd:
            assert torch.equal(getattr(layer, pname), sd[pname])
    assert torch.equal(layer.mask_key, key_before)  # 0.1.0 has no key: ours is kept


@pytest.mark.parametrize("name", [n for n in DIRECT if not n.startswith("MagPrune")])
def test_v0_learned_masks_give_the_original_eval_outputs(name):
    rec = _fixture(name)
    layer = _ours(rec)
    layer.load_state_dict(rec["state_dict"], strict=True)
    for ablation in ("none", "zero_ablate"):
        _assert_same(_eval(layer, rec["input"], ablation), rec["outputs"][ablation])


@pytest.mark.parametrize("name", [n for n in DIRECT if n.startswith("ContSparse")])
def test_v0_continuous_sparsification_training_output_matches(name):
    rec = _fixture(name)
    layer = _ours(rec)
    layer.load_state_dict(rec["state_dict"], strict=True)
    _assert_same(_eval(layer, rec["input"], "none", train=True), rec["outputs"]["train_none"])


@pytest.mark.parametrize("name", [n for n in DIRECT if n.startswith("MagPrune")])
def test_v0_magnitude_pruning_matches_on_nonnegative_weights(name):
    """On |w| the sign rule is moot and (p = 0.5, even sizes) the counts agree: same outputs."""
    rec = _fixture(name)
    layer = _ours(rec)
    sd = dict(rec["state_dict"])
    sd["weight"], sd["bias"] = sd["weight"].abs(), sd["bias"].abs()
    layer.load_state_dict(sd, strict=True)
    for ablation in ("none", "zero_ablate"):
        _assert_same(_eval(layer, rec["input"], ablation), rec["outputs"]["abs_" + ablation])


@pytest.mark.parametrize("name", [n for n in DIRECT if n.startswith("MagPrune")])
def test_v0_magnitude_pruning_uses_abs_value_by_spec(name):
    """Deliberate difference: 0.1.0 prunes the most negative weights, we the smallest |w|."""
    rec = _fixture(name)
    layer = _ours(rec)
    layer.load_state_dict(rec["state_dict"], strict=True)
    x, w, b = rec["input"], layer.weight.detach(), layer.bias.detach()
    p = rec["kwargs"]["prune_percentage"]
    conv = layer._layer.conv_args(layer) if hasattr(layer._layer, "conv_args") else {}
    for ablation in ("none", "zero_ablate"):
        hw = F.magnitude_mask(w, prune_percentage=p)
        hb = F.magnitude_mask(b, prune_percentage=p)
        # The pruned entries are exactly the round(p n) smallest |w|.
        assert int((hw == 0).sum()) == round(p * w.numel())
        assert w.abs()[hw == 1].min() >= w.abs()[hw == 0].max()
        if ablation == "zero_ablate":
            hw, hb = 1 - hw, 1 - hb
        expected = F.layer_forward(layer._layer.kind, x, w * hw, b * hb, **conv)
        got = _eval(layer, x, ablation)
        assert torch.equal(got, expected)
        assert not torch.allclose(got, rec["outputs"][ablation])  # the fixture exercises the difference


@pytest.mark.parametrize("name", ALL)
def test_v0_l0_agrees_except_hard_concrete_neuron_penalty(name):
    """Hard L0 counts and max L0 agree everywhere; the soft L0 agrees except for hard-concrete
    neuron masks, where 0.1.0 sums the penalty per mask unit and we count it at
    the weight's size (each neuron entry weighs as many weights as it gates)."""
    rec = _fixture(name)
    layer = _ours(rec, mask_unit=_v0_unit(rec)) if name in CONV_NEURON else _ours(rec)
    layer.load_state_dict(rec["state_dict"], strict=True)
    layer.eval()
    assert float(layer.calculate_l0()) == rec["l0"]["eval"]
    assert layer.calculate_max_l0() == rec["l0"]["max"]
    layer.train()
    soft = float(layer.calculate_l0().detach())
    if name.startswith("HardConcrete") and name.endswith("_neuron"):
        assert soft > rec["l0"]["train"]  # scaled by the inputs per neuron
        theta, b_theta = layer.weight_mask_params.detach(), layer.bias_mask_params.detach()
        per = layer.weight.numel() // theta.numel()
        expected = (F.hard_concrete_l0(theta) * per + F.hard_concrete_l0(b_theta)).item()
        assert soft == pytest.approx(expected, rel=1e-6)
    else:
        assert soft == pytest.approx(rec["l0"]["train"], rel=1e-5)


@pytest.mark.parametrize("name", CONV_NEURON)
def test_v0_conv_neuron_masks_fail_loudly_in_our_neuron_unit_and_load_in_theirs(name):
    rec = _fixture(name)
    layer = _ours(rec)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(RuntimeError, match="size mismatch for weight_mask_params"):
        layer.load_state_dict(rec["state_dict"], strict=True)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())  # nothing half-loaded
    converted = from_v0_state_dict(rec["state_dict"])
    assert "_base_layer.weight" not in converted
    assert converted["weight_mask_params"] is rec["state_dict"]["weight_mask_params"]  # 0.1.0's theta, as is
    layer = _ours(rec, mask_unit=_v0_unit(rec))
    layer.load_state_dict(converted, strict=True)
    assert layer.weight_mask_params.shape == (layer.weight.shape[0], 1, *layer.weight.shape[2:])
    for ablation in ("none", "zero_ablate"):
        _assert_same(_eval(layer, rec["input"], ablation), rec["outputs"][ablation])
    if "train_none" in rec["outputs"]:  # continuous sparsification: sigma(beta theta) per entry agrees too
        _assert_same(_eval(layer, rec["input"], "none", train=True), rec["outputs"]["train_none"])


def test_from_v0_state_dict_passes_direct_fixtures_through():
    for name in DIRECT:
        sd = _fixture(name)["state_dict"]
        out = from_v0_state_dict(sd)
        assert set(out) == {k for k in sd if not k.startswith("_base_layer.")}
        assert all(out[k] is sd[k] for k in out)


# -- ours -> 0.1.0 ----------------------------------------------------------------------------------

_ARGS = {"Linear": ((5, 4), (3, 5)), "GPTConv1D": ((4, 5), (3, 5)), "Conv1d": ((2, 4, 3), (2, 2, 6)), "Conv2d": ((2, 4, 2), (2, 2, 4, 4))}


def _our_layer(class_name: str, seed: int = 0):
    """One of ours with mixed-sign weights and mask parameters (|w| for magnitude pruning)."""
    suffix = next(s for s in _ARGS if class_name.endswith(s))
    args, in_shape = _ARGS[suffix]
    kwargs = dict(ablation="none", mask_bias=True)
    if class_name.startswith("MagPrune"):
        kwargs["prune_percentage"] = 0.5
    g = torch.Generator().manual_seed(seed)
    layer = getattr(neurosurgeon, class_name)(*args, **kwargs, key=seed)
    with torch.no_grad():
        for p in layer.parameters():
            v = torch.randn(p.shape, generator=g)
            p.copy_(v.sign() * (v.abs() + 0.1))
        if class_name.startswith("MagPrune"):  # 0.1.0 prunes by signed value: compare where it is moot
            layer.weight.abs_()
            layer.bias.abs_()
    return layer, args, kwargs, torch.randn(in_shape, generator=g)


@pytest.mark.parametrize("class_name", CLASSES)
def test_to_v0_state_dict_drops_our_buffers_and_adds_conv_base_layer(class_name):
    layer, *_ = _our_layer(class_name)
    sd = layer.state_dict()
    v0 = to_v0_state_dict(sd)
    assert "mask_key" not in v0 and "noise_step" not in v0
    conv = layer.weight.dim() > 2
    assert ("_base_layer.weight" in v0) == conv
    if conv:
        assert v0["_base_layer.weight"] is sd["weight"] and v0["_base_layer.bias"] is sd["bias"]
    # ... and what it writes loads back into ours, strictly, with the same outputs.
    again, *_ = _our_layer(class_name, seed=1)
    again.load_state_dict(v0, strict=True)
    for a, b in zip(layer.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_to_v0_state_dict_handles_models_and_leaves_other_modules_alone():
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 2, 3), neurosurgeon.HardConcreteConv1d(2, 4, 3, key=1), neurosurgeon.ContSparseLinear(3, 2, key=2)
    )
    v0 = to_v0_state_dict(model.state_dict())
    assert "0._base_layer.weight" not in v0 and "0.weight" in v0
    assert "1._base_layer.weight" in v0 and "1._base_layer.bias" in v0
    assert not any(k.endswith(("mask_key", "noise_step")) for k in v0)
    assert "2._base_layer.weight" not in v0
    fresh = torch.nn.Sequential(
        torch.nn.Conv1d(2, 2, 3), neurosurgeon.HardConcreteConv1d(2, 4, 3, key=3), neurosurgeon.ContSparseLinear(3, 2, key=4)
    )
    fresh.load_state_dict(v0, strict=True)  # our loader accepts 0.1.0's model-level keys too
    assert torch.equal(fresh[1].weight, model[1].weight)


def test_compat_helpers_reject_non_mappings():
    for fn in (to_v0_state_dict, from_v0_state_dict):
        with pytest.raises(TypeError, match="state_dict must be a mapping"):
            fn([("weight", torch.zeros(1))])


def _original():
    try:
        return {
            "ContSparse": importlib.import_module("NeuroSurgeon.Masking.contsparse_layer"),
            "HardConcrete": importlib.import_module("NeuroSurgeon.Masking.hardconcrete_layer"),
            "MagPrune": importlib.import_module("NeuroSurgeon.Masking.magprune_layer"),
        }
    except ImportError:
        return None


needs_original = pytest.mark.skipif(
    _original() is None, reason="NeuroSurgeon 0.1.0 is not installed (pip install neurosurgeon==0.1.0 --no-deps)"
)


@needs_original
@pytest.mark.parametrize("class_name", CLASSES)
def test_our_state_dicts_load_into_the_original(class_name):
    ours, args, kwargs, x = _our_layer(class_name)
    strategy = next(s for s in ("ContSparse", "HardConcrete", "MagPrune") if class_name.startswith(s))
    torch.manual_seed(0)
    theirs = getattr(_original()[strategy], class_name)(*args, **kwargs)
    # The original's strict loading rejects our extra buffers: that is what the helper is for.
    with pytest.raises(RuntimeError, match="mask_key"):
        theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.load_state_dict(to_v0_state_dict(ours.state_dict()), strict=True)
    for ablation in ("none", "zero_ablate"):
        theirs.train(False)
        theirs.ablation = ablation
        with torch.no_grad():
            expected = theirs(x)
        _assert_same(_eval(ours, x, ablation), expected)
