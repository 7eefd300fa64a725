"""The functional core's mask rules (strategies, ablations, replacement values), checked on
hand-worked examples, with hypothesis over random shapes, dtypes, mask units, strategies and
ablations, and under ``torch.func`` transforms."""

import math

import pytest
import torch
from _stats import chi2_uniform_pvalue
from hypothesis import assume, given
from hypothesis import strategies as st

import neurosurgeon.functional as F
from neurosurgeon.functional import random as nr
from neurosurgeon.functional import kinds as FK
from neurosurgeon.functional import units as FU
from neurosurgeon.functional import reinit as FR
from neurosurgeon.functional import magnitude as FM
from neurosurgeon.functional import layer as FL

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
KINDS = ["linear", "gpt_conv1d", "conv1d", "conv2d"]


def _weight_shape(kind, out, inp, k=3):
    return {"linear": (out, inp), "gpt_conv1d": (inp, out), "conv1d": (out, inp, k), "conv2d": (out, inp, k, 2)}[kind]


def test_fan_in_matches_torch_init():
    assert FK.fan_in("linear", (5, 7)) == 7
    assert FK.fan_in("gpt_conv1d", (7, 5)) == 7
    assert FK.fan_in("conv2d", (5, 2, 3, 4)) == 24
    assert FK.fan_in("conv1d", (5, 2, 3)) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(5, 2, 3))[0]


# -- continuous sparsification ---------------------------------------------------------------------------
def test_continuous_sparsification_soft_mask_is_sigmoid_of_temperature_times_theta():
    theta = torch.tensor([-2.0, -0.1, 0.0, 0.3, 4.0])
    for beta in (0.5, 1.0, 7.0):
        assert torch.allclose(F.continuous_sparsification_mask(theta, temperature=beta), torch.sigmoid(beta * theta))
    assert torch.allclose(F.continuous_sparsification_l0(theta, temperature=2.0), torch.sigmoid(2 * theta).sum())


def test_continuous_sparsification_hard_mask_is_theta_strictly_positive():
    theta = torch.tensor([-1.0, -0.0, 0.0, 1e-30, 2.0])
    assert F.continuous_sparsification_hard_mask(theta).tolist() == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("beta", [0.0, -1.0, math.inf, math.nan])
def test_temperature_must_be_finite_and_positive(beta):
    with pytest.raises(ValueError, match="temperature"):
        F.continuous_sparsification_mask(torch.zeros(2), temperature=beta)
    with pytest.raises(ValueError, match="temperature"):
        F.hard_concrete_mask(torch.zeros(2), nr.key(0), temperature=beta)


# -- hard concrete -----------------------------------------------------------------------------------------------
def test_hard_concrete_init_is_log_odds_with_clipping():
    assert F.hard_concrete_init(0.5) == 0.0
    assert math.isclose(F.hard_concrete_init(0.9), math.log(0.9 / 0.1))
    assert math.isclose(F.hard_concrete_init(0.0), math.log(1e-4 / (1 - 1e-4)))
    assert math.isclose(F.hard_concrete_init(1.0), math.log((1 - 1e-4) / 1e-4))
    assert math.isclose(F.hard_concrete_init(1e-6), F.hard_concrete_init(0.0))


@pytest.mark.parametrize("p", [-0.01, 1.01, math.nan])
def test_hard_concrete_init_rejects_percentage_outside_unit_interval(p):
    with pytest.raises(ValueError, match="mask_init_percentage"):
        F.hard_concrete_init(p)


def test_hard_concrete_sample_follows_stretched_clamped_concrete_formula_with_the_keys_noise():
    theta = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64)
    k = nr.key(3)
    eps = 1e-6
    words = nr.uniform(k, (6,), minval=eps, maxval=1 - eps).to(torch.float64)  # float32 words of the key's stream
    u = torch.cat((words[0::2], words[1::2]))[:5]  # gate j reads word 2j, then 2(j - 3) + 1: one block per pair
    beta, lo, hi = 2 / 3, -0.1, 1.1
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + theta) / beta)
    want = torch.clamp(s * (hi - lo) + lo, 0, 1)
    assert torch.allclose(F.hard_concrete_mask(theta, k), want)


def test_hard_concrete_sample_reaches_exact_zero_and_one():
    z = F.hard_concrete_mask(torch.zeros(5000), nr.key(1))
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()


