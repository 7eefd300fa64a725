"""Freezing the base model while masks train.

Masks are trained on a *fixed* network: its weights must not move, and its dropout and
batch-norm must behave as at evaluation (no dropout noise, running statistics used and not
updated), or the subnetwork found depends on noise the deployed model never sees.

Freezing sets ``requires_grad=False`` on every base parameter and gives every base module
(every module but the mask layers and the model's root) its own ``train`` that keeps it in
eval mode, whichever module ``train()`` is called on (the model, a block, a DDP wrapper or a
``transformers.Trainer``). The root keeps following ``train()``, so ``model.training`` reads
what the user asked for; mask layers follow it too and train their masks.
"""

from __future__ import annotations

import torch.nn as nn

from ..modules import MaskLayer

__all__ = ["set_freeze_base", "is_base_frozen", "freeze_root"]

_FLAG = "_neurosurgeon_frozen"
_GRAD = "_neurosurgeon_requires_grad"


class _FrozenTrain:
    """A base module's ``train``: stays in eval mode, passes the mode on to its children.

    A small object rather than a bound method, so that pickling the model (``torch.save``)
    and deep copies keep the freeze.
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.module.training = False
        for child in self.module.children():
            child.train(mode)
        return self.module


def _is_mask_param(module: nn.Module, name: str) -> bool:
    return isinstance(module, MaskLayer) and name in ("weight_mask_params", "bias_mask_params")


def set_freeze_base(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Freeze (or unfreeze) everything of ``model`` but its mask parameters.

    Frozen: base parameters get ``requires_grad=False`` and every base module stays in eval
    mode (dropout off, batch-norm uses its running statistics) while ``model.train()`` puts
    the mask layers in training mode. Unfrozen: each parameter's earlier ``requires_grad`` is
    restored and ``train()`` behaves as plain PyTorch again.

    Args:
        model: a model with mask layers (see :func:`inject_masks`).
        frozen: freeze when True, undo a freeze when False.

    Returns:
        ``model``.
    """
    mode = model.training
    for path, module in model.named_modules():
        if isinstance(module, MaskLayer):
            continue
        if frozen and path:
            module.train = _FrozenTrain(module)
            setattr(module, _FLAG, True)
        elif not frozen and getattr(module, _FLAG, False):
            del module.train
            delattr(module, _FLAG)
    for module in model.modules():
        saved = getattr(module, _GRAD, None) if not frozen else None
        for name, p in module.named_parameters(recurse=False):
            if _is_mask_param(module, name):
                continue
            if frozen:
                remembered = module.__dict__.setdefault(_GRAD, {})
                remembered.setdefault(name, p.requires_grad)
                p.requires_grad_(False)
            elif saved is not None and name in saved:
                p.requires_grad_(saved[name])
        if not frozen and saved is not None:
            delattr(module, _GRAD)
    model.train(mode)
    return model


def is_base_frozen(model: nn.Module) -> bool:
    """Whether :func:`set_freeze_base` froze ``model``'s base."""
    return any(getattr(m, _FLAG, False) for m in model.modules())


def freeze_root(model: nn.Module) -> nn.Module:
    """Keep ``model``'s own module in eval mode too (its mask layers still follow ``train()``):
    for a wrapper such as ``CircuitModel``, whose user-facing root is the wrapper itself.
    :func:`set_freeze_base` with ``frozen=False`` undoes it."""
    model.train = _FrozenTrain(model)
    setattr(model, _FLAG, True)
    model.training = False
    return model
