"""Magnitude masks re-verified from a threshold certificate (functional/magnitude.py).

Any tau with exactly n - k entries of |w| above it certifies {|w| > tau} as the kept set, so a
hint can speed a mask up but never change it: these tests hold the hinted path to the plain
one for every hint.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import neurosurgeon.functional as F
from neurosurgeon.functional import magnitude as magnitude_module
from neurosurgeon.functional import random as nr
from neurosurgeon.functional import magnitude as FM
from neurosurgeon.functional import layer as FL

dtypes = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])


def _weight(n, dtype, seed, ties):
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    if ties:
        w = torch.round(w * 2) / 2  # many equal magnitudes, so ties often straddle the split
    return w.to(dtype)


def _straddles(w, k):
    """Whether the k-th and (k+1)-th smallest |w| are equal (no threshold can split them)."""
    s = w.abs().flatten().sort().values
    return bool(s[k - 1] == s[k])


@given(st.integers(2, 300), dtypes, st.floats(0.01, 0.99), st.integers(0, 2**32), st.booleans(),
       st.sampled_from(["none", "own", "other", "random"]))
def test_property_any_hint_gives_the_plain_mask_and_tau_certifies_it(n, dtype, p, seed, ties, hint_kind):
    w = _weight(n, dtype, seed, ties)
    k = FM.num_pruned(n, p)
    hint = {"none": None,
            "own": FM.magnitude_mask_and_threshold(w, prune_percentage=p)[1],
            "other": FM.magnitude_mask_and_threshold(_weight(n, dtype, seed + 1, ties), prune_percentage=p)[1],
            "random": torch.rand((), generator=torch.Generator().manual_seed(seed)).to(dtype)}[hint_kind]
    m, tau = FM.magnitude_mask_and_threshold(w, prune_percentage=p, threshold_hint=hint)
    assert torch.equal(m, F.magnitude_mask(w, prune_percentage=p))
    if 0 < k < n:
        assert (tau is None) == _straddles(w, k)
    if tau is not None:
        assert tau.shape == () and tau.dtype == dtype
        assert torch.equal(m, (w.abs() > tau).to(dtype))
        assert int((w.abs() > tau).sum()) == n - k


@given(st.integers(2, 200), st.floats(0.05, 0.95), st.integers(0, 2**32))
def test_property_a_certifying_hint_is_reused_as_is(n, p, seed):
    w = _weight(n, torch.float32, seed, ties=False)
    m, tau = FM.magnitude_mask_and_threshold(w, prune_percentage=p)
    if tau is None:  # only for p * n rounding to 0 or n
        assert FM.num_pruned(n, p) in (0, n)
        return
    m2, tau2 = FM.magnitude_mask_and_threshold(w * 1.0, prune_percentage=p, threshold_hint=tau)
    assert tau2 is tau and torch.equal(m, m2)


def test_on_a_large_weight_a_certifying_hint_is_returned_as_is_and_a_stale_one_gives_the_plain_mask():
    w = torch.randn(600, 1000, generator=torch.Generator().manual_seed(0))  # > 8 * 65536: sampled selection
    m, tau = FM.magnitude_mask_and_threshold(w, prune_percentage=0.3)
    again, tau_again = FM.magnitude_mask_and_threshold(w, prune_percentage=0.3, threshold_hint=tau)
    assert tau_again is tau and torch.equal(again, m)
    moved = w.clone()
    moved.view(-1)[:1000] *= 100  # 1000 small entries now beat the threshold: the hint no longer certifies
    fresh, _ = FM.magnitude_mask_and_threshold(moved, prune_percentage=0.3, threshold_hint=tau)
    assert torch.equal(fresh, F.magnitude_mask(moved, prune_percentage=0.3))
    assert not torch.equal(fresh, m)


@pytest.mark.parametrize("order", ["random", "sorted", "sample_slots_extreme"])
def test_sampled_selection_equals_kthvalue_for_every_rank_region(order):
    # > 8 * 65536 entries: the Floyd-Rivest bracket and the band gather run. "sample_slots_extreme"
    # puts the largest values exactly where the strided sample looks, so the bracket misses and the
    # full-kthvalue fallback must answer.
    n = 700_001
    x = torch.randn(n, generator=torch.Generator().manual_seed(7)).abs()
    if order == "sorted":
        x = x.sort().values
    elif order == "sample_slots_extreme":
        x[:: n // magnitude_module._SAMPLE] = 1e6
    for k in (1, 37, n // 5, n // 2, n - 40, n):
        assert torch.equal(magnitude_module._kth_smallest(x, k), torch.kthvalue(x, k).values), k


def test_hint_of_another_dtype_is_ignored():
    w = torch.randn(50, generator=torch.Generator().manual_seed(3))
    m, tau = FM.magnitude_mask_and_threshold(w, prune_percentage=0.4)
    m64, tau64 = FM.magnitude_mask_and_threshold(w.double(), prune_percentage=0.4, threshold_hint=tau)
    assert tau64.dtype == torch.float64 and torch.equal(m64, m.double())


def test_under_vmap_the_value_independent_path_runs_and_matches():
    w = torch.randn(4, 30, generator=torch.Generator().manual_seed(5))
    batched = torch.func.vmap(lambda x: FM.magnitude_mask_and_threshold(x, prune_percentage=0.5)[0])(w)
    assert torch.equal(batched, torch.stack([F.magnitude_mask(x, prune_percentage=0.5) for x in w]))


def test_layer_masks_takes_precomputed_subnetworks_and_checks_their_shape():
    w, b = torch.randn(4, 6), torch.randn(4)
    theta = torch.randn(4, 6)
    h = F.hard_mask("continuous_sparsification", theta)
    for ablation in ("none", "zero_ablate", "random_ablate"):
        kw = dict(strategy="continuous_sparsification", kind="linear", hard=True, ablation=ablation)
        given_h = FL.layer_masks(w, b, theta, None, nr.key(2), subnetworks=(h, None), **kw)
        plain = FL.layer_masks(w, b, theta, None, nr.key(2), **kw)
        assert all((a is None and c is None) or torch.equal(a, c) for a, c in zip(given_h, plain))
    fake = torch.ones_like(h)  # used as given, not recomputed from theta
    kw["ablation"] = "none"
    assert FL.layer_masks(w, b, theta, None, None, subnetworks=(fake, None), **kw)[0] is fake
    with pytest.raises(ValueError, match="subnetworks"):
        FL.layer_masks(w, b, theta, None, None, subnetworks=(h[:2], None), **kw)