def test_hard_concrete_l0_is_sum_sigmoid_theta_minus_beta_log_ratio():
    theta = torch.randn(10, dtype=torch.float64)
    want = torch.sigmoid(theta - (2 / 3) * math.log(0.1 / 1.1)).sum()
    assert torch.allclose(F.hard_concrete_l0(theta), want)


@pytest.mark.parametrize("left, right", [(0.0, 1.1), (-0.1, 1.0), (0.1, 1.1)])
def test_hard_concrete_rejects_stretch_not_straddling_unit_interval(left, right):
    with pytest.raises(ValueError, match="stretch"):
        F.hard_concrete_hard_mask(torch.zeros(2), left_stretch=left, right_stretch=right)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_hard_concrete_half_precision_sample_is_finite_and_in_unit_interval(dtype):
    z = F.hard_concrete_mask(torch.zeros(20000, dtype=dtype), nr.key(4))
    assert z.dtype == dtype and torch.isfinite(z).all() and ((z >= 0) & (z <= 1)).all()
    # the half-precision sample matches the float32 one up to rounding
    z32 = F.hard_concrete_mask(torch.zeros(20000), nr.key(4))
    assert (z.float() - z32).abs().max() < 0.02


# -- magnitude --------------------------------------------------------------------------------------------------
def test_magnitude_prunes_smallest_absolute_values_hand_worked():
    w = torch.tensor([0.3, -0.1, 0.2, 0.05, -0.4])
    assert F.magnitude_mask(w, prune_percentage=0.4).tolist() == [1, 0, 1, 0, 1]
    assert F.magnitude_mask(w, prune_percentage=0.2).tolist() == [1, 1, 1, 0, 1]


def test_magnitude_ties_broken_by_index_for_an_exact_count():
    w = torch.tensor([0.5, -0.2, 0.2, 0.2, -0.2, 0.9])
    # round(0.5 * 6) = 3 pruned among the four tied |w| = 0.2: the first three by index.
    assert F.magnitude_mask(w, prune_percentage=0.5).tolist() == [1, 0, 0, 0, 1, 1]
    assert F.magnitude_mask(torch.zeros(2, 5), prune_percentage=0.3).flatten().tolist() == [0, 0, 0] + [1] * 7


def test_magnitude_count_is_python_round_of_p_times_n():
    w = torch.randn(7)
    for p in (0.0, 0.07, 0.5, 0.93, 1.0):
        assert int((F.magnitude_mask(w, prune_percentage=p) == 0).sum()) == round(p * 7)
    assert FM.num_pruned(10, 0.25) == round(2.5) == 2


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan])
def test_magnitude_rejects_percentage_outside_unit_interval(p):
    with pytest.raises(ValueError, match=r"prune_percentage must be in \[0, 1\]"):
        F.magnitude_mask(torch.ones(3), prune_percentage=p)


def test_magnitude_exact_count_on_more_than_16m_entries():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4100, 4100, generator=g)
    w[:10, :10] = 0.25  # a block of ties right where the threshold may fall
    m = F.magnitude_mask(w, prune_percentage=0.3)
    n = w.numel()
    assert n > 2**24 and m.shape == w.shape
    pruned = m == 0
    assert int(pruned.sum()) == round(0.3 * n)
    assert w.abs()[pruned].max() <= w.abs()[~pruned].min()


# -- ablations ----------------------------------------------------------------------------------------------------
H = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def test_ablation_none_is_h_and_zero_ablate_is_one_minus_h():
    assert torch.equal(F.ablate(H, None, ablation="none"), H)
    assert torch.equal(F.ablate(H, None, ablation="zero_ablate"), 1 - H)
    assert torch.equal(F.ablate(H, None, ablation="random_ablate"), 1 - H)


def test_randomly_sampled_zeros_exactly_sum_h_units_anywhere():
    hits = torch.zeros(10)
    for k in nr.split(nr.key(0), 50):
        m = F.ablate(H, k, ablation="randomly_sampled")
        assert int((m == 0).sum()) == int(H.sum()) and m.dtype == H.dtype
        hits += m == 0
    assert (hits > 0).all()  # every unit, in or out of the subnetwork, gets drawn sometimes


def test_complement_sampled_zeros_exactly_sum_h_units_outside_subnetwork():
    for k in nr.split(nr.key(1), 20):
        m = F.ablate(H, k, ablation="complement_sampled")
        assert int((m == 0).sum()) == int(H.sum())
        assert (m[H == 1] == 1).all()


