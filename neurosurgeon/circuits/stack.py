"""The writers' stack of one recording forward: every writer's difference h_w - a_w in one
``(writers, ...)`` tensor, so that each reader group's sum (Bhaskar et al. 2024, arXiv 2406.16778,
Sec. 3; eq. 2 of :mod:`neurosurgeon.functional.edges`) is one GEMM over a prefix of it, forward and
backward, instead of one per writer chunk.

Autograd must not see the stack: later writes go into the tensor that earlier groups read. So the
values are copied in outside autograd, and the graph is kept by *anchors*: each writer chunk's
anchor is a 0-d tensor that every group reading the chunk takes as an input. Autograd then runs
a chunk's anchor only after every such group's backward, and by then each of them has added its
part, mask[:, chunk]^T @ grad, into one gradient stack, in place; the anchor hands its rows on as
the chunk's gradient. Groups run their backward in reverse order (a group's inputs come from
writers that later groups read), so the first of a backward pass (the logits, reading every
writer, for a loss on the output) writes its prefix of the gradient stack and the others add to
a prefix of that. A group no later than the one before it starts a new pass (``retain_graph``).

Without autograd the stack serves vmap too (its reads are
:func:`~neurosurgeon.functional.edges.reader_inputs`). With autograd, eager only: under
``torch.func`` transforms and ``torch.compile`` the forward keeps each chunk as its own tensor. No
double backward.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..functional.edges import reader_inputs

__all__ = ["WritersStack"]


class WritersStack:
    """The values and, in the backward, the gradient of every writer's difference of one forward.

    Args:
        values: an empty ``(writers, ...)`` tensor (one row per writer, each a reader input's shape).
    """

    def __init__(self, values: torch.Tensor):
        self.values = values
        self.grad: torch.Tensor | None = None  # made by the first group in the backward
        self.filled = 0  # the rows of grad this backward pass has written
        self.reads = 0  # groups read so far in the forward
        self.last = -1  # the last group whose backward ran

    def write(self, delta: torch.Tensor, start: int) -> torch.Tensor | None:
        """Copy ``delta`` (``(c, ...)``, writers ``start`` to ``start + c``) in; returns its anchor
        (None when autograd records nothing)."""
        with torch.no_grad():
            self.values[start:start + delta.shape[0]].copy_(delta)
        return _Anchor.apply(delta, self, start) if torch.is_grad_enabled() else None

    def read(self, mask: torch.Tensor, base: torch.Tensor, anchors: list, out: torch.Tensor | None = None) -> torch.Tensor:
        """``base + mask @ values[:n]`` for ``mask`` ``(readers, n)``; ``anchors``: those of the chunks
        that make up the first n writers. Without autograd, into ``out`` if given (and under vmap:
        :func:`~neurosurgeon.functional.edges.reader_inputs` has the rule)."""
        if not torch.is_grad_enabled():
            return reader_inputs(mask, [self.values[:mask.shape[1]]], base, out=out)
        return _StackedSum.apply(base, mask, self, *anchors)


class _Anchor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta, stack, start):
        ctx.stack, ctx.start, ctx.shape = stack, start, delta.shape
        return delta.new_zeros(())

    @staticmethod
    @once_differentiable
    def backward(ctx, _):
        # Every group reading these rows has added its part.
        stack, stop = ctx.stack, ctx.start + ctx.shape[0]
        if stop > stack.filled:
            raise RuntimeError("a writer's gradient was asked for before any reader group's")
        rows = stack.grad[ctx.start:stop]
        return rows.view(ctx.shape), None, None


class _StackedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, base, mask, stack, *anchors):
        n = mask.shape[1]
        ctx.stack, ctx.base_shape, ctx.anchors, ctx.index = stack, base.shape, len(anchors), stack.reads
        stack.reads += 1
        ctx.save_for_backward(mask)
        out = mask @ stack.values[:n].view(n, -1)
        return out.view(mask.shape[0], *stack.values.shape[1:]).add_(base)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        stack, n = ctx.stack, mask.shape[1]
        flat = grad.reshape(grad.shape[0], -1)
        values = stack.values[:n].view(n, -1)
        d_mask = flat @ values.T if ctx.needs_input_grad[1] else None
        d_base = grad.sum_to_size(ctx.base_shape) if ctx.needs_input_grad[0] else None
        if stack.grad is None:
            stack.grad = torch.empty_like(stack.values)
        if ctx.index >= stack.last:  # the first group of a backward pass
            stack.filled = n
            torch.mm(mask.T, flat, out=stack.grad[:n].view(n, -1))
        else:
            if n > stack.filled:
                raise RuntimeError("a reader group read writers that the first group of this backward did not")
            stack.grad[:n].view(n, -1).addmm_(mask.T, flat)
        stack.last = ctx.index
        zero = grad.new_zeros(())
        return (d_base, d_mask, None, *[zero] * ctx.anchors)
