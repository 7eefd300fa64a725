"""Edge masks over a transformer's computational graph (Bhaskar et al. 2024, "Finding Transformer
Circuits with Edge Pruning", arXiv 2406.16778; the disentangled residual stream of its Sec. 3).

Every reader r (a head's query, key or value input, an MLP's input, the logits) reads the sum of
what its writers w (embeddings, heads, MLPs before it) wrote, each edge gated by m[r, w]:

    x_r = sum_w  m[r, w] h_w + (1 - m[r, w]) a_w                                   (1)
        = sum_w a_w  +  sum_w m[r, w] (h_w - a_w)                                   (2)

h_w is w's output on this input and a_w its ablated value. (2) is (1) rearranged so the ablated
sum is shared by every reader and each writer's difference is formed once. A node mask is (1)
with every outgoing edge of a writer tied to one value. Random circuits of a given size are
keyed draws, as every other sampler: vmap over keys equals a loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import random as nr
from ._checks import check_key
from .sampling import randomly_sampled_mask

__all__ = ["reader_inputs", "gated", "tie_nodes", "random_circuit", "in_degree_circuit", "top_k_circuit"]


class _ReaderSum(torch.autograd.Function):
    """``base + sum_w mask[r, w] * deltas[w]``, chunk by chunk, into one output that each GEMM adds
    to in place (beta = 1), as does ``base``: the writers are never joined into one tensor and no
    readers-sized tensor is copied per chunk. The output is ``out`` when given (outside autograd
    only). The backward reads the chunks it was given (held anyway by the writers' own graphs).
    Writing in place is why the vmap rule is written out rather than generated."""

    @staticmethod
    def forward(out, base, mask, *chunks):
        start = 0
        for chunk in chunks:
            stop = start + chunk.shape[0]
            part, flat = mask[:, start:stop], chunk.reshape(chunk.shape[0], -1)
            if start == 0:
                out = part @ flat if out is None else torch.mm(part, flat, out=out.view(mask.shape[0], -1))
            else:
                out.addmm_(part, flat)
            start = stop
        return out.view(mask.shape[0], *chunks[0].shape[1:]).add_(base)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.base_shape = inputs[1].shape
        ctx.save_for_backward(*inputs[2:])

    @staticmethod
    def backward(ctx, grad):
        mask, *chunks = ctx.saved_tensors
        grads, start, parts = [None, None, None], 0, []
        if ctx.needs_input_grad[1]:
            grads[1] = grad.sum_to_size(ctx.base_shape)
        for i, chunk in enumerate(chunks):
            stop = start + chunk.shape[0]
            if ctx.needs_input_grad[2]:
                parts.append(torch.einsum("r...,w...->rw", grad, chunk))
            grads.append(torch.einsum("rw,r...->w...", mask[:, start:stop], grad) if ctx.needs_input_grad[i + 3]
                         else None)
            start = stop
        if ctx.needs_input_grad[2]:
            grads[2] = torch.cat(parts, 1)
        return tuple(grads)

    @staticmethod
    def vmap(info, in_dims, dest, base, mask, *chunks):
        # Every batched input with its batch axis first; the output (K, readers, ...) is batched.
        k, (dest_dim, base_dim, mask_dim, *chunk_dims) = info.batch_size, in_dims
        m = mask if mask_dim is None else mask.movedim(mask_dim, 0)
        readers = m.shape[-2]
        first = chunks[0] if chunk_dims[0] is None else chunks[0].movedim(chunk_dims[0], 0)[0]
        shape = first.shape[1:]
        if dest is None:
            out = m.new_empty((k, readers, first[0].numel()))
        elif dest_dim is None:  # the output is batched: so must its destination be, (K, readers, ...)
            raise ValueError("under vmap, out must be batched when the reader inputs are (make it with new_empty "
                             "of a batched tensor)")
        else:
            out = dest.movedim(dest_dim, 0).view(k, readers, -1)  # contiguous: reader_inputs checked
        start = 0
        for chunk, dim in zip(chunks, chunk_dims):
            if dim is None:
                c, flat = chunk.shape[0], chunk.reshape(chunk.shape[0], -1)
            else:
                chunk = chunk.movedim(dim, 0)
                c, flat = chunk.shape[1], chunk.reshape(k, chunk.shape[1], -1)
            # beta = 0 on the first chunk: out's old values are ignored (fresh memory may hold NaN).
            part, beta = m[..., start:start + c], 0 if start == 0 else 1
            start += c
            if mask_dim is not None and dim is None:  # K masks, one chunk: one GEMM over K * readers
                out.view(-1, flat.shape[-1]).addmm_(part.reshape(-1, c), flat, beta=beta)
            elif mask_dim is None and dim is None:  # neither batched: the same term for every k
                term = part @ flat
                out.add_(term) if beta else out.copy_(term.expand_as(out))
            else:
                out.baddbmm_(part if mask_dim is not None else part.expand(k, *part.shape), flat, beta=beta)
        out = out.view(k, readers, *shape)
        if base_dim is not None:  # (K, ...) against (K, readers, ...): a readers axis after K
            base = base.movedim(base_dim, 0)
            base = base.view(k, *[1] * (out.dim() - base.dim()), *base.shape[1:])
        return out.add_(base), 0


def reader_inputs(mask: torch.Tensor, deltas: Sequence[torch.Tensor], ablated_sum: torch.Tensor, *,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Inputs of a group of readers by (2): ``ablated_sum + sum_w mask[r, w] * deltas[w]``.

    Args:
        mask: m, ``(readers, n)``, for the first n writers (a reader reads a prefix of them).
        deltas: h_w - a_w of those writers in chunks of ``(n_c, ...)`` that sum to n along the
            first axis.
        ablated_sum: sum_w a_w over the same n writers, broadcastable to a reader's input.
        out: a contiguous ``(readers, ...)`` tensor to write into, as torch's ``out=``, when
            nothing needs a gradient. Reusing one buffer for every reader group of a forward
            spares a fresh readers-sized tensor a group: memory that large is mapped afresh
            and first touched page by page.

    Returns:
        ``(readers, ...)``: each reader's input (``out`` when given).
    """
    n = sum(chunk.shape[0] for chunk in deltas)
    if n != mask.shape[1]:
        raise ValueError(f"mask reads {mask.shape[1]} writers but deltas hold {n}")
    if out is not None:
        if torch.is_grad_enabled() and any(t.requires_grad for t in (mask, ablated_sum, *deltas)):
            raise ValueError("out= is for forwards that record nothing (torch.no_grad()); autograd would "
                             "save a tensor that later groups overwrite")
        shape = (mask.shape[0], *deltas[0].shape[1:])
        if tuple(out.shape) != shape:
            raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
        if not out.is_contiguous():  # written through a view
            raise ValueError("out must be contiguous (under vmap, batched along its first axis, as new_empty of a "
                             "batched tensor is)")
    return _ReaderSum.apply(out, ablated_sum, mask, *deltas)


def gated(values: torch.Tensor, ablated: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """One term of (1): ``mask * values + (1 - mask) * ablated``, as ``ablated + mask (values - ablated)``;
    ``ablated`` None is zero ablation. A node mask gates a writer's output by it, a unit mask a
    unit's activation (``mask`` broadcast over the examples and positions)."""
    return values * mask if ablated is None else ablated + mask * (values - ablated)


def tie_nodes(node_mask: torch.Tensor, writer_of_edge: torch.Tensor) -> torch.Tensor:
    """The edge mask of a node mask: every edge takes its writer's value, ``node_mask[writer_of_edge]``.

    Args:
        node_mask: ``(..., writers)``.
        writer_of_edge: ``(edges,)`` long, each edge's writer index.
    """
    return node_mask[..., writer_of_edge]


def random_circuit(key: torch.Tensor, num_edges: int, num_kept: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A circuit of exactly ``num_kept`` of ``num_edges`` edges, drawn uniformly: the
    ``randomly_sampled`` sampler over the edges (it zeros ``num_edges - num_kept`` of them).

    Returns:
        ``(num_edges,)`` binary mask in ``dtype`` on the key's device.
    """
    check_key(key)
    if not 0 <= num_kept <= num_edges:
        raise ValueError(f"num_kept must be in [0, {num_edges}], got {num_kept}")
    ones = torch.ones(num_edges, dtype=dtype, device=key.device)
    return randomly_sampled_mask(key, ones, num_zeros=num_edges - num_kept)


def in_degree_circuit(key: torch.Tensor, group_sizes: torch.Tensor, kept: torch.Tensor,
                      *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random circuit keeping ``kept[g]`` edges of each contiguous group g (a reader's
    in-edges), each group's edges a uniform draw: edge e gets word w_e of the key's stream, and
    a group keeps its ``kept[g]`` edges of smallest (w_e, e).

    Args:
        key: PRNG key ``(2,)``.
        group_sizes: ``(groups,)`` long, the edges of each group, in edge order.
        kept: ``(groups,)`` long, how many edges each group keeps (at most its size).

    Returns:
        ``(sum(group_sizes),)`` binary mask in ``dtype``.
    """
    check_key(key)
    if group_sizes.shape != kept.shape or bool((kept > group_sizes).any()) or bool((kept < 0).any()):
        raise ValueError("kept must have group_sizes' shape with 0 <= kept <= group_sizes")
    n = int(group_sizes.sum())
    group = torch.repeat_interleave(torch.arange(len(group_sizes), device=key.device), group_sizes.to(key.device))
    start = torch.cumsum(group_sizes, 0).to(key.device) - group_sizes.to(key.device)
    # A group's index above the 32-bit word keeps groups apart; a stable sort breaks equal words by edge.
    order = torch.argsort(group * 2**32 + nr.bits(key, (n,)), stable=True)
    rank = torch.arange(n, device=key.device) - start[group]
    keep = (rank < kept.to(key.device)[group]).to(dtype)
    return torch.zeros(n, dtype=dtype, device=key.device).scatter(0, order, keep)


def top_k_circuit(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The circuit of the ``k`` edges of highest score (ties: the earlier edge), binary in scores' dtype."""
    if not 0 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be in [0, {scores.shape[-1]}], got {k}")
    order = torch.argsort(-scores, dim=-1, stable=True)
    out = torch.zeros_like(scores)
    return out.scatter(-1, order[..., :k], torch.ones_like(out[..., :k]))
