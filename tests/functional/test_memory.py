"""Fresh output buffers: the huge-page advice stays inside the buffer and changes no value."""

import pytest
import torch

from neurosurgeon.functional import _memory
from neurosurgeon.functional import random as nr
from neurosurgeon.functional.sampling import complement_sampled_mask


@pytest.fixture
def advised(monkeypatch):
    calls = []
    monkeypatch.setattr(_memory, "_MADVISE", lambda start, length, advice: calls.append((start, length, advice)) or 0)
    return calls


@pytest.mark.parametrize("shape,dtype", [((3072, 768), torch.float32), ((5, 3072, 769), torch.bfloat16),
                                         ((2**23 + 3,), torch.bool)])
def test_advice_covers_only_whole_huge_pages_inside_the_buffer(advised, shape, dtype):
    out = _memory.fresh_empty(shape, dtype=dtype, device="cpu")
    assert out.shape == shape and out.dtype == dtype and out.is_contiguous()
    (start, length, advice), = advised
    assert advice == _memory._MADV_HUGEPAGE
    assert start % _memory._HUGE == 0 and length % _memory._HUGE == 0 and length > 0
    assert out.data_ptr() <= start and start + length <= out.data_ptr() + out.nbytes


def test_small_buffers_are_not_advised(advised):
    out = _memory.fresh_empty((1000, 1000), dtype=torch.float32, device="cpu")  # 4 MB: under MIN_BYTES
    assert out.nbytes < _memory.MIN_BYTES and advised == []


def test_masks_are_the_same_with_and_without_the_advice(monkeypatch):
    h = (torch.rand(3072, 768, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    keys = nr.split(nr.key(4), 3)
    advised = torch.func.vmap(lambda k: complement_sampled_mask(k, h))(keys)
    monkeypatch.setattr(_memory, "_MADVISE", None)
    plain = torch.func.vmap(lambda k: complement_sampled_mask(k, h))(keys)
    assert advised.nbytes >= _memory.MIN_BYTES
    assert torch.equal(advised, plain)
    assert (advised == 0).sum(dim=(1, 2)).tolist() == [int(h.sum())] * 3


@pytest.mark.parametrize("a_shape,b_shape", [((1024, 1100), (1024, 1100)), ((1024, 1100), (1024, 1)),
                                             ((1100,), (1024, 1100)), ((1024, 1100), ())])
def test_product_is_the_elementwise_product_under_vmap_in_any_batch_position(advised, a_shape, b_shape):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(a_shape, generator=g), torch.randn(b_shape, generator=g)
    assert torch.equal(_memory.product(a, b), a * b)
    ab, bb = torch.randn(3, *a_shape, generator=g), torch.randn(*b_shape, 3, generator=g)
    last = len(b_shape)
    for in_dims, args in (((0, None), (ab, b)), ((None, last), (a, bb)), ((0, last), (ab, bb))):
        got = torch.func.vmap(_memory.product, in_dims=in_dims)(*args)
        want = torch.func.vmap(torch.mul, in_dims=in_dims)(*args)
        assert torch.equal(got, want)
    assert len(advised) == 4  # each product went to a fresh, advised buffer


def test_product_under_nested_vmap_and_compile():
    a, b = torch.randn(1024, 1100), (torch.rand(2, 3, 1024, 1100) < 0.5).float()
    nested = torch.func.vmap(torch.func.vmap(lambda m: _memory.product(a, m)))(b)
    assert torch.equal(nested, a * b)
    compiled = torch.compile(lambda x, m: _memory.product(x, m), backend="eager", fullgraph=True)
    assert torch.equal(compiled(a, b[0, 0]), a * b[0, 0])


def test_product_keeps_gradients():
    a = torch.randn(1024, 1100, requires_grad=True)
    m = (torch.rand(1024, 1100) < 0.5).float()
    _memory.product(a, m).sum().backward()
    assert torch.equal(a.grad, m)
    with torch.no_grad():
        out = _memory.product(a, m)
    assert not out.requires_grad and torch.equal(out, a.detach() * m)
