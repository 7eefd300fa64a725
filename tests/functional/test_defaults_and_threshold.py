"""Every default is defined once and every entry point agrees with it; the hard-concrete hard
mask is 1[theta > tau] with tau computed in float64, the same in every dtype."""

import inspect
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional import layer as FL
from neurosurgeon.functional import random as nr

ROWS = F.STRATEGIES
PAPER_FUNCTIONS = [getattr(F, name) for name in F.__all__ if callable(getattr(F, name))]


def _default(fn, name):
    p = inspect.signature(fn).parameters.get(name)
    return None if p is None else p.default


@pytest.mark.parametrize("strategy", sorted(ROWS))
def test_every_entry_point_has_the_tables_defaults(strategy):
    row = ROWS[strategy]
    entry_points = [getattr(ns, row.class_prefix + k.v0_name) for k in F.KINDS.values()]
    entry_points += [e.from_layer for e in entry_points[:1]]
    for fn in entry_points:
        for name, value in row.hparams.items():
            assert _default(fn, name) == value, (fn, name)
    checked = 0
    for fn in PAPER_FUNCTIONS:  # the per-paper functions the row calls define the defaults
        for name, value in row.hparams.items():
            if fn.__name__.startswith(strategy.split("_")[0]) and name in inspect.signature(fn).parameters:
                assert _default(fn, name) == value, (fn, name)
                checked += 1
    assert checked > 0


def test_the_same_call_gives_the_same_mask_through_every_entry_point():
    theta, key = torch.randn(5, 4), nr.key(3)
    layer = ns.HardConcreteLinear(4, 5, key=0).train()
    via_core = F.hard_concrete_mask(theta, key)
    via_row = ROWS["hard_concrete"].soft(theta, key, unit=FL.elementwise_unit(theta.shape), **ROWS["hard_concrete"].hparams)
    assert torch.equal(via_core, via_row)
    # a layer's key is split four ways; the weight's noise comes from the first part
    via_layer_fn = F.mask_parameters(layer.weight, None, theta, None, key, strategy="hard_concrete", kind="linear",
                                     hard=False).weight_mask
    assert torch.equal(via_layer_fn, F.hard_concrete_mask(theta, nr.split(key, 4)[0]))
    assert torch.equal(F.mask_l0("hard_concrete", theta, 20, hard=False), F.hard_concrete_l0(theta))
    assert layer.mask_hparams == ROWS["hard_concrete"].hparams


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@given(st.lists(st.floats(-1e-3, 1e-3, allow_nan=False), min_size=1, max_size=32),
       st.sampled_from([(-0.1, 1.1), (-0.5, 1.2), (-0.05, 1.3)]))
def test_hard_concrete_hard_mask_is_theta_above_tau_in_every_dtype(values, stretch):
    left, right = stretch
    tau = math.log((0.5 - left) / (right - 0.5)) if abs(left + right - 1) > 1e-12 else 0.0
    for dtype in DTYPES:
        theta = torch.tensor(values, dtype=torch.float64).to(dtype)
        want = (theta.to(torch.float64) > tau).to(dtype)  # exact: every dtype widens to float64
        assert torch.equal(F.hard_concrete_hard_mask(theta, left_stretch=left, right_stretch=right), want), dtype


def test_hard_concrete_threshold_is_zero_at_the_defaults_and_theta_equal_tau_is_pruned():
    for dtype in DTYPES:
        h = F.hard_mask("hard_concrete", torch.tensor([0.0, -1e-17, 1e-3, 5e-3], dtype=dtype))
        assert h.tolist() == [0.0, 0.0, 1.0, 1.0], dtype
    for dtype in (torch.float32, torch.float64):  # a fresh layer keeps the same weights in every dtype
        layer = ns.HardConcreteLinear(4, 3, key=0, dtype=dtype).eval()
        assert float(layer.calculate_l0()) == 0.0
