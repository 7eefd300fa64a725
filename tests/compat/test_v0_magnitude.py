"""``rule="v0"`` reproduces NeuroSurgeon 0.1.0's magnitude-pruning masks exactly; the default
rule stays the round(p * n) smallest |w|."""

from __future__ import annotations

import functools
import inspect
import pathlib

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional.magnitude import v0_magnitude_mask

v0_magprune = pytest.importorskip("NeuroSurgeon.Masking.magprune_layer")

pytestmark = pytest.mark.usefixtures("one_thread")

# Values drawn from a small set make ties (at the quantile too); mixed signs tell the rules apart.
_VALUES = st.one_of(st.integers(-3, 3).map(float), st.floats(-2, 2, allow_nan=False, width=32))
_P = st.one_of(st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 0.75, 0.8, 0.9, 1.0]), st.floats(0, 1))


def _v0_mask(weight: torch.Tensor, p: float, ablation: str = "none") -> torch.Tensor:
    layer = v0_magprune.MagPruneLinear(weight.shape[1], weight.shape[0], prune_percentage=p, ablation=ablation)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer._compute_mask("weight_mask_params")


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 6), st.integers(1, 7), st.data(), _P, st.sampled_from([torch.float32, torch.float64]))
def test_rule_v0_gives_v0s_masks_exactly(rows, cols, data, p, dtype):
    weight = torch.tensor(data.draw(st.lists(_VALUES, min_size=rows * cols, max_size=rows * cols)),
                          dtype=dtype).reshape(rows, cols)
    expected = _v0_mask(weight.float(), p) if dtype == torch.float32 else None
    got = F.magnitude_mask(weight, prune_percentage=p, rule="v0")
    flat = weight.reshape(-1)
    # The rule as stated: keep w >= torch.quantile(w, p) (w > q at p = 1), signed values.
    q = torch.quantile(flat, p)
    assert torch.equal(got, ((weight > q) if p == 1.0 else (weight >= q)).to(dtype))
    if expected is not None:
        assert torch.equal(got, expected)
        layer = ns.MagPruneLinear(cols, rows, prune_percentage=p, rule="v0", key=0).eval()
        with torch.no_grad():
            layer.weight.copy_(weight)
        assert torch.equal(layer._compute_mask("weight_mask_params"), expected)
        if p < 1.0:  # zero_ablate is 1 - h in both, except at p = 1 (see docs/porting.md)
            layer.ablation = "zero_ablate"
            assert torch.equal(layer._compute_mask("weight_mask_params"), _v0_mask(weight, p, "zero_ablate"))


@settings(deadline=None, max_examples=25)
@given(st.lists(st.floats(-2, 2, allow_nan=False, width=32), min_size=2, max_size=40, unique=True), _P)
def test_v0_prunes_the_most_negative_ceil_p_n_minus_1_and_the_default_round_p_n_smallest_abs(values, p):
    w = torch.tensor(values)
    n = w.numel()
    v0 = F.magnitude_mask(w, prune_percentage=p, rule="v0")
    rank = float(torch.tensor(p) * (n - 1))  # the rank torch.quantile forms, in float32
    pruned = n if p == 1.0 else int(torch.ceil(torch.tensor(rank)))
    assert int((v0 == 0).sum()) == pruned
    if 0 < pruned < n:
        assert w[v0 == 0].max() < w[v0 == 1].min()  # signed order
    default = F.magnitude_mask(w, prune_percentage=p)
    assert int((default == 0).sum()) == round(p * n)
    assert torch.equal(default, F.magnitude_mask(w, prune_percentage=p, rule="abs"))


