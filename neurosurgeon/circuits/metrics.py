"""How well a circuit does the task: metrics on the answer position, faithfulness, and edge
attribution patching scores.

Every metric maps logits ``(B, T, vocab)`` to one value per example ``(B,)``, read at the
answer position (the last, or ``positions``):

| metric        | per example                                   | better |
|---------------|-----------------------------------------------|--------|
| logit_diff    | logit[answer] - logit[wrong]                  | higher |
| kl            | KL(full model || circuit) of the next token   | lower  |
| cross_entropy | -log p(answer)                                | lower  |
| accuracy      | 1 if the answer is the top token              | higher |
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn as nn

from .forward import circuit_forward
from .graph import CircuitGraph
from .masks import level_row

__all__ = ["METRICS", "metric_values", "faithfulness", "edge_attribution"]


def _at(logits: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    if positions is None:
        return logits[:, -1]
    return logits[torch.arange(logits.shape[0], device=logits.device), positions]


def _need(name: str, value, metric: str):
    if value is None:
        raise ValueError(f"metric {metric!r} needs {name}=")
    return value


def _logit_diff(last, *, answers, wrong, full):
    a, w = _need("answers", answers, "logit_diff"), _need("wrong", wrong, "logit_diff")
    return last.gather(-1, a[:, None])[:, 0] - last.gather(-1, w[:, None])[:, 0]


def _kl(last, *, answers, wrong, full):
    p = _need("full_logits", full, "kl").log_softmax(-1)
    return (p.exp() * (p - last.log_softmax(-1))).sum(-1)


def _cross_entropy(last, *, answers, wrong, full):
    return -last.log_softmax(-1).gather(-1, _need("answers", answers, "cross_entropy")[:, None])[:, 0]


def _accuracy(last, *, answers, wrong, full):
    return (last.argmax(-1) == _need("answers", answers, "accuracy")).to(last.dtype)


#: name -> (per-example function, whether higher is better).
METRICS: dict[str, tuple[Callable[..., torch.Tensor], bool]] = {
    "logit_diff": (_logit_diff, True), "kl": (_kl, False),
    "cross_entropy": (_cross_entropy, False), "accuracy": (_accuracy, True),
}


def metric_values(metric: str, logits: torch.Tensor, *, answers: torch.Tensor | None = None,
                  wrong: torch.Tensor | None = None, full_logits: torch.Tensor | None = None,
                  positions: torch.Tensor | None = None) -> torch.Tensor:
    """``metric`` per example ``(B,)`` at the answer positions.

    Args:
        metric: a key of :data:`METRICS`.
        logits: ``(B, T, vocab)``.
        answers, wrong: ``(B,)`` token ids of the right and the wrong answer.
        full_logits: the full model's logits ``(B, T, vocab)`` (for ``kl``).
        positions: ``(B,)`` answer positions; default the last.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {list(METRICS)}")
    full = None if full_logits is None else _at(full_logits, positions)
    return METRICS[metric][0](_at(logits, positions), answers=answers, wrong=wrong, full=full)


def faithfulness(circuit: torch.Tensor | float, full: torch.Tensor | float, ablated: torch.Tensor | float) -> torch.Tensor:
    """The fraction of the full-vs-ablated gap the circuit recovers: (circuit - ablated) / (full - ablated).

    Warns, and gives NaN, where full and ablated score the same (faithfulness is undefined there).
    """
    circuit, full, ablated = (torch.as_tensor(v, dtype=torch.float64) for v in (circuit, full, ablated))
    gap = full - ablated
    if bool((gap == 0).any()):
        warnings.warn("the full and the ablated model score the same: faithfulness is undefined (NaN)", stacklevel=2)
    return torch.where(gap == 0, torch.nan, (circuit - ablated) / gap)


def edge_attribution(model: nn.Module, graph: CircuitGraph, input_ids: torch.Tensor,
                     score: Callable[[torch.Tensor], torch.Tensor], *, ablated=None,
                     attention_mask: torch.Tensor | None = None, level: str = "edge") -> torch.Tensor:
    """Edge attribution patching (Syed et al. 2023, arXiv 2310.10348): d score / d m at m = 1 for
    every edge, in one backward pass; the first-order estimate of what removing an edge costs.

    Args:
        score: logits ``(B, T, vocab)`` -> a 0-d tensor (e.g. the mean logit difference).
        ablated: the ablated values (None: zero ablation).
        level: ``"edge"``, or ``"node"`` / ``"unit"``: the same gradient with respect to a node
            or unit mask (a node's score is the sum of its edges' scores).

    Returns:
        ``(edges,)`` scores in the graph's edge order (``(writers,)`` or ``(units,)`` at node or
        unit level), in the model's dtype.
    """
    row = level_row(level)
    dtype = next(model.parameters()).dtype
    ones = torch.ones(row.parameters(graph), dtype=dtype, device=input_ids.device)

    def run(mask):
        return score(circuit_forward(model, graph, input_ids, ablated=ablated, attention_mask=attention_mask,
                                     **{row.keyword: mask}).output)

    return torch.func.grad(run)(ones).detach()
