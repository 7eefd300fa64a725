"""Sampler edge cases: impossible complement sampling names the layer, its counts and what would
make it possible; how the draws are split into an unordered prefix and ordered windows changes
no mask, nor does drawing several keys' first words together; the prefix stays below k while
doing most of the work; and the counts the sampler reads on the host are exact."""

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import neurosurgeon as ns
from neurosurgeon.functional import complement_sampled_mask, randomly_sampled_mask
from neurosurgeon.functional import random as nr
from neurosurgeon.functional import sampling
from neurosurgeon.model.baselines import complement_shortfalls


def subnetwork(shape, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).to(torch.float32)


def masks(sampler, h, keys):
    return torch.func.vmap(lambda k: sampler(k, h))(keys), torch.stack([sampler(k, h) for k in keys])


def dense_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    layers = ns.inject_masks(model, nn.Linear, key=3)
    with torch.no_grad():  # layer 0: 45 of 60 units kept (impossible); layer 2: 6 of 30 (possible)
        theta0 = torch.full((10, 6), -1.0)
        theta0.view(-1)[:45] = 1.0
        layers["0"].weight_mask_params.copy_(theta0)
        theta2 = torch.full((3, 10), -1.0)
        theta2.view(-1)[:6] = 1.0
        layers["2"].weight_mask_params.copy_(theta2)
    return model.eval()


def test_impossible_complement_sampling_names_the_layer_counts_and_the_remedy():
    model = dense_model()
    assert complement_shortfalls(model) == {"0.weight": (45, 15)}
    x, keys = torch.randn(4, 6), nr.split(nr.key(0), 2)
    calls = [lambda: ns.masked_weights(model, nr.key(0), ablation="complement_sampled"),
             lambda: ns.evaluate_baselines(model, lambda f: f(x).sum(), keys, ablation="complement_sampled"),
             lambda: torch.func.vmap(lambda k: ns.masked_weights(model, k, ablation="complement_sampled"))(keys)]
    for call in calls:
        with pytest.raises(ValueError, match=r"0\.weight keeps 45 of 60 units, 15 outside, may keep at most 30") as e:
            call()
        assert "2.weight" not in str(e.value) and "randomly_sampled" in str(e.value)
    # randomly_sampled is possible everywhere
    assert ns.evaluate_baselines(model, lambda f: f(x).sum(), keys, ablation="randomly_sampled").shape == (2,)


def test_the_samplers_own_error_names_the_mask_shape_and_counts():
    h = torch.zeros(4, 5)
    h.view(-1)[:12] = 1
    with pytest.raises(ValueError, match=r"shape \(4, 5\).*keeps 12 mask units but only 8 lie outside"):
        complement_sampled_mask(nr.key(0), h)


@pytest.mark.parametrize("sampler", [complement_sampled_mask, randomly_sampled_mask])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.45, 0.8])
def test_neither_the_unordered_prefix_nor_the_window_size_changes_a_mask(monkeypatch, sampler, density):
    from neurosurgeon.functional import sampling

    h, keys = subnetwork((60, 50), density), nr.split(nr.key(8), 4)
    if sampler is complement_sampled_mask and 2 * h.sum() > h.numel():
        h = 1 - h
    expected = masks(sampler, h, keys)
    assert sampling._prefix_draws(h.numel(), h.numel(), int(h.sum()))[0] > 0  # the default path has a prefix
    cases = {
        "no prefix, windows of a few draws": [("_prefix_draws", lambda n, m, k: (0, 0)), ("_window", lambda n, f, k: 3)],
        "a prefix that overshoots k, redone from draw 0": [("_prefix_draws", lambda n, m, k: (50 * n, 0))],
        "the whole draw as one window": [("_prefix_draws", lambda n, m, k: (0, 0))],
    }
    for case, patches in cases.items():
        for name, fn in patches:
            monkeypatch.setattr(sampling, name, fn)
        assert all(torch.equal(a, b) for a, b in zip(masks(sampler, h, keys), expected)), case
        monkeypatch.undo()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(200, 50_000), eligible_share=st.floats(0.05, 1.0), zero_share=st.floats(0.0, 0.5),
       seed=st.integers(0, 2**32 - 1))
def test_the_unordered_prefix_stays_below_k_and_does_most_of_the_work(n, eligible_share, zero_share, seed):
    from neurosurgeon.functional import sampling

    m = max(1, int(n * eligible_share))
    k = int(m * zero_share)
    draws, expected = sampling._prefix_draws(n, m, k)
    if draws == 0:
        assert k < 8 * k**0.5 + 17  # only a small k goes straight to the ordered windows
        return
    eligible = torch.zeros(n + 1, dtype=torch.bool)
    eligible[torch.randperm(n, generator=torch.Generator().manual_seed(seed % 2**31))[:m]] = True
    got = int(eligible[sampling.proposals(nr.key(seed), draws, n).unique()].sum())
    assert got <= k  # the prefix never decides order
    assert got >= k - 20 * k**0.5 - 64  # and leaves only a short ordered tail