def test_sampled_masks_uniform_over_units_chi_square():
    h = torch.zeros(20)
    h[:5] = 1
    keys = nr.split(nr.key(2), 2000)
    counts = sum((torch.func.vmap(lambda k: F.complement_sampled_mask(k, h))(keys) == 0).to(torch.int64))
    assert (counts[:5] == 0).all()
    assert chi2_uniform_pvalue(counts[5:]) > 0.01


def test_sampled_masks_at_exact_count_in_bfloat16_beyond_256_ones():
    h = torch.zeros(3000, dtype=torch.bfloat16)
    h[:1001] = 1
    m = F.randomly_sampled_mask(nr.key(0), h)
    assert int((m == 0).sum()) == 1001
    assert float(F.mask_l0("continuous_sparsification", h, 3000, hard=True, applied_mask=h)) == 1001


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_random_ablate_values_drawn_like_kaiming_uniform_init(kind):
    w = torch.empty(_weight_shape(kind, 64, 32))
    bound = 1 / math.sqrt(FK.fan_in(kind, tuple(w.shape)))
    r = FR.reinit_weight(nr.key(0), kind, w)
    assert r.shape == w.shape and (r.abs() <= bound).all()
    assert abs(r.std() - bound / math.sqrt(3)) < 0.05 * bound
    rb = FR.reinit_bias(nr.key(1), kind, w, torch.empty(64))
    assert (rb.abs() <= bound).all() and rb.std() > 0.3 * bound
    # torch's own initialiser has the same bound
    ref = torch.empty_like(w)
    torch.nn.init.kaiming_uniform_(ref, a=math.sqrt(5))
    assert ref.abs().max() <= bound + 1e-7


def test_random_ablate_values_for_gpt_conv1d_are_normal_002_and_zero_bias():
    w = torch.empty(128, 64)
    r = FR.reinit_weight(nr.key(0), "gpt_conv1d", w)
    assert abs(r.std() - 0.02) < 0.001 and abs(r.mean()) < 0.001
    assert torch.equal(FR.reinit_bias(nr.key(1), "gpt_conv1d", w, torch.ones(64)), torch.zeros(64))


def test_random_ablate_replaces_exactly_the_subnetwork_entries():
    w = torch.randn(6, 4)
    theta = torch.randn(6, 4)
    out = F.mask_parameters(w, None, theta, None, nr.key(0), strategy="continuous_sparsification", kind="linear",
                            hard=True, ablation="random_ablate")
    h = theta > 0
    r = FR.reinit_weight(nr.split(nr.key(0), 4)[2], "linear", w)
    assert torch.equal(out.weight[~h], w[~h])
    assert torch.equal(out.weight[h], r[h])


# -- layer_masks: the composition --------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["continuous_sparsification", "hard_concrete"])
@pytest.mark.parametrize("ablation", ["zero_ablate", "random_ablate", "randomly_sampled", "complement_sampled"])
def test_cannot_ablate_while_training(strategy, ablation):
    with pytest.raises(ValueError, match=f"cannot ablate while training: ablation='{ablation}'"):
        FL.layer_masks(torch.ones(2, 2), None, torch.ones(2, 2), None, nr.key(0), strategy=strategy, kind="linear",
                      hard=False, ablation=ablation)


def test_mask_l0_counts_neuron_entries_once_per_weight_in_the_row():
    theta = torch.tensor([[1.0], [-1.0], [2.0]])  # (out, 1) neuron mask for a (3, 5) weight
    assert float(F.mask_l0("continuous_sparsification", theta, 15, hard=True)) == 10
    soft = F.mask_l0("continuous_sparsification", theta, 15, hard=False, temperature=1.0)
    assert torch.allclose(soft, torch.sigmoid(theta).sum() * 5)
    hc = F.mask_l0("hard_concrete", theta, 15, hard=False, temperature=2 / 3)
    assert torch.allclose(hc, F.hard_concrete_l0(theta) * 5)


def test_soft_l0_sums_a_given_soft_mask_only_where_the_term_is_the_mask_sum():
    theta = torch.tensor([[1.0], [-1.0], [2.0]], requires_grad=True)
    soft = F.continuous_sparsification_mask(theta, temperature=2.0)
    given_mask = F.mask_l0("continuous_sparsification", theta, 15, hard=False, applied_mask=soft, temperature=2.0)
    assert torch.equal(given_mask, F.mask_l0("continuous_sparsification", theta, 15, hard=False, temperature=2.0))
    assert given_mask.grad_fn is not None  # the L0 gradient reaches theta through the given mask
    # hard concrete's L0 is eq. 12, not the sum of a noisy gate: a given mask is not summed
    gate = F.hard_concrete_mask(theta, nr.key(0))
    assert torch.equal(F.mask_l0("hard_concrete", theta, 15, hard=False, applied_mask=gate),
                       F.mask_l0("hard_concrete", theta, 15, hard=False))
    with pytest.raises(ValueError, match=r"applied_mask of shape \(3, 5\) must have params' shape \(3, 1\)"):
        F.mask_l0("continuous_sparsification", theta, 15, hard=False, applied_mask=soft.expand(3, 5))