def test_v0_rule_is_exact_on_the_sampled_selection_path_and_under_vmap():
    w = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    batched = torch.func.vmap(lambda x: v0_magnitude_mask(x, prune_percentage=0.3))(w)
    assert torch.equal(batched, torch.stack([v0_magnitude_mask(x, prune_percentage=0.3) for x in w]))
    big = torch.randn(600_001, generator=torch.Generator().manual_seed(1))  # above the size selection samples at
    for p in (0.3, 0.5):
        assert torch.equal(v0_magnitude_mask(big, prune_percentage=p), (big >= torch.quantile(big, p)).float())
    half = v0_magnitude_mask(w.to(torch.bfloat16), prune_percentage=0.3)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half.float(), v0_magnitude_mask(w.to(torch.bfloat16).float(), prune_percentage=0.3))


def test_rule_is_a_mask_hparam_of_layers_and_configs_and_is_checked():
    assert F.STRATEGIES["magnitude_pruning"].hparams["rule"] == "abs"
    layer = ns.MagPruneConv2d(2, 3, 3, rule="v0", key=0)
    assert layer.rule == "v0" and layer.mask_hparams["rule"] == "v0"
    for bad in ("signed", "V0"):
        with pytest.raises(ValueError, match=f"rule must be one of .*'abs', 'v0'.*got '{bad}'"):
            ns.MagPruneLinear(3, 2, rule=bad)
        with pytest.raises(ValueError, match="rule"):
            F.magnitude_mask(torch.ones(3), rule=bad)
    with pytest.raises(ValueError, match="rule"):
        layer.rule = "signed"
    assert layer.rule == "v0"
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    config = ns.CircuitConfig(mask_method="magnitude_pruning", mask_hparams={"prune_percentage": 0.3, "rule": "v0"},
                              target_layers=["0", "2"], key=0)
    circuit = ns.CircuitModel(config, net)
    for layer in circuit.mask_layers().values():
        assert layer.rule == "v0"
        assert torch.equal(layer._compute_mask("weight_mask_params"), _v0_mask(layer.weight.detach(), 0.3))


def _v0_tests() -> dict:
    """The test functions of 0.1.0's own ``test_magprune.py`` (from its wheel), run against our classes."""
    source = pathlib.Path(inspect.getfile(v0_magprune)).parent / "test" / "test_magprune.py"
    namespace: dict = {}
    exec(compile(source.read_text().replace("from ..magprune_layer import", "from neurosurgeon import"),
                 str(source), "exec"), namespace)
    return namespace


def _with_rule(namespace: dict, rule: str) -> dict:
    out = dict(namespace)
    for cls_name in ("MagPruneLinear", "MagPruneGPTConv1D", "MagPruneConv1d", "MagPruneConv2d"):
        base = getattr(ns, cls_name)
        out[cls_name] = type(cls_name, (base,), {
            "__init__": functools.partialmethod(base.__init__, rule=rule),
            "from_layer": classmethod(lambda cls, *a, _base=base, **k: _base.from_layer.__func__(cls, *a, rule=rule, **k)),
        })
    return out


def _passes(fn, namespace, seed: int) -> bool:
    torch.manual_seed(seed)
    try:
        type(fn)(fn.__code__, namespace)()
    except AssertionError:
        return False
    return True


def test_v0s_test_conv1d_use_mask_passes_against_ours_with_rule_v0_exactly_when_it_passes_against_v0():
    """The test asserts every output differs from the unmasked layer's, which depends on which
    weights the rule prunes: its outcome over seeds is 0.1.0's with ``rule="v0"``."""
    namespace = _v0_tests()
    fn = namespace["test_conv1d_use_mask"]
    original = dict(namespace, MagPruneConv1d=v0_magprune.MagPruneConv1d)
    seeds = range(40)
    theirs = [_passes(fn, original, s) for s in seeds]
    ours_v0 = [_passes(fn, _with_rule(namespace, "v0"), s) for s in seeds]
    ours_abs = [_passes(fn, _with_rule(namespace, "abs"), s) for s in seeds]
    assert ours_v0 == theirs and sum(theirs) > 20
    assert ours_abs != theirs  # the default rule prunes other weights
