"""The explicit PRNG (neurosurgeon.functional.random): Threefry-2x32-20 known answers, key
derivation, value ranges and dtypes, statistical quality, and vmap over keys."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neurosurgeon.functional import random as nr

from _stats import chi2_uniform_pvalue as _chi2_uniform_pvalue

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# Random123 known-answer vectors, Threefry-2x32 with 20 rounds (Salmon et al. 2011).
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


# -- known answers ----------------------------------------------------------------------------
@pytest.mark.parametrize("k, c, y", KAT)
def test_threefry2x32_20_matches_random123_known_answers(k, c, y):
    out = nr.threefry2x32(torch.tensor(k, dtype=torch.int64), torch.tensor(c, dtype=torch.int64))
    assert out.tolist() == list(y)


def test_threefry2x32_batched_counters_match_one_at_a_time():
    k = torch.tensor(KAT[2][0], dtype=torch.int64)
    counters = torch.tensor([c for _, c, _ in KAT], dtype=torch.int64)
    batched = nr.threefry2x32(k, counters)
    for i in range(len(KAT)):
        assert torch.equal(batched[i], nr.threefry2x32(k, counters[i]))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2),
       st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=64))
def test_threefry2x32_eager_and_transformed_rounds_agree(k, words):
    """Eagerly the rotation is an add with alpha on wrap-around int32; under a transform it is
    shifts and an or: both must give the same words for any key and counter, extremes included."""
    key_ = torch.tensor(k, dtype=torch.int64)
    counters = torch.tensor(words[: len(words) // 2 * 2], dtype=torch.int64).view(-1, 2)
    eager = nr.threefry2x32(key_, counters)
    transformed = torch.func.vmap(lambda c: nr.threefry2x32(key_, c))(counters)
    assert torch.equal(eager, transformed)
    assert eager.min() >= 0 and eager.max() < 2**32


# -- keys ---------------------------------------------------------------------------------------
def test_key_is_int64_pair_of_32_bit_words_from_seed():
    assert nr.key(0).dtype == torch.int64 and nr.key(0).tolist() == [0, 0]
    assert nr.key((7 << 32) | 9).tolist() == [7, 9]
    assert nr.key(-1).tolist() == [0xFFFFFFFF, 0xFFFFFFFF]


@pytest.mark.parametrize("bad", [1.5, True, "3", None])
def test_key_rejects_non_int_seed_with_type_error(bad):
    with pytest.raises(TypeError, match="seed"):
        nr.key(bad)


def test_key_rejects_out_of_range_seed():
    with pytest.raises(ValueError, match="seed"):
        nr.key(2**64)


def test_split_and_fold_in_are_deterministic_and_distinct():
    k = nr.key(42)
    assert torch.equal(nr.split(k, 5), nr.split(nr.key(42), 5))
    assert torch.equal(nr.fold_in(k, 3), nr.fold_in(nr.key(42), 3))
    subkeys = nr.split(k, 64)
    assert subkeys.shape == (64, 2) and subkeys.dtype == torch.int64
    assert len({tuple(s) for s in subkeys.tolist()}) == 64
    assert ((subkeys >= 0) & (subkeys < 2**32)).all()
    folded = {tuple(nr.fold_in(k, d).tolist()) for d in range(64)}
    assert len(folded) == 64
    assert tuple(k.tolist()) not in folded


def test_split_prefix_is_stable_across_num():
    k = nr.key(3)
    assert torch.equal(nr.split(k, 2), nr.split(k, 7)[:2])


def test_fold_in_tensor_data_equals_int_data():
    k = nr.key(11)
    for d in (0, 1, 2**31 + 5, 2**40 + 3):
        assert torch.equal(nr.fold_in(k, torch.tensor(d)), nr.fold_in(k, d))


def test_random_functions_never_touch_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    k = nr.key(1)
    nr.split(k, 3), nr.fold_in(k, 2), nr.bits(k, (4,)), nr.uniform(k, (5,)), nr.normal(k, (5,))
    assert torch.equal(torch.get_rng_state(), before)


def test_same_key_same_numbers_different_keys_different_numbers():
    a, b = nr.split(nr.key(0), 2)
    assert torch.equal(nr.uniform(a, (100,)), nr.uniform(a.clone(), (100,)))
    assert not torch.equal(nr.uniform(a, (100,)), nr.uniform(b, (100,)))
    assert torch.equal(nr.bits(a, (3, 5)), nr.bits(a, (15,)).reshape(3, 5))


# -- ranges and dtypes --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
def test_uniform_in_unit_interval_with_requested_dtype(dtype):
    u = nr.uniform(nr.key(5), (4, 1000), dtype=dtype)
    assert u.dtype == dtype and u.shape == (4, 1000)
    assert (u >= 0).all() and (u < 1).all()
    assert 0.45 < u.double().mean() < 0.55


@pytest.mark.parametrize("dtype", FLOATS)
def test_uniform_with_bounds_stays_in_bounds(dtype):
    u = nr.uniform(nr.key(6), (5000,), dtype=dtype, minval=-0.25, maxval=0.75)
    assert u.dtype == dtype
    assert (u >= -0.25).all() and (u <= 0.75).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_normal_finite_with_requested_dtype_and_moments(dtype):
    z = nr.normal(nr.key(7), (20000,), dtype=dtype, mean=1.0, std=2.0)
    assert z.dtype == dtype and torch.isfinite(z).all()
    zd = z.double()
    assert abs(zd.mean() - 1.0) < 0.1 and abs(zd.std() - 2.0) < 0.1


def test_bits_are_32_bit_words():
    b = nr.bits(nr.key(8), (10000,))
    assert b.dtype == torch.int64 and (b >= 0).all() and (b < 2**32).all()
    assert (b >= 2**31).any() and (b < 2**31).any()


def test_zero_size_draws_have_the_requested_shape():
    assert nr.uniform(nr.key(0), (0, 3)).shape == (0, 3)
    assert nr.bits(nr.key(0), (0,)).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_uniform_rejects_non_floating_dtype(dtype):
    with pytest.raises(TypeError, match="dtype"):
        nr.uniform(nr.key(0), (3,), dtype=dtype)


def test_bad_key_is_rejected_naming_shape_and_dtype():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        nr.uniform(torch.zeros(3, dtype=torch.int64), (2,))
    with pytest.raises(ValueError, match="int64"):
        nr.uniform(torch.zeros(2, dtype=torch.int32), (2,))
    with pytest.raises(TypeError):
        nr.split([0, 0])


# -- statistics -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uniform_marginal_passes_chi_square(seed):
    u = nr.uniform(nr.key(seed), (100_000,), dtype=torch.float64)
    counts = torch.histc(u, bins=50, min=0.0, max=1.0)
    assert _chi2_uniform_pvalue(counts) > 0.01


def test_bits_low_and_high_bytes_pass_chi_square():
    b = nr.bits(nr.key(123), (100_000,))
    for shift in (0, 24):
        counts = torch.bincount((b >> shift) & 0xFF, minlength=256)
        assert _chi2_uniform_pvalue(counts) > 0.01


def test_split_keys_streams_are_uncorrelated():
    keys = nr.split(nr.key(9), 8)
    draws = torch.stack([nr.uniform(k, (20_000,), dtype=torch.float64) for k in keys])
    corr = torch.corrcoef(draws)
    off = corr[~torch.eye(8, dtype=torch.bool)]
    # sd of a sample correlation of independent streams is 1/sqrt(n) ~ 0.007
    assert off.abs().max() < 0.04


def test_split_and_fold_in_children_are_uncorrelated_streams():
    k = nr.key(10)
    kids = [*nr.split(k, 3)] + [nr.fold_in(k, 2**33 + i) for i in range(3)]
    corr = torch.corrcoef(torch.stack([nr.uniform(x, (20_000,), dtype=torch.float64) for x in kids]))
    assert corr[~torch.eye(len(kids), dtype=torch.bool)].abs().max() < 0.04


def test_consecutive_fold_in_keys_pass_chi_square_on_first_draw():
    k = nr.key(11)
    firsts = torch.func.vmap(lambda d: nr.bits(nr.fold_in(k, d), (1,)))(torch.arange(4000)).flatten()
    counts = torch.bincount(firsts >> 28, minlength=16)
    assert _chi2_uniform_pvalue(counts) > 0.01


# -- vmap ------------------------------------------------------------------------------------------
def test_vmap_over_keys_equals_python_loop():
    keys = nr.split(nr.key(12), 6)
    for fn in (
        lambda k: nr.uniform(k, (3, 4)),
        lambda k: nr.normal(k, (5,), dtype=torch.float64),
        lambda k: nr.bits(k, (7,)),
        lambda k: nr.split(k, 3),
        lambda k: nr.fold_in(k, 5),
    ):
        batched = torch.func.vmap(fn)(keys)
        looped = torch.stack([fn(k) for k in keys])
        assert torch.equal(batched, looped)


def test_vmap_fold_in_over_data_equals_loop():
    k = nr.key(13)
    steps = torch.arange(5)
    batched = torch.func.vmap(lambda d: nr.fold_in(k, d))(steps)
    assert torch.equal(batched, torch.stack([nr.fold_in(k, i) for i in range(5)]))


@given(seed=st.integers(0, 2**64 - 1), n=st.integers(1, 300), dtype=st.sampled_from(FLOATS))
def test_uniform_property_in_range_deterministic_and_key_sensitive(seed, n, dtype):
    k = nr.key(seed)
    u = nr.uniform(k, (n,), dtype=dtype)
    assert u.dtype == dtype and ((u >= 0) & (u < 1)).all()
    assert torch.equal(u, nr.uniform(nr.key(seed), (n,), dtype=dtype))
    other = nr.key((seed + 1) % 2**64)
    if n >= 8:
        assert not torch.equal(u, nr.uniform(other, (n,), dtype=dtype))


def test_split_children_differ_from_fold_in_children_of_the_same_key():
    """split and fold_in use disjoint counter domains: a key derived one way is never the other."""
    k = nr.key(2026)
    kids = nr.split(k, 16)
    for i in range(16):
        assert not torch.equal(kids[i], nr.fold_in(k, i))
        # split's counter is (i, 2**31), outside every fold_in counter (lo, hi < 2**31)
        expected = nr.threefry2x32(k, torch.tensor([i, 2**31], dtype=torch.int64))
        assert torch.equal(kids[i], expected)


def test_fold_in_rejects_data_outside_its_domain():
    with pytest.raises(ValueError, match=r"data must be an int in \[0, 2\*\*63\)"):
        nr.fold_in(nr.key(0), 2**63)


@given(k0=st.integers(0, 2**32 - 1), k1=st.integers(0, 2**32 - 1), data=st.integers(0, 2**63 - 1),
       num=st.integers(1, 70))
def test_host_side_key_derivation_equals_the_tensor_cipher(k0, k1, data, num):
    # fold_in/split of an eager CPU key run Threefry on Python ints; the block function on
    # tensors (checked against Random123 above) must give the same words.
    k = torch.tensor([k0, k1])
    assert torch.equal(nr.fold_in(k, data), nr.threefry2x32(k, torch.tensor([data & 0xFFFFFFFF, data >> 32])))
    assert torch.equal(nr.fold_in(k, torch.tensor(data)), nr.fold_in(k, data))
    counters = torch.stack([torch.arange(num), torch.full((num,), 2**31)], dim=-1)
    assert torch.equal(nr.split(k, num), nr.threefry2x32(k, counters))