# -- properties -----------------------------------------------------------------------------------------------------
shapes = st.tuples(st.sampled_from(KINDS), st.integers(1, 6), st.integers(1, 5))
dtypes = st.sampled_from(DTYPES)
units = st.sampled_from(["weight", "neuron"])


def _theta(kind, out, inp, unit, dtype, seed):
    shape = F.unit_shape(_weight_shape(kind, out, inp), unit, kind=kind)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


@given(shapes, units, dtypes, st.integers(0, 2**32), st.sampled_from(["continuous_sparsification", "hard_concrete"]))
def test_property_hard_masks_binary_and_soft_masks_in_unit_interval(shape, unit, dtype, seed, strategy):
    theta = _theta(*shape, unit, dtype, seed)
    h = F.hard_mask(strategy, theta)
    assert h.dtype == dtype and h.shape == theta.shape and ((h == 0) | (h == 1)).all()
    assert torch.equal(h, (theta > 0).to(dtype))
    row = F.STRATEGIES[strategy]
    s = row.soft(theta, nr.key(seed), unit=FL.elementwise_unit(theta.shape), **{**row.hparams, "temperature": 0.7})
    assert s.dtype == dtype and s.shape == theta.shape and ((s >= 0) & (s <= 1)).all()


@given(shapes, units, dtypes, st.integers(0, 2**32))
def test_property_zero_ablate_is_one_minus_none(shape, unit, dtype, seed):
    kind, out, inp = shape
    theta = _theta(kind, out, inp, unit, dtype, seed)
    w = torch.randn(_weight_shape(kind, out, inp)).to(dtype)
    kw = dict(strategy="continuous_sparsification", kind=kind, hard=True)
    none = FL.layer_masks(w, None, theta, None, None, ablation="none", **kw).weight_mask
    zero = FL.layer_masks(w, None, theta, None, None, ablation="zero_ablate", **kw).weight_mask
    assert torch.equal(zero, 1 - none)


@given(shapes, units, dtypes, st.integers(0, 2**32), st.sampled_from(["randomly_sampled", "complement_sampled"]))
def test_property_sampled_masks_have_exactly_sum_h_zeros_and_are_key_deterministic(shape, unit, dtype, seed, ablation):
    theta = _theta(*shape, unit, dtype, seed)
    h = F.hard_mask("hard_concrete", theta)
    k = int(h.sum())
    if ablation == "complement_sampled":
        assume(k <= h.numel() - k)
    key = nr.key(seed)
    m = F.ablate(h, key, ablation=ablation)
    assert m.dtype == dtype and m.shape == h.shape and ((m == 0) | (m == 1)).all()
    assert int((m == 0).sum()) == k
    if ablation == "complement_sampled":
        assert (m[h == 1] == 1).all()
    assert torch.equal(m, F.ablate(h, nr.key(seed), ablation=ablation))


