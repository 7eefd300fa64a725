"""The reader sums of an edge mask, sum_w m[r, w] (h_w - a_w), over writers held in chunks: the
forward adds each chunk's product in place, so its vmap rule is written out; every way of
batching the inputs must equal a loop, and the gradients must be the einsum's."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neurosurgeon.functional.edges import gated, reader_inputs


def _reference(mask, chunks, base):
    # The sum written out over the joined writers.
    return base + torch.einsum("rw,w...->r...", mask, torch.cat(chunks))


def _inputs(sizes, readers=3, tail=(2, 4), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(c, *tail, generator=g, dtype=dtype) for c in sizes]
    mask = torch.rand(readers, sum(sizes), generator=g, dtype=dtype)
    base = torch.randn(*tail, generator=g, dtype=dtype)
    return mask, chunks, base


@settings(deadline=None, max_examples=40)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=5), readers=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_reader_sums_equal_the_joined_einsum(sizes, readers, seed):
    mask, chunks, base = _inputs(sizes, readers, seed=seed)
    out = reader_inputs(mask, chunks, base)
    assert out.shape == (readers, 2, 4)
    torch.testing.assert_close(out, _reference(mask, chunks, base), rtol=1e-12, atol=1e-12)
    assert all(c.shape == (s, 2, 4) for c, s in zip(chunks, sizes))  # inputs untouched


@pytest.mark.parametrize("base_shape", [(2, 4), (1, 4), (4,), ()])
def test_gradients_are_the_einsums(base_shape):
    # The ablated sum broadcasts (a mean over positions, a zero): its gradient sums to its shape.
    mask, chunks, _ = _inputs([2, 1, 3])
    base = torch.randn(base_shape, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (base, mask, *chunks)]
    assert torch.autograd.gradcheck(lambda b, m, *c: reader_inputs(m, c, b), leaves)
    # Only what needs a gradient gets one.
    frozen = [c.detach() for c in chunks]
    (g,) = torch.autograd.grad(reader_inputs(mask, frozen, base).square().sum(), [mask])
    (ref,) = torch.autograd.grad(_reference(mask, frozen, base).square().sum(), [mask])
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batched", [b for b in itertools.product([False, True], repeat=5) if any(b)])
def test_vmap_equals_a_loop_whatever_is_batched(batched):
    # Mask, three chunks and the ablated sum, each batched or not (the batch axis not always first).
    *batched, base_batched = batched
    k, sizes = 3, [2, 1, 3]
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(3, 6, k, generator=g, dtype=torch.float64) if batched[0] else torch.rand(3, 6, generator=g,
                                                                                             dtype=torch.float64)
    chunks = [torch.randn(c, k, 2, 4, generator=g, dtype=torch.float64) if b else torch.randn(c, 2, 4, generator=g,
                                                                                               dtype=torch.float64)
              for c, b in zip(sizes, batched[1:])]
    base = torch.randn(4, k, generator=g, dtype=torch.float64) if base_batched else torch.randn(2, 4, generator=g,
                                                                                                dtype=torch.float64)
    in_dims = (1 if base_batched else None, 2 if batched[0] else None, *[1 if b else None for b in batched[1:]])
    out = torch.func.vmap(lambda b, m, *c: reader_inputs(m, c, b), in_dims=in_dims)(base, mask, *chunks)
    for i in range(k):
        m = mask[..., i] if batched[0] else mask
        cs = [c[:, i] if b else c for c, b in zip(chunks, batched[1:])]
        b = base[:, i] if base_batched else base
        torch.testing.assert_close(out[i], _reference(m, cs, b), rtol=1e-12, atol=1e-12)


# A vmap inside a vmap runs the in-place adds of the inner rule through functorch's per-example
# fallback (a warning says so): still exact.
@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_nested_vmap_and_vmap_of_grad_equal_loops():
    mask, chunks, base = _inputs([2, 3], readers=4)
    masks = torch.rand(2, 3, *mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    f = lambda m: reader_inputs(m, chunks, base)
    nested = torch.func.vmap(torch.func.vmap(f))(masks)
    loop = torch.stack([torch.stack([f(m) for m in row]) for row in masks])
    torch.testing.assert_close(nested, loop, rtol=1e-12, atol=1e-12)
    # Per-mask gradients (with respect to the mask and the writers), vmapped over masks.
    loss = lambda m, c0, c1: reader_inputs(m, [c0, c1], base).sin().sum()
    grads = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)), in_dims=(0, None, None))(masks[0], *chunks)
    for i, m in enumerate(masks[0]):
        leaves = [t.detach().clone().requires_grad_() for t in (m, *chunks)]
        ref = torch.autograd.grad(loss(*leaves), leaves)
        for got, want in zip(grads, ref):
            torch.testing.assert_close(got[i], want, rtol=1e-12, atol=1e-12)


def test_out_is_written_whatever_it_held():
    # Into a buffer full of NaN (fresh memory may hold anything): the result is the buffer, exact.
    mask, chunks, base = _inputs([2, 1, 3], readers=4)
    buf = torch.full((4, 2, 4), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        out = reader_inputs(mask, chunks, base, out=buf)
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf, _reference(mask, chunks, base), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batched", [b for b in itertools.product([False, True], repeat=3) if any(b)])
def test_out_under_vmap_equals_a_loop(batched):
    # The destination is batched as the output is (new_empty of a batched input).
    mask_b, chunk_b, base_b = batched
    k, g = 3, torch.Generator().manual_seed(3)
    masks = torch.rand(k, 4, 5, generator=g, dtype=torch.float64)
    chunks = [torch.randn(k, c, 2, 4, generator=g, dtype=torch.float64) for c in (2, 3)]
    bases = torch.randn(k, 2, 4, generator=g, dtype=torch.float64)

    def f(m, c0, c1, b):
        src = next((t for t, yes in ((m, mask_b), (c0, chunk_b), (b, base_b)) if yes))
        buf = src.new_empty((4, 2, 4)).fill_(float("nan"))
        return reader_inputs(m, [c0, c1], b, out=buf)

    dims = (0 if mask_b else None, *(0 if chunk_b else None,) * 2, 0 if base_b else None)
    args = (masks if mask_b else masks[0], *(c if chunk_b else c[0] for c in chunks), bases if base_b else bases[0])
    with torch.no_grad():
        out = torch.func.vmap(f, in_dims=dims)(*args)
    for i in range(k):
        pick = lambda t, yes: t[i] if yes else t[0]
        ref = _reference(pick(masks, mask_b), [pick(c, chunk_b) for c in chunks], pick(bases, base_b))
        torch.testing.assert_close(out[i], ref, rtol=1e-12, atol=1e-12)


def test_out_refuses_autograd_a_wrong_shape_and_an_unbatched_destination():
    mask, chunks, base = _inputs([2, 3], readers=4)
    with pytest.raises(ValueError, match="out= is for forwards that record nothing"):
        reader_inputs(mask.requires_grad_(), chunks, base, out=torch.empty(4, 2, 4, dtype=torch.float64))
    mask = mask.detach()
    with pytest.raises(ValueError, match=r"out must have shape \(4, 2, 4\), got \(3, 2, 4\)"):
        reader_inputs(mask, chunks, base, out=torch.empty(3, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="out must be contiguous"):
        reader_inputs(mask, chunks, base, out=torch.empty(4, 4, 2, dtype=torch.float64).transpose(1, 2))
    buf = torch.empty(4, 2, 4, dtype=torch.float64)
    masks = torch.stack([mask, mask])
    with torch.no_grad(), pytest.raises(ValueError, match="under vmap, out must be batched when"):
        torch.func.vmap(lambda m: reader_inputs(m, chunks, base, out=buf))(masks)
    # A destination batched along another axis cannot be written through a view.
    bufs = torch.empty(4, 2, 2, 4, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(ValueError, match="batched along its first axis"):
        torch.func.vmap(lambda m, b: reader_inputs(m, chunks, base, out=b), in_dims=(0, 1))(masks, bufs)


def test_gated_is_one_term_of_the_reader_sum():
    # m = 1 keeps the value (to rounding), m = 0 gives the ablated value, between them the line; with
    # no ablated value (zero ablation) the value scaled by m. Checked against (1) written out.
    h, a = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(1, 4, 5, dtype=torch.float64)
    m = torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(gated(h, a, torch.ones(5, dtype=torch.float64)), h, rtol=1e-14, atol=1e-14)
    assert torch.equal(gated(h, a, torch.zeros(5, dtype=torch.float64)), a.expand_as(h))
    torch.testing.assert_close(gated(h, a, m), m * h + (1 - m) * a, rtol=1e-14, atol=1e-14)
    assert torch.equal(gated(h, None, m), h * m)