@pytest.mark.parametrize("num_keys", [1, 3, 5, 9])
@pytest.mark.parametrize("sampler,density", [(complement_sampled_mask, 0.1), (complement_sampled_mask, 0.45),
                                             (randomly_sampled_mask, 0.0), (randomly_sampled_mask, 0.8)])
def test_keys_drawing_their_first_words_together_give_each_key_its_own_mask(num_keys, sampler, density):
    # vmap over keys with one subnetwork draws each group of keys' first words with shared ops;
    # every mask must still be the one its key draws alone, for any group size and remainder.
    h = subnetwork((300, 70), density, seed=num_keys)
    keys = nr.split(nr.key(num_keys), num_keys)
    vmapped, looped = masks(sampler, h, keys)
    assert torch.equal(vmapped, looped)
    assert ((vmapped == 0).sum(dim=(1, 2)) == int(h.sum())).all()


def test_words_of_a_batch_of_keys_are_each_keys_own_words():
    keys = nr.split(nr.key(2), 5)
    for n, start in [(0, 0), (1, 0), (7, 3), (600_001, 5)]:  # the last spans several blocks of counters
        batch = nr._words_i32(keys, n, start)
        assert batch.shape == (5, n)
        assert all(torch.equal(batch[i], nr._words_i32(keys[i], n, start)) for i in range(5))
    assert sampling.proposals(keys, 50, 1000).shape == (5, 50)


@settings(max_examples=40, deadline=None)
@given(size=st.sampled_from([0, 1, 7, 8, 2039, 2040, 2041, 4080, 6000]), density=st.floats(0, 1),
       seed=st.integers(0, 99))
def test_the_byte_lane_count_equals_count_nonzero(size, density, seed):
    flags = torch.rand(size, generator=torch.Generator().manual_seed(seed)) < density
    assert sampling._count_true(flags) == int(torch.count_nonzero(flags))


def test_a_full_group_of_byte_lanes_does_not_carry():
    # all True: each lane of a 255-word group sums to exactly 255, the most a byte holds
    assert sampling._count_true(torch.ones(2040 * 3 + 5, dtype=torch.bool)) == 2040 * 3 + 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool])
def test_the_counts_read_off_h_match_its_sum_in_every_dtype(dtype):
    h = subnetwork((37, 61), 0.2, seed=4).to(dtype)
    k = int(h.to(torch.int64).sum())
    for sampler in (randomly_sampled_mask, complement_sampled_mask):
        zeros = int((sampler(nr.key(1), h) == 0).sum())
        assert zeros == k


def test_counts_of_views_that_are_not_whole_words_are_exact():
    # a slice at an odd byte offset and a transposed view cannot be read as int64 words
    flags = torch.rand(5000, generator=torch.Generator().manual_seed(2)) < 0.4
    for view in (flags[3:], flags[:4900].reshape(70, 70).t()):
        assert sampling._count_true(view) == int(torch.count_nonzero(view))
    z = sampling.sample_zeros(nr.key(0), flags[3:], 100)
    assert int(z.sum()) == 100 and not bool((z & ~flags[3:]).any())


def _hashed_subnetwork(n, density):
    """h from integer arithmetic alone (no RNG whose stream could change under us)."""
    i = torch.arange(n, dtype=torch.int64)
    return (((i * 2654435761) % 2**32) < int(density * 2**32)).to(torch.float32)


# Known answers: (n, density, sampler) -> per key of split(key(7), 2): (zeros, first zeroed units,
# sum of zeroed units). They cover drawn zeros and drawn survivors, a prefix and none: a change to
# the words, their mapping to units or the order of taking them moves every mask.
_KNOWN_MASKS = {
    (50000, 0.1, "R"): [(5000, [0, 7, 10, 16, 34, 51], 124729498), (5000, [2, 31, 41, 51, 52, 54], 124716974)],
    (50000, 0.1, "C"): [(5000, [7, 10, 16, 51, 65, 67], 124746074), (5000, [2, 12, 31, 41, 51, 52], 124359348)],
    (50000, 0.45, "R"): [(22500, [0, 1, 3, 6, 7, 9], 561052032), (22500, [1, 2, 5, 9, 11, 12], 561838442)],
    (50000, 0.45, "C"): [(22500, [1, 4, 6, 8, 11, 14], 562321244), (22500, [1, 3, 4, 6, 8, 9], 563040155)],
    (7, 0.3, "R"): [(3, [3, 4, 6], 13), (3, [1, 2, 4], 7)],
    (7, 0.3, "C"): [(3, [1, 4, 6], 11), (3, [1, 3, 6], 10)],
}


@pytest.mark.parametrize("case", list(_KNOWN_MASKS), ids=str)
def test_sampled_masks_match_their_known_answers(case):
    n, density, name = case
    sampler = randomly_sampled_mask if name == "R" else complement_sampled_mask
    h = _hashed_subnetwork(n, density)
    for row, (count, first, total) in zip(torch.func.vmap(lambda k: sampler(k, h))(nr.split(nr.key(7), 2)),
                                          _KNOWN_MASKS[case]):
        zeroed = (row == 0).nonzero().squeeze(1)
        assert (zeroed.numel(), zeroed[: len(first)].tolist(), int(zeroed.sum())) == (count, first, total)