@given(st.integers(40, 200), st.integers(0, 2**32), st.sampled_from(["randomly_sampled", "complement_sampled"]))
def test_property_different_keys_give_different_sampled_masks(n, seed, ablation):
    h = torch.zeros(n)
    h[: n // 4] = 1
    k1, k2 = nr.split(nr.key(seed), 2)
    assert not torch.equal(F.ablate(h, k1, ablation=ablation), F.ablate(h, k2, ablation=ablation))


@given(st.integers(1, 8), st.integers(0, 2**32), st.integers(0, 2**32))
def test_property_hard_concrete_samples_key_deterministic_and_key_sensitive(n, seed, seed2):
    theta = torch.zeros(n, 8)
    a = F.hard_concrete_mask(theta, nr.key(seed))
    assert torch.equal(a, F.hard_concrete_mask(theta, nr.key(seed)))
    if seed != seed2:
        assert not torch.equal(a, F.hard_concrete_mask(theta, nr.key(seed2)))


@given(st.integers(1, 300), dtypes, st.floats(0, 1), st.integers(0, 2**32), st.booleans())
def test_property_magnitude_keeps_every_larger_abs_and_exact_count(n, dtype, p, seed, ties):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    if ties:
        w = torch.round(w * 2) / 2  # many equal magnitudes
    w = w.to(dtype)
    m = F.magnitude_mask(w, prune_percentage=p)
    assert m.dtype == dtype and ((m == 0) | (m == 1)).all()
    pruned = m == 0
    assert int(pruned.sum()) == round(p * n)
    if pruned.any() and (~pruned).any():
        assert w.abs()[pruned].max() <= w.abs()[~pruned].min()
    assert torch.equal(m, F.magnitude_mask(w.clone(), prune_percentage=p))


@given(shapes, dtypes, st.integers(0, 2**32), st.sampled_from(F.ABLATIONS), st.sampled_from(["continuous_sparsification", "hard_concrete"]))
def test_property_neuron_masks_zero_whole_output_units(shape, dtype, seed, ablation, strategy):
    kind, out, inp = shape
    theta = _theta(kind, out, inp, "neuron", dtype, seed)
    h = F.hard_mask(strategy, theta)
    if ablation == "complement_sampled":
        assume(2 * int(h.sum()) <= h.numel())
    w = (torch.rand(_weight_shape(kind, out, inp)) + 0.5).to(dtype)  # no zero weights
    p = F.mask_parameters(w, None, theta, None, nr.key(seed), strategy=strategy, kind=kind, hard=True,
                          ablation=ablation, mask_unit="neuron")
    d = 1 if kind == "gpt_conv1d" else 0
    per_unit = p.weight_mask.movedim(d, 0).reshape(w.shape[d], -1)
    assert (per_unit == per_unit[:, :1]).all()  # each output unit all-kept or all-removed
    assert p.weight.shape == w.shape and p.weight.dtype == dtype
    if ablation != "random_ablate":
        zero_units = per_unit[:, 0] == 0
        assert (p.weight.movedim(d, 0)[zero_units] == 0).all()


@given(shapes, units, dtypes, st.integers(0, 2**32), st.sampled_from(sorted(F.STRATEGIES)))
def test_property_all_ones_mask_reproduces_parameters_bitwise(shape, unit, dtype, seed, strategy):
    kind, out, inp = shape
    w = torch.randn(_weight_shape(kind, out, inp)).to(dtype)
    b = torch.randn(out).to(dtype)
    if strategy == "magnitude_pruning":
        wp, bp, kw = w, b, dict(prune_percentage=0.0)
    else:
        wp = torch.full(F.unit_shape(tuple(w.shape), unit, kind=kind), 3.0, dtype=dtype)
        bp, kw = torch.full((out,), 3.0, dtype=dtype), {"mask_unit": unit}
    p = F.mask_parameters(w, b, wp, bp, None, strategy=strategy, kind=kind, hard=True, **kw)
    assert torch.equal(p.weight, w) and torch.equal(p.bias, b)
    assert (p.weight_mask == 1).all() and p.weight_mask.shape == w.shape


# -- dtypes -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("hard", [True, False])
def test_masks_computed_in_theta_dtype_and_cast_to_weight_dtype(w_dtype, hard):
    w = torch.randn(4, 6).to(w_dtype)
    b = torch.randn(4).to(w_dtype)
    theta = torch.randn(4, 6)
    masks = FL.layer_masks(w, b, theta, torch.randn(4), nr.key(0), strategy="hard_concrete", kind="linear", hard=hard)
    assert masks.weight_mask.dtype == torch.float32 and masks.bias_mask.dtype == torch.float32
    p = FL.apply_unit_masks(w, b, masks, FU.resolve_unit("linear", tuple(w.shape)))
    assert p.weight.dtype == w_dtype and p.bias.dtype == w_dtype and p.weight_mask.dtype == w_dtype
    assert torch.equal(p.weight, w * masks.weight_mask.to(w_dtype))


@given(values=st.lists(st.sampled_from([0.0, -0.0, 1e-38, -1e-38, 2.5, -2.5, float("inf"), float("-inf")]),
                       min_size=1, max_size=40),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
def test_cs_hard_mask_fast_path_equals_comparison_and_leaves_the_graph(values, dtype):
    theta = torch.tensor(values, dtype=dtype).requires_grad_()
    h = F.continuous_sparsification_hard_mask(theta)
    assert h.dtype == dtype and not h.requires_grad
    assert torch.equal(h, (theta.detach() > 0).to(dtype))
    assert torch.equal(torch.signbit(h), torch.zeros_like(h, dtype=torch.bool))  # no -0.0 entries


@pytest.mark.parametrize("density", [0.1, 0.45, 0.9])
@pytest.mark.parametrize("sampler", [F.complement_sampled_mask, F.randomly_sampled_mask])
def test_vmapped_samplers_share_scratch_and_still_equal_a_loop(sampler, density):
    # Under vmap one first-seen buffer serves every key (reset after each); a stale entry would
    # change a later key's draw. Densities cover drawing the zeros and drawing the survivors.
    g = torch.Generator().manual_seed(3)
    h = (torch.rand(300, 70, generator=g) < density).float()
    if sampler is F.complement_sampled_mask and density > 0.5:
        h = 1 - h  # the subnetwork must fit in its complement
    keys = nr.split(nr.key(9), 7)
    batched = torch.func.vmap(lambda k: sampler(k, h))(keys)
    assert torch.equal(batched, torch.stack([sampler(k, h) for k in keys]))
    assert len({tuple(m.flatten().nonzero().flatten().tolist()) for m in batched}) == 7


# -- transforms and devices ---------------------------------------------------------------------------------------
def test_vmap_over_keys_of_the_core_functions_equals_loop():
    keys = nr.split(nr.key(5), 6)
    g = torch.Generator().manual_seed(5)
    theta = torch.randn(7, 3, generator=g) - 0.5
    h = (theta > 0).float()
    assert 0 < 2 * int(h.sum()) <= h.numel()  # complement sampling is possible
    w = torch.empty(7, 3)
    fns = [
        lambda k: F.hard_concrete_mask(theta, k),
        lambda k: FR.reinit_weight(k, "linear", w),
        lambda k: FR.reinit_weight(k, "gpt_conv1d", w),
        lambda k: FR.reinit_bias(k, "conv1d", torch.empty(7, 3, 2), torch.empty(7)),
        lambda k: F.ablate(h, k, ablation="randomly_sampled"),
        lambda k: F.mask_parameters(w, None, theta, None, k, strategy="hard_concrete", kind="linear", hard=True,
                                    ablation="complement_sampled").weight_mask,
        # the argument checks read no tensor values under vmap
        lambda k: F.mask_parameters(w, None, theta, None, k, strategy="hard_concrete", kind="linear",
                                    hard=False).weight_mask,
    ]
    for fn in fns:
        batched, looped = torch.func.vmap(fn)(keys), torch.stack([fn(k) for k in keys])
        if ((looped == 0) | (looped == 1)).all():
            assert torch.equal(batched, looped)
        else:  # batched and unbatched float kernels may round the last bit differently
            torch.testing.assert_close(batched, looped, rtol=1e-6, atol=1e-7)


def test_vmap_over_batched_subnetworks_equals_loop():
    hs = (torch.rand(5, 12, generator=torch.Generator().manual_seed(6)) < 0.3).float()
    assert (2 * hs.sum(1) <= 12).all()  # complement sampling is possible in every row
    keys = nr.split(nr.key(6), 5)
    for fn in (F.randomly_sampled_mask, F.complement_sampled_mask):
        batched = torch.func.vmap(fn)(keys, hs)
        assert torch.equal(batched, torch.stack([fn(k, h) for k, h in zip(keys, hs)]))
        assert torch.equal((batched == 0).sum(1), hs.sum(1).long())


def test_func_grad_through_soft_masks_equals_autograd():
    theta = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(4, 5)
    k = nr.key(8)

    def loss(t):
        return F.mask_parameters(w, None, t, None, k, strategy="hard_concrete", kind="linear",
                                 hard=False, temperature=2 / 3).weight.sum()

    g = torch.func.grad(loss)(theta.detach())
    loss(theta).backward()
    torch.testing.assert_close(g, theta.grad)


@pytest.mark.cuda
def test_draws_on_cuda_equal_cpu_draws():
    k = nr.key(123)
    assert torch.equal(nr.bits(k, (1000,)), nr.bits(k.cuda(), (1000,)).cpu())
    h = (torch.rand(200, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    assert torch.equal(F.complement_sampled_mask(k, h), F.complement_sampled_mask(k.cuda(), h.cuda()).cpu())
    assert torch.equal(F.randomly_sampled_mask(k, h), F.randomly_sampled_mask(k.cuda(), h.cuda()).cpu())
