"""Activation patching of every edge: what each edge alone adds to a score, computed exactly.

Removing one edge from the full model and running it is the first sweep of ACDC (Conmy et al.
2023, "Towards Automated Circuit Discovery for Mechanistic Interpretability", arXiv 2304.14997),
which then removes the edges below a threshold one by one; :func:`patching_scores` gives every
edge's score of that sweep at once. Edge attribution patching
(:func:`~neurosurgeon.circuits.edge_attribution`) is its first-order estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .graph import CircuitGraph
from .null import check_chunk_size, evaluate_circuits

__all__ = ["patching_scores"]


def patching_scores(model: nn.Module, graph: CircuitGraph, input_ids: torch.Tensor,
                    score: Callable[[torch.Tensor], torch.Tensor], *, ablated: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None, chunk_size: int = 32) -> torch.Tensor:
    """Exact patching scores: for every edge e, ``S(every edge) - S(every edge but e)``.

    Edge e alone is ablated (it carries its writer's ablated value, every other edge its clean
    output) and the score's drop is its patching score, ACDC's first sweep (Conmy et al. 2023,
    arXiv 2304.14997). It costs one forward per edge, run as vmapped circuits (:func:`evaluate_circuits`)
    ``chunk_size`` at a time, where :func:`~neurosurgeon.circuits.edge_attribution` (EAP) costs
    one forward and one backward: EAP's score ``dS/dm`` at m = 1 is the linear estimate of this
    one, ``S(m = 1) - S(m = 1 - e)``. Patching is exact where that estimate fails, e.g. behind a
    ReLU step whose gradient is zero where the edge's removal still crosses it.

    Args:
        model: the model ``graph`` was built from, in eval mode; edge masks need a pre-norm model.
        graph: from :func:`~neurosurgeon.circuits.circuit_graph`.
        input_ids: ``(B, T)`` token ids.
        score: logits ``(B, T, vocab)`` -> a 0-d tensor (e.g. the mean logit difference). Over
            several batches, add each batch's patching scores.
        ablated: the ablated values ``(writers, B or 1, T or 1, D)``
            (:func:`~neurosurgeon.circuits.ablation_values`); None: zero ablation.
        attention_mask: ``(B, T)``, 0 at padded positions.
        chunk_size: edges patched in one vmapped forward (memory grows with it).

    Returns:
        ``(edges,)`` in the graph's edge order and the model's dtype: positive where the edge
        raises the score. Rounding makes an exact zero a few ulps of the score.

    Raises:
        ValueError: ``chunk_size`` is not a positive int, ``score`` does not return one value, or
            :func:`~neurosurgeon.circuits.circuit_forward` refuses ``input_ids``, ``ablated`` or an
            edge mask on ``graph`` (a post-norm model).
        TypeError: ``score`` is not callable.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10, bos_token_id=0,
        ...                                          eos_token_id=0)).eval()
        >>> graph = circuit_graph(model)
        >>> ids = torch.randint(10, (2, 4))
        >>> patching_scores(model, graph, ids, lambda logits: logits[:, -1, 3].mean()).shape
        torch.Size([13])
    """
    check_chunk_size(chunk_size, optional=False)
    if not callable(score):
        raise TypeError(f"score must be a callable, logits -> 0-d tensor, got {type(score).__name__}")
    dtype = next(model.parameters()).dtype
    ones = torch.ones(1, graph.num_edges, dtype=dtype, device=input_ids.device)
    # The full model's forward checks input_ids, ablated and the graph (circuit_forward's errors).
    full = evaluate_circuits(model, graph, ones, input_ids, score, ablated=ablated, attention_mask=attention_mask)
    if full.shape != (1,):
        raise ValueError(f"score must return a 0-d tensor, got shape {tuple(full.shape[1:])}")
    drops = []
    for start in range(0, graph.num_edges, chunk_size):
        edges = torch.arange(start, min(start + chunk_size, graph.num_edges), device=input_ids.device)
        masks = ones.repeat(len(edges), 1)
        masks[torch.arange(len(edges), device=input_ids.device), edges] = 0
        drops.append(full - evaluate_circuits(model, graph, masks, input_ids, score, ablated=ablated,
                                              attention_mask=attention_mask, chunk_size=chunk_size))
    return torch.cat(drops)
