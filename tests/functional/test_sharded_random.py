"""Sharded random draws: a shard draws only the words of the entries it holds, and the shards'
draws put together are the unsharded draw, bit for bit, for any number of shards and any split."""

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from neurosurgeon.functional import random as nr
from neurosurgeon.functional.hard_concrete import _gate_noise, hard_concrete_mask, hard_concrete_noise

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@st.composite
def _splits(draw, max_n=300):
    """(n, cut points): a tensor of n entries split into 1 to 4 contiguous, uneven shards."""
    n = draw(st.integers(0, max_n))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    return n, [0, *cuts, n]


def _shards(bounds):
    return list(zip(bounds[:-1], bounds[1:]))


@settings(deadline=None, max_examples=40)
@given(_splits(), st.sampled_from(FLOATS), st.integers(0, 2**40))
def test_uniform_and_normal_shards_concatenate_to_the_unsharded_draw_bitwise(split, dtype, seed):
    n, bounds = split
    k = nr.key(seed)
    for draw in (nr.uniform, nr.normal):
        full = draw(k, (n,), dtype=dtype)
        parts = [draw(k, (n,), dtype=dtype, entries=r) for r in _shards(bounds)]
        assert torch.equal(torch.cat(parts), full), draw.__name__


@settings(deadline=None, max_examples=40)
@given(_splits(), st.integers(0, 2**40))
def test_bits_shards_concatenate_to_the_unsharded_draw(split, seed):
    n, bounds = split
    full = nr.bits(nr.key(seed), (n,))
    assert torch.equal(torch.cat([nr.bits(nr.key(seed), (n,), entries=r) for r in _shards(bounds)]), full)


@settings(deadline=None, max_examples=60)
@given(_splits(max_n=200), st.integers(0, 2**40))
def test_hard_concrete_noise_shards_concatenate_to_the_unsharded_noise(split, seed):
    # Gate j reads word 2j below h = ceil(n / 2) and word 2(j - h) + 1 above: shards that
    # straddle h, or end on either side of it, must still read exactly the full draw's words.
    n, bounds = split
    full = hard_concrete_noise(nr.key(seed), n)
    assert full.shape == (n,)
    parts = [hard_concrete_noise(nr.key(seed), n, entries=r) for r in _shards(bounds)]
    assert torch.equal(torch.cat(parts), full)


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_hard_concrete_noise_every_range_is_the_slice_of_the_full_draw(n):
    full = hard_concrete_noise(nr.key(5), n)
    for a in range(n + 1):
        for b in range(a, n + 1):
            assert torch.equal(hard_concrete_noise(nr.key(5), n, entries=(a, b)), full[a:b]), (a, b)


def test_hard_concrete_noise_of_all_gates_is_the_mask_s_noise():
    theta = torch.zeros(4, 5)
    u = hard_concrete_noise(nr.key(3), theta.numel()).reshape(theta.shape)
    assert torch.equal(_gate_noise(nr.key(3), theta), u)


@pytest.mark.parametrize("bad", [(3, 2), (-1, 2), (0, 11), (0.0, 2), (1,), (True, 2)])
def test_entries_outside_the_tensor_raise_naming_entries(bad):
    with pytest.raises(ValueError, match="entries"):
        nr.uniform(nr.key(0), (10,), entries=bad)
    with pytest.raises(ValueError, match="entries"):
        hard_concrete_noise(nr.key(0), 10, entries=bad)


def test_a_shard_draws_only_its_own_words():
    # The cost follows the shard: a draw of 10 entries at the end of a huge tensor is instant
    # and equals what the words at that position are.
    n = 2**31
    tail = nr.bits(nr.key(0), (n,), entries=(n - 10, n))
    assert tail.shape == (10,)
    pair = nr.threefry2x32(nr.key(0), torch.tensor([(n - 10) // 2, 0], dtype=torch.int64))
    assert tail[:2].tolist() == pair.tolist()


def test_plain_tensors_have_no_local_entries():
    assert nr.local_entries(torch.zeros(3)) is None


# -- DTensor shards: a fake process group plays rank r of R in this one process -----------------
@pytest.fixture
def fake_world():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    def start(rank, world):
        if dist.is_initialized():
            dist.destroy_process_group()
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        from torch.distributed.device_mesh import DeviceMesh

        return DeviceMesh("cpu", list(range(world)))

    yield start
    if dist.is_initialized():
        dist.destroy_process_group()


def _local(full, mesh, placements):
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(full.shape, mesh, placements)
    box = tuple(slice(o, o + s) for o, s in zip(offset, shape))
    return DTensor.from_local(full[box].clone(), mesh, placements, shape=full.shape, stride=full.stride()), box


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("dim", [0, 1])
def test_sharded_theta_draws_its_shard_of_the_unsharded_hard_concrete_noise(fake_world, world, dim):
    from torch.distributed.tensor import Shard

    theta = torch.linspace(-2, 2, 35).reshape(5, 7)  # 5 and 7 split unevenly over 2 and 3 ranks
    full, noise = hard_concrete_mask(theta, nr.key(9)), _gate_noise(nr.key(9), theta)
    for rank in range(world):
        mesh = fake_world(rank, world)
        sharded, box = _local(theta, mesh, [Shard(dim)])
        index, start, stop = nr.local_entries(sharded)
        assert torch.equal(index, torch.arange(35).reshape(5, 7)[box])
        if dim == 0:  # FSDP's placement: the shard is exactly its flat range
            assert stop - start == index.numel()
        assert torch.equal(_gate_noise(nr.key(9), sharded).to_local(), noise[box]), (world, rank)
        # The gate itself: same noise, same formula (vectorised and scalar log may differ in the last bit).
        torch.testing.assert_close(hard_concrete_mask(sharded, nr.key(9)).to_local(), full[box], rtol=1e-6, atol=1e-7)
