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
