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

__all__ = ["reader_inputs", "tie_nodes", "random_circuit", "in_degree_circuit", "top_k_circuit"]


def reader_inputs(mask: torch.Tensor, deltas: Sequence[torch.Tensor], ablated_sum: torch.Tensor) -> torch.Tensor:
    """Inputs of a group of readers by (2): ``ablated_sum + sum_w mask[r, w] * deltas[w]``.

    Args:
        mask: m, ``(readers, n)``, for the first n writers (a reader reads a prefix of them).
        deltas: h_w - a_w of those writers in chunks of ``(n_c, ...)`` that sum to n along the
            first axis (kept apart so no stack of all writers is ever copied).
        ablated_sum: sum_w a_w over the same n writers, broadcastable to a reader's input.

    Returns:
        ``(readers, ...)``: each reader's input.
    """
    out, start = None, 0
    for chunk in deltas:
        part = torch.einsum("rw,w...->r...", mask[:, start:start + chunk.shape[0]], chunk)
        out = part if out is None else out + part
        start += chunk.shape[0]
    if start != mask.shape[1]:
        raise ValueError(f"mask reads {mask.shape[1]} writers but deltas hold {start}")
    return ablated_sum + out


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
